"""The one owner of match geometry: the coarse grid and refinement window, point warps between views, and
two-view estimation. Every other module takes these from here instead of re-deriving them.

- :mod:`loftr_kd.geometry.grid`: ``CoarseGrid``, ``RefineWindow``, ``cell_centers``, ``points_to_cells``.
- :mod:`loftr_kd.geometry.warps`: homography, depth and sparse-match warps of pixels (kornia), one
  rounding rule.
- :mod:`loftr_kd.geometry.estimation`: OpenCV homography / relative-pose estimates, points through a
  homography (NumPy), the essential matrix of a pose, the relative pose of two cameras.

The submodules load on first use of one of their names: registration and the onnxruntime path
(``estimate_homography``, ``warp_points``) never import torch or kornia.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that defines it
_SUBMODULE = {
    **dict.fromkeys(
        (
            "RANSAC_METHODS",
            "essential_from_pose",
            "estimate_homography",
            "estimate_relative_pose",
            "normalize_keypoints",
            "relative_pose",
            "warp_points",
        ),
        "estimation",
    ),
    **dict.fromkeys(("CoarseGrid", "RefineWindow", "cell_centers", "points_to_cells"), "grid"),
    **dict.fromkeys(
        (
            "DEFAULT_DEPTH_TOLERANCE",
            "DEPTH_INTERPOLATION_TOLERANCE",
            "depth_at_nearest_pixel",
            "depth_at_points",
            "inside_image",
            "nearest_pixels",
            "reproject_points",
            "warp_points_depth",
            "warp_points_homography",
            "warp_points_matches",
        ),
        "warps",
    ),
}

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULE:
        value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULE})
