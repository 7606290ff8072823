"""The one owner of match geometry: the coarse grid and refinement window, point warps between views, and
two-view estimation. Every other module takes these from here instead of re-deriving them.

- :mod:`loftr_kd.geometry.grid`: ``CoarseGrid``, ``RefineWindow``, ``cell_centers``, ``points_to_cells``.
- :mod:`loftr_kd.geometry.warps`: homography, depth and sparse-match warps of pixels (kornia), one
  rounding rule.
- :mod:`loftr_kd.geometry.estimation`: OpenCV homography / relative-pose estimates, the essential matrix of
  a pose, the relative pose of two cameras.
"""

from loftr_kd.geometry.estimation import (
    RANSAC_METHODS,
    essential_from_pose,
    estimate_homography,
    estimate_relative_pose,
    normalize_keypoints,
    relative_pose,
)
from loftr_kd.geometry.grid import CoarseGrid, RefineWindow, cell_centers, points_to_cells
from loftr_kd.geometry.warps import (
    DEFAULT_DEPTH_TOLERANCE,
    depth_at_nearest_pixel,
    inside_image,
    nearest_pixels,
    reproject_points,
    warp_points,
    warp_points_depth,
    warp_points_homography,
    warp_points_matches,
)

__all__ = [
    "DEFAULT_DEPTH_TOLERANCE",
    "RANSAC_METHODS",
    "CoarseGrid",
    "RefineWindow",
    "cell_centers",
    "depth_at_nearest_pixel",
    "essential_from_pose",
    "estimate_homography",
    "estimate_relative_pose",
    "inside_image",
    "nearest_pixels",
    "normalize_keypoints",
    "points_to_cells",
    "relative_pose",
    "reproject_points",
    "warp_points",
    "warp_points_depth",
    "warp_points_homography",
    "warp_points_matches",
]
