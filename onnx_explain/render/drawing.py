"""Drawing heatmaps over images with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
COLORMAPS = frozenset(v for k, v in vars(cv2).items() if k.startswith("COLORMAP_"))


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """[C, H, W] or [H, W, C] (or [H, W]) float in [0, 1] or uint8 -> uint8 [H, W, 3] RGB."""
    img = np.asarray(image)
    if img.dtype.kind not in "uif" or img.size == 0:
        raise ValueError(f"image must be a non-empty numeric array, got dtype {img.dtype}, shape {list(img.shape)}")
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        raise ValueError("image contains NaN or inf values; expected finite values in [0, 1]")
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"image must be [C, H, W] or [H, W, C] with 1 or 3 channels, got shape {list(image.shape)}")
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else np.ascontiguousarray(img)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a [H, W] heatmap in [0, 1], coloured with an OpenCV colormap, over an image.

    Args:
        image: [C, H, W] or [H, W, C], float in [0, 1] or uint8.
        heatmap: [h, w] in [0, 1]; resized to the image if sizes differ.
        alpha: weight of the heatmap, in [0, 1].
        colormap: an OpenCV colormap id (cv2.COLORMAP_*).

    Returns:
        uint8 [H, W, 3] RGB.
    """
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.number)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be an OpenCV colormap id, cv2.COLORMAP_* (0..{max(COLORMAPS)}), "
                         f"got {colormap!r}")
    rgb = to_rgb8(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be [H, W] with H, W >= 1, got shape {list(heat.shape)}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmap contains NaN or inf values; expected finite values in [0, 1]")
    if heat.shape != rgb.shape[:2]:
        heat = cv2.resize(heat, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), colormap)[..., ::-1]
    return cv2.addWeighted(colored, alpha, rgb, 1.0 - alpha, 0.0)


def save_png(path: str | Path, rgb: np.ndarray, scale: int = 1) -> Path:
    """Write uint8 [H, W, 3] RGB as PNG, optionally enlarged by an integer factor (nearest neighbour)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot write {path}: expected a file name ending in one of {sorted(IMAGE_SUFFIXES)}")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ValueError(f"save_png takes uint8 [H, W, 3] RGB (see to_rgb8), got {rgb.dtype} {list(rgb.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from e
    if scale > 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise ValueError(f"could not write {path} (is its folder writable?)")
    return path


def standardized(image: np.ndarray, mean=None, std=None) -> np.ndarray:
    """[C, H, W] minus a per-channel mean, divided by a per-channel std (each optional), float32."""
    if std is not None and not (np.isfinite(std).all() and (np.asarray(std) > 0).all()):
        raise ValueError(f"std must be positive finite numbers (one per channel), got {list(std)}")
    x = image
    if mean is not None:
        x = x - np.asarray(mean, np.float32)[:, None, None]
    if std is not None:
        x = x / np.asarray(std, np.float32)[:, None, None]
    return x.astype(np.float32)


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read an image file as float32 [3, H, W] RGB in [0, 1], resized to size = (H, W)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {path} as an image (missing, or not a format OpenCV reads)")
    rgb = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)[..., ::-1]
    return (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()
