"""The method heads' building blocks against torch's own functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onnx_explain.exporters.methods import min_max, upsample


@pytest.mark.parametrize(("h", "w", "out_h", "out_w"), [(7, 7, 224, 224), (2, 2, 64, 64), (5, 3, 17, 30),
                                                        (8, 8, 8, 8), (9, 9, 4, 5)])
def test_upsample_is_bilinear_with_half_pixel_centres(h, w, out_h, out_w):
    maps = torch.randn(3, h, w)
    want = F.interpolate(maps[:, None], size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(upsample(maps, (out_h, out_w)), want, rtol=0, atol=2e-6)


def test_normalize_scales_each_map_and_keeps_flat_maps_finite():
    maps = torch.stack([torch.arange(6.0).reshape(2, 3), torch.full((2, 3), 4.0)])
    out = min_max(maps)
    torch.testing.assert_close(out[0], torch.arange(6.0).reshape(2, 3) / 5, rtol=0, atol=1e-6)
    assert torch.equal(out[1], torch.zeros(2, 3))
