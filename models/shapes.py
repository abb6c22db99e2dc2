"""Deterministic synthetic shape dataset with known object locations.

Each image holds one large shape of the labelled class on a cluttered background (a colour gradient,
noise and random lines) with small distractor shapes.  Because the generator knows where it drew the
object, explanations can be scored against the truth (the pointing game).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 64


@dataclass(frozen=True)
class ShapeBatch:
    """Images float32 [N, 3, H, W] in [0, 1], labels int64 [N], boxes int32 [N, 4] as (x0, y0, x1, y1)
    inclusive, and masks bool [N, H, W] of the labelled object's pixels."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    gx, gy = np.meshgrid(ramp, ramp)
    c0, c1 = rng.uniform(0.1, 0.6, 3), rng.uniform(0.1, 0.6, 3)
    t = (gx * rng.uniform(-1, 1) + gy * rng.uniform(-1, 1) + 1.0) / 2.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    for _ in range(rng.integers(3, 7)):
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(map(int, p0)), tuple(map(int, p1)), rng.uniform(0, 1, 3).tolist(), 1)
    return img.astype(np.float32)


def _draw(img: np.ndarray, kind: str, cx: int, cy: int, r: int, color: list[float]) -> None:
    if kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1)
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    elif kind == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], color)
    elif kind == "cross":
        w = max(2, r // 3)
        cv2.rectangle(img, (cx - r, cy - w), (cx + r, cy + w), color, -1)
        cv2.rectangle(img, (cx - w, cy - r), (cx + w, cy + r), color, -1)
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {CLASSES}")


def _sample(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    img = _background(rng, size)
    r = int(rng.integers(size // 9, size // 6 + 1))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    for _ in range(rng.integers(2, 5)):  # distractors: small shapes of any kind, far smaller than the object
        dr = int(rng.integers(1, 3))
        dx, dy = (int(v) for v in rng.integers(dr, size - dr, 2))
        _draw(img, CLASSES[rng.integers(len(CLASSES))], dx, dy, dr, rng.uniform(0, 1, 3).tolist())
    color = rng.uniform(0, 1, 3)
    color[rng.integers(3)] = rng.choice([0.0, 1.0])  # keeps the object visible against the background
    mask = np.zeros((size, size), np.uint8)
    _draw(mask, CLASSES[label], cx, cy, r, [1])
    img[mask.astype(bool)] = color
    noise = rng.normal(0.0, 0.04, img.shape).astype(np.float32)
    return np.clip(img + noise, 0.0, 1.0), mask.astype(bool)


def make_shapes(n: int, seed: int, size: int = IMAGE_SIZE) -> ShapeBatch:
    """Generate `n` labelled images; image i depends only on (seed, i), so any prefix is stable."""
    images = np.empty((n, 3, size, size), np.float32)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        labels[i] = rng.integers(len(CLASSES))
        img, masks[i] = _sample(rng, int(labels[i]), size)
        images[i] = img.transpose(2, 0, 1)
    boxes = np.array([_box(m) for m in masks], np.int32).reshape(n, 4)
    return ShapeBatch(images, labels, boxes, masks)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


# Seeds of the fixed splits: training, validation while training, and the held-out test set.
TRAIN_SEED, VAL_SEED, TEST_SEED = 0, 1, 2
