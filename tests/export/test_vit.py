"""The CAM family on a vision transformer's token layer, laid out as a grid (token_grid), against
pytorch-grad-cam with its documented ViT reshape_transform; the input gradients against autograd.

The model is torchvision's VisionTransformer (vit_b_16's class and code) at a small size: 64x64 inputs in
16x16 patches (a 4x4 grid after the class token), 2 encoder blocks, width 32.
"""

from __future__ import annotations

import numpy as np
import pytest
import references
import torch
from conftest import SIZE, images
from torchvision.models.vision_transformer import VisionTransformer

from onnx_explain import Explainer
from onnx_explain.exporters import export_explainer
from onnx_explain.exporters.class_token import on_read_token
from onnx_explain.exporters.errors import LayerNotFoundError
from onnx_explain.exporters.validate import agreement_problem

LAYER = "encoder.layers.encoder_layer_1.ln_1"  # pytorch-grad-cam's example: the last block's first norm
GRID = (4, 4)
CAM_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
METHODS = [*CAM_METHODS, "saliency", "guided_gradcam"]
HEATMAP_ATOL = 1e-3  # cv2.resize's fixed-point bilinear weights in pytorch-grad-cam (tests/export/test_parity.py)


def small_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    return model


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    model = small_vit()
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    export_explainer(model, path, input_shape=(3, SIZE, SIZE), layers=[LAYER], methods=METHODS, token_grid=GRID)
    return model, Explainer(path, providers="cpu")


@pytest.mark.parametrize("batch", [1, 4])
def test_cam_family_matches_pytorch_grad_cam(vit, batch):
    model, explainer = vit
    x = images(batch, seed=batch)
    result = explainer.explain(x)
    logits = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(result.targets, logits.argmax(1))
    reshape = references.vit_reshape(*GRID)
    for method in CAM_METHODS:
        want = references.cam_family_raw(method, model, LAYER, x, result.targets, reshape)
        assert result[method].raw.shape == (batch, *GRID)
        assert agreement_problem(method, result[method].raw, want) is None, method
        heatmap = references.cam_family_heatmap(method, model, LAYER, x, result.targets, reshape)
        assert np.abs(result[method].heatmap - heatmap).max() <= HEATMAP_ATOL, method


def test_input_gradients_match_autograd(vit):
    model, explainer = vit
    x, targets = images(3, seed=7), np.array([2, 5, 9])
    result = explainer.explain(x, targets=targets)
    saliency = references.saliency(model, x, targets)
    assert agreement_problem("saliency", result["saliency"].raw, saliency) is None
    # no ReLU in a ViT: guided backprop is the plain gradient, times the upsampled Grad-CAM map
    cam = references.cam_family_raw("gradcam", model, LAYER, x, targets, references.vit_reshape(*GRID))
    guided = saliency * references.exact_cam_heatmap(cam, x.shape[2:])[:, None]
    assert agreement_problem("guided_gradcam", result["guided_gradcam"].raw, guided) is None


def test_token_layer_needs_a_grid(tmp_path):
    with pytest.raises(LayerNotFoundError, match=r"tokens \[N, 17, 32\].*token_grid=\(4, 4\)"):
        export_explainer(small_vit(), tmp_path / "x.onnx", input_shape=(3, SIZE, SIZE), layers=[LAYER],
                         methods=["gradcam"])
    with pytest.raises(ValueError, match="token_grid 5 x 4 needs 20 tokens"):
        export_explainer(small_vit(), tmp_path / "x.onnx", input_shape=(3, SIZE, SIZE), layers=[LAYER],
                         methods=["gradcam"], token_grid=(5, 4))


def test_cam_refuses_the_class_token_head(tmp_path):
    with pytest.raises(ValueError, match="cam needs global average pooling"):
        export_explainer(small_vit(), tmp_path / "x.onnx", input_shape=(3, SIZE, SIZE), layers=[LAYER],
                         methods=["cam"], token_grid=GRID)


def test_command_line_exports_and_explains_a_token_layer(tmp_path, capsys):
    from onnx_explain.cli import main
    from onnx_explain.models.shapes import TEST_SEED, make_shapes
    from onnx_explain.render.drawing import save_png, to_rgb8

    saved, model = tmp_path / "vit.pt", tmp_path / "vit.onnx"
    torch.save(small_vit(), saved)
    assert main(["export", str(saved), str(model), "--layers", LAYER, "--token-grid", *map(str, GRID),
                 "--input-shape", "3", str(SIZE), str(SIZE), "--methods", "gradcam"]) == 0
    image = save_png(tmp_path / "img.png", to_rgb8(make_shapes(1, TEST_SEED).images[0]))
    assert main(["explain", str(model), str(image), "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / f"img.gradcam@{LAYER}.png").is_file()


def test_torchvision_vit_defaults():
    from onnx_explain.exporters.models import load_model, token_grid

    model, shape, layers, _ = load_model("vit_b_16")
    assert (shape, layers, token_grid(model)) == ((3, 224, 224), ["encoder.layers.encoder_layer_11.ln_1"], (14, 14))
    assert token_grid(small_vit()) == GRID and token_grid(torch.nn.Linear(2, 2)) is None


def mlp_tokens(model: torch.nn.Module, runner: torch.nn.Module) -> list[int]:
    """The number of tokens each block's MLP runs on when runner is called (fx inlines the MLP block, not
    its layers)."""
    seen = []
    hooks = [block.mlp[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
             for block in model.encoder.layers]
    with torch.no_grad():
        runner(torch.from_numpy(images(2, seed=3)))
    for h in hooks:
        h.remove()
    return seen


def test_the_last_block_runs_only_on_the_class_token():
    model = small_vit()
    runner = on_read_token(model, (3, SIZE, SIZE), whole=[LAYER])
    assert mlp_tokens(model, runner) == [17, 1]  # the head reads token 0 alone
    x = torch.from_numpy(images(3, seed=4))
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), rtol=1e-5, atol=1e-6)


def test_a_tapped_layer_behind_the_attention_stays_whole(tmp_path):
    layer = "encoder.layers.encoder_layer_1.ln_2"  # after the last attention: its hook must see every token
    model = small_vit()
    runner, seen = on_read_token(model, (3, SIZE, SIZE), whole=[layer]), []
    hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    assert mlp_tokens(model, runner) == [17, 1]
    hook.remove()
    assert seen == [17]
    export_explainer(model, tmp_path / "v.onnx", input_shape=(3, SIZE, SIZE), layers=[layer], methods=["gradcam"],
                     token_grid=GRID)
    x = images(2, seed=5)
    result = Explainer(tmp_path / "v.onnx", providers="cpu").explain(x)
    want = references.cam_family_raw("gradcam", model, layer, x, result.targets, references.vit_reshape(*GRID))
    assert agreement_problem("gradcam", result["gradcam"].raw, want) is None


def test_models_without_a_token_head_run_as_they_are():
    convnet = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(1),
                                  torch.nn.LazyLinear(2))
    convnet(torch.zeros(1, 3, 8, 8))
    assert on_read_token(convnet, (3, 8, 8), whole=[]) is convnet

    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def forward(self, x):
            return x[:, 0] if x.sum() > 0 else x[:, 1]

    branchy = Branchy()
    assert on_read_token(branchy, (4, 3), whole=[]) is branchy


def test_operands_broadcast_over_the_tokens_keep_their_token_rows():
    class Tokens(torch.nn.Module):  # reads token 2 of norm(x + pos), pos [T, C] broadcast over the batch
        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Parameter(torch.randn(5, 4))
            self.norm, self.fc = torch.nn.LayerNorm(4), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.norm(x + self.pos)[:, 2])

    torch.manual_seed(0)
    model = Tokens()
    runner, seen, x = on_read_token(model, (5, 4), whole=[]), [], torch.randn(3, 5, 4)
    with torch.no_grad():
        want = model(x)
        model.norm.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
        torch.testing.assert_close(runner(x), want)
    assert seen == [1]  # the norm ran on token 2 alone; the sum with pos [T, C] was taken whole, then sliced
