"""Resizing that keeps the pinhole intrinsics right.

Convention (the same as OpenCV's ``resize`` and the coarse-grid contract): pixel centres sit at integer
coordinates, so resizing by ``s`` maps ``x' = (x + 0.5) * s - 0.5``. Hence ``fx' = fx * sx`` and
``cx' = (cx + 0.5) * sx - 0.5`` (likewise for y), i.e. ``K' = S @ K`` with
``S = [[sx, 0, 0.5 sx - 0.5], [0, sy, 0.5 sy - 0.5], [0, 0, 1]]``.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_matrix(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """(3, 3) float64 pixel map of a resize from ``in_hw`` to ``out_hw`` (pixel-centre convention)."""
    sy = out_hw[0] / in_hw[0]
    sx = out_hw[1] / in_hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _check_size(array: np.ndarray, size_hw: tuple[int, int], what: str) -> tuple[int, int]:
    if array.ndim < 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot resize an empty {what} of shape {array.shape}")
    height, width = int(size_hw[0]), int(size_hw[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive (height, width), got {size_hw}")
    return height, width


def resize_with_intrinsics(
    image: np.ndarray, K: np.ndarray | None, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image to ``size_hw`` and update its intrinsics.

    Area interpolation when shrinking (no aliasing), bilinear when enlarging.

    Args:
        image: (H, W) or (H, W, C) array.
        K: (3, 3) intrinsics of ``image`` or None.
        size_hw: target (height, width).

    Returns:
        resized image (same dtype), and (3, 3) float64 ``K'`` (None when ``K`` is None).
    """
    height, width = _check_size(image, size_hw, "image")
    in_hw = image.shape[:2]
    if in_hw != (height, width):
        shrinking = height * width < in_hw[0] * in_hw[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        image = cv2.resize(image, (width, height), interpolation=interpolation)
    if K is None:
        return image, None
    return image, resize_matrix(in_hw, (height, width)) @ np.asarray(K, dtype=np.float64)


def resize_depth_with_intrinsics(
    depth: np.ndarray, K: np.ndarray | None, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize a depth map with nearest-neighbour sampling (never blends valid depth with holes = 0).

    Each output pixel takes the input pixel that contains its centre under the pixel-centre convention
    (OpenCV's plain ``INTER_NEAREST`` is off by half a pixel, so the lookup is done explicitly).

    Args:
        depth: (H, W) array.
        K: (3, 3) intrinsics or None.
        size_hw: target (height, width).

    Returns:
        resized depth (same dtype) and (3, 3) float64 ``K'`` (None when ``K`` is None).
    """
    height, width = _check_size(depth, size_hw, "depth map")
    in_h, in_w = depth.shape[:2]
    if (in_h, in_w) != (height, width):
        rows = np.clip(np.floor((np.arange(height) + 0.5) * in_h / height), 0, in_h - 1).astype(np.int64)
        cols = np.clip(np.floor((np.arange(width) + 0.5) * in_w / width), 0, in_w - 1).astype(np.int64)
        depth = np.take(np.take(depth, rows, axis=0), cols, axis=1)  # 4x faster than 2-D fancy indexing
    if K is None:
        return depth, None
    return depth, resize_matrix((in_h, in_w), (height, width)) @ np.asarray(K, dtype=np.float64)
