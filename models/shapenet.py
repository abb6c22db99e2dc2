"""ShapeNet: the small CNN shipped as onnx-explain's embedded default model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from onnx_explain.models.shapes import CLASSES, IMAGE_SIZE

WEIGHTS = Path(__file__).with_name("shapenet.pt")
# The last convolutional block: the layer the demo and the tests explain with Grad-CAM.
TARGET_LAYER = "features"


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ShapeNet(nn.Module):
    """Four conv blocks (two max pools), global average pooling and a linear classifier.

    Input [N, 3, 64, 64] in [0, 1]; output logits [N, len(CLASSES)].
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(3, 16), nn.MaxPool2d(2),
            *_block(16, 32), nn.MaxPool2d(2),
            *_block(32, 64), *_block(64, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def load_shapenet() -> ShapeNet:
    """The trained ShapeNet in eval mode, from the weights committed beside this file."""
    model = ShapeNet()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
