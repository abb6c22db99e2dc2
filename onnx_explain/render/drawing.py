"""Drawing heatmaps over images with OpenCV."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

# The largest image decoded, or written by save_png (an 8192 x 8192 picture).  OpenCV's own limit,
# 2^30 pixels, read once when cv2 is imported, lets a 219 KB PNG take gigabytes.
MAX_PIXELS = 2**26

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
COLORMAPS = frozenset(v for k, v in vars(cv2).items() if k.startswith("COLORMAP_"))


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """[C, H, W] or [H, W, C] (or [H, W]) float in [0, 1] or uint8 -> uint8 [H, W, 3] RGB."""
    img = np.asarray(image)
    if not (img.dtype == np.uint8 or img.dtype.kind == "f") or img.size == 0:
        raise ValueError(f"image must be a non-empty float array in [0, 1] or uint8, got dtype {img.dtype}, "
                         f"shape {list(img.shape)}")
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
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)) or not (
            0 <= alpha <= 1):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    whole = isinstance(colormap, (int, np.integer)) and not isinstance(colormap, (bool, np.bool_))
    if not whole or colormap not in COLORMAPS:
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
    path = _path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot write {path}: expected a file name ending in one of {sorted(IMAGE_SUFFIXES)}")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ValueError(f"save_png takes uint8 [H, W, 3] RGB (see to_rgb8), got {rgb.dtype} {list(rgb.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if rgb.shape[0] * rgb.shape[1] * scale * scale > MAX_PIXELS:
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} picture at scale {scale} would exceed {MAX_PIXELS} pixels")
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
    if mean is not None and not np.isfinite(mean).all():
        raise ValueError(f"mean must be finite numbers (one per channel), got {list(mean)}")
    x = image
    if mean is not None:
        x = x - np.asarray(mean, np.float32)[:, None, None]
    if std is not None:
        x = x / np.asarray(std, np.float32)[:, None, None]
    return x.astype(np.float32)


def model_input(rgb: np.ndarray, mean=None, std=None, channels: int = 3, layout: str = "NCHW") -> np.ndarray:
    """An RGB image [3, H, W] in [0, 1] as a model takes one: standardised, averaged to one channel for a
    grayscale model, channels last for an NHWC one."""
    x = standardized(rgb, mean, std)
    if channels == 1:
        x = x.mean(axis=0, keepdims=True)
    if layout == "NHWC":
        x = x.transpose(1, 2, 0)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read an image file as float32 [3, H, W] RGB in [0, 1], resized to size = (H, W)."""
    path = _path(path)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s >= 1 for s in size)):
        raise ValueError(f"size must be (H, W), two integers >= 1, got {size!r}")
    if not path.is_file():
        raise ValueError(f"cannot read {path}: {'it is a directory' if path.is_dir() else 'no such file'}")
    return rgb_image(path.read_bytes(), size, str(path))


def rgb_image(data: bytes, size: tuple[int, int], source: str) -> np.ndarray:
    """An encoded image -> float32 [3, H, W] RGB in [0, 1], resized to size = (H, W)."""
    bgr = decode(data, source)
    rgb = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)[..., ::-1]
    return (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


def _path(path: str | Path) -> Path:
    if not isinstance(path, (str, Path)) or "\0" in str(path):
        raise ValueError(f"expected a file path, got {path!r}")
    return Path(path)


def decode(data: bytes, source: str) -> np.ndarray:
    """An encoded image (any format OpenCV reads) -> uint8 BGR [H, W, 3]; a PNG or JPEG that declares
    more than MAX_PIXELS is refused before it is decoded."""
    pixels = _declared_pixels(data)
    if pixels is not None and pixels > MAX_PIXELS:
        raise ValueError(f"{source} declares {pixels} pixels; images of at most {MAX_PIXELS} are read")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise ValueError(f"cannot read {source} as an image (not a format OpenCV reads)")
    return bgr


def _declared_pixels(data: bytes) -> int | None:
    """Width x height from a PNG's IHDR or a JPEG's frame header; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width * height
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame header
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width * height
        at += 2 + length
    return None
