"""An image's model input: resized aspect-true to a long side (models that take any size), or letterboxed
into a static file's one input size, and the :class:`Letterbox` geometry that maps model-input pixels back to
the pixels of the image as given (the Matcher's, re-exported by :mod:`loftr_kd.matcher`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from loftr_kd.errors import user_stacklevel
from loftr_kd.images import ImageError, check_aspect

__all__ = ["Letterbox", "aspect_true_size", "letterbox", "resize_aspect_true"]


@dataclass(frozen=True)
class Letterbox:
    """Geometry of an image resized (aspect kept) and padded at the bottom/right to the model input; an
    aspect-true resize is the case without padding (content size = input size)."""

    orig_height: int
    orig_width: int
    content_height: int  # size of the resized image inside the padded input
    content_width: int
    input_height: int
    input_width: int

    @property
    def scale(self) -> tuple[float, float]:
        """Per-axis scale (x, y) from original to model pixels."""
        return self.content_width / self.orig_width, self.content_height / self.orig_height

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) xy model-input pixels to original pixels (pixel centres at integers)."""
        sx, sy = self.scale
        return (points + 0.5) / np.array([sx, sy], dtype=np.float64) - 0.5

    def to_model(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) xy original pixels to model-input pixels."""
        sx, sy = self.scale
        return (points + 0.5) * np.array([sx, sy], dtype=np.float64) - 0.5

    def in_content(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: the model-input point lies on the resized image, not in the padding."""
        return (points[:, 0] <= self.content_width - 0.5) & (points[:, 1] <= self.content_height - 0.5)


def letterbox(
    gray: np.ndarray, input_height: int, input_width: int, min_side: int = 1
) -> tuple[np.ndarray, Letterbox]:
    """Resize (H, W) float32 keeping aspect to fit (input_height, input_width); pad bottom/right with 0.

    Raises:
        ValueError: if the image's shorter side is below ``min_side`` pixels.
    """
    h, w = gray.shape[:2]
    if min(h, w) < min_side:
        raise ValueError(
            f"image of {w}x{h} pixels is too small: the shorter side must be at least {min_side} px "
            f"(two coarse cells)"
        )
    check_aspect(h, w, input_height, input_width, min_side)
    scale = min(input_height / h, input_width / w)
    new_w = min(input_width, max(1, round(w * scale)))
    new_h = min(input_height, max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = (
        cv2.resize(gray, (new_w, new_h), interpolation=interpolation) if (new_w, new_h) != (w, h) else gray
    )
    padded = np.zeros((input_height, input_width), dtype=np.float32)
    padded[:new_h, :new_w] = resized
    return padded, Letterbox(h, w, new_h, new_w, input_height, input_width)


def aspect_true_size(
    height: int,
    width: int,
    size: int,
    stride: int,
    *,
    min_cells: int = 2,
    max_size: tuple[int, int] | None = None,
    name: str = "image",
) -> tuple[int, int, bool]:
    """Model input ``(height, width)`` of an image: the long side scaled to ``size``, each side rounded to
    a multiple of ``stride`` (no padding), within ``max_size``.

    A side that would get fewer than ``min_cells`` cells is raised to ``min_cells`` cells, the other side
    scaled with it (``enlarged`` is then True), so a thin strip still has cells to match.

    Returns:
        ``(input_height, input_width, enlarged)``.

    Raises:
        ImageError: a side of the image is shorter than two cells, or the enlarged strip exceeds ``max_size``.
    """
    if min(height, width) < 2 * stride:
        raise ImageError(
            f"{name} of {width}x{height} pixels is too small: the shorter side must be at least {2 * stride} px "
            f"(two coarse cells of {stride} px)"
        )
    max_h, max_w = max_size or (1 << 30, 1 << 30)
    scale = min(size / max(height, width), max_h / height, max_w / width)
    floor_px = min_cells * stride

    def side(length: int) -> int:
        return int(max(round(length * scale / stride), 1) * stride)

    # Decided on the rounded side: round() ties to even, so a short side of exactly 2.5 cells becomes 2.
    enlarged = side(min(height, width)) < floor_px
    if enlarged:
        scale = floor_px / min(height, width)

    input_h, input_w = side(height), side(width)
    if enlarged and (input_h > max_h or input_w > max_w):
        raise ImageError(
            f"{name} of {width}x{height} pixels is too elongated: with its short side at {floor_px} px "
            f"({min_cells} coarse cells, the least that survives border removal) the long side would exceed the "
            f"model's maximum {max_w}x{max_h}; crop it first"
        )
    return min(input_h, max_h // stride * stride), min(input_w, max_w // stride * stride), enlarged


def resize_aspect_true(
    gray: np.ndarray,
    size: int,
    stride: int,
    *,
    min_cells: int = 2,
    max_size: tuple[int, int] | None = None,
    name: str = "image",
) -> tuple[np.ndarray, Letterbox]:
    """Resize (H, W) float32 so the long side is ``size`` and both sides are multiples of ``stride``
    (:func:`aspect_true_size`); warns when a thin image had to be enlarged."""
    h, w = gray.shape[:2]
    input_h, input_w, enlarged = aspect_true_size(
        h, w, size, stride, min_cells=min_cells, max_size=max_size, name=name
    )
    if enlarged:
        warnings.warn(
            f"{name} of {w}x{h} pixels is too elongated for a long side of {size} px: its short side would get "
            f"fewer than {min_cells} coarse cells (border removal leaves none), so it is matched at "
            f"{input_w}x{input_h} instead",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    interpolation = cv2.INTER_AREA if input_h * input_w < h * w else cv2.INTER_LINEAR
    resized = (
        cv2.resize(gray, (input_w, input_h), interpolation=interpolation)
        if (input_h, input_w) != (h, w)
        else gray
    )
    return np.ascontiguousarray(resized, dtype=np.float32), Letterbox(
        h, w, input_h, input_w, input_h, input_w
    )
