"""Coarse (and pixel-level) ground-truth correspondences from depth + pose or from a homography.

The ground truth is derived on the batch's device, batched, from the camera geometry only: each coarse-cell
centre of image0 is warped into image1 and each cell centre of image1 back into image0; a pair of cells
``(i, j)`` is a match when ``i`` lands in ``j`` *and* ``j`` lands in ``i`` (LoFTR's "mutual nearest cells").
Both directions pass exactly the same validity tests (known depth, in front of the other camera, inside the
other image, depth-consistent, on the other coarse grid). Nothing of size ``(h*w)**2`` is built here: the loss
materialises the dense matrix it needs from ``match_ids``.

Grid convention (docs/ARCHITECTURE.md): pixel centres sit at integer coordinates, cell ``(r, c)`` of stride
``s`` covers pixels ``[c*s, c*s + s - 1]`` and has its centre at ``((c + 0.5)*s - 0.5, (r + 0.5)*s - 0.5)``;
its area is ``[c*s - 0.5, (c + 1)*s - 0.5)``. A sub-pixel point ``x`` therefore belongs to (is nearest to the
centre of) cell ``floor((x + 0.5) / s)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from kornia.geometry.camera.perspective import project_points, unproject_points
from kornia.geometry.conversions import convert_points_from_homogeneous, convert_points_to_homogeneous
from kornia.geometry.linalg import transform_points

from loftr_kd.geometry.grid import _COORD_LIMIT, CoarseGrid, cell_centers, points_to_cells

__all__ = [
    "DEFAULT_DEPTH_TOLERANCE",
    "CoarseGroundTruth",
    "cell_centers",
    "coarse_ground_truth",
    "points_to_cells",
    "warp_points_depth",
    "warp_points_homography",
]

# Relative depth-consistency tolerance |z_warped - depth1| / depth1 of the depth path.
#
# 0.1 sits between LoFTR's 0.2 and Coarse_LoFTR_TRT's 0.005, for these reasons:
# - The depths compared are not read at the exact point: depth0 at the nearest pixel of a cell centre (a
#   half-integer point for even strides, ~0.7 px off) and depth1 at the 2x2 pixels around the sub-pixel
#   landing point. On a surface seen at a grazing angle (ground in aerial BlendedMVS views, facades) depth
#   changes by ~0.3-1 % per pixel at f ~ 500-600 px, and resizing 768x576 depth to 640x480 shifts samples by
#   up to another ~0.6 px. 0.005 rejects correct correspondences there even with exact (synthetic) depth,
#   and a rejected correspondence is not merely missing: the dense focal loss treats that pair as a negative.
# - BlendedMVS depth is rendered from a reconstructed mesh (not sensor depth): mutually consistent between
#   views, but with rasterisation and mesh errors at the percent level near edges.
# - 0.2 lets an occluder 15 % nearer than the background through. At 0.1, the occluders it misses are those
#   less than 10 % nearer, and most of those are caught by the mutual check anyway (the occluder's cell
#   warps back elsewhere).
# Synthetic scenes with exact depth could use less (0.02-0.05); the default has to suit both.
DEFAULT_DEPTH_TOLERANCE = 0.1


@dataclass(frozen=True)
class SupervisionConfig:
    """Ground-truth settings (``conf/supervision/default.yaml``).

    Attributes:
        depth_tolerance: relative depth-consistency tolerance of the depth ground truth,
            ``|z_warped - depth1| / depth1`` (:data:`DEFAULT_DEPTH_TOLERANCE` explains the default).
    """

    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE

    def __post_init__(self) -> None:
        if not self.depth_tolerance >= 0:
            raise ValueError(f"depth_tolerance must be >= 0, got {self.depth_tolerance}")


class CoarseGroundTruth(NamedTuple):
    """Coarse ground truth of a batch at one stride.

    Attributes:
        match_ids: ``(B, L0)`` int64, index of the matching image1 cell of each image0 cell, ``-1`` = none.
        points1: ``(B, L0, 2)`` float32, exact (sub-cell) xy position in image1 of each image0 cell centre,
            for refinement supervision and end-point error; ``0`` where ``valid`` is False.
        valid: ``(B, L0)`` bool, the image0 cell centre is visible in image1 (known depth, in front of
            camera1, inside image1, depth-consistent). ``match_ids >= 0`` implies ``valid``; the converse
            does not hold (the match must also be mutual and on image1's grid).
    """

    match_ids: torch.Tensor
    points1: torch.Tensor
    valid: torch.Tensor


def _inside_image(points: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Whether each xy point's nearest pixel lies inside an image of ``image_hw``."""
    height, width = image_hw
    x, y = points[..., 0], points[..., 1]
    return (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)


def _sample_depth_nearest(depth: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth at the nearest pixel of each point: ``(values (B, N), inside (B, N))``; 0 outside the image."""
    b, height, width = depth.shape
    inside = _inside_image(points, (height, width)) & torch.isfinite(points).all(-1)
    safe = torch.nan_to_num(points, nan=0.0).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    pix = torch.floor(safe + 0.5).long()  # (B, N, 2) nearest pixel, consistent with points_to_cells
    col = pix[..., 0].clamp(0, width - 1)
    row = pix[..., 1].clamp(0, height - 1)
    values = depth.reshape(b, height * width).gather(1, row * width + col)  # (B, N)
    return torch.where(inside, values, torch.zeros_like(values)), inside


def _depth_consistent(
    depth: torch.Tensor, points: torch.Tensor, z: torch.Tensor, tolerance: float
) -> torch.Tensor:
    """Whether ``z`` agrees with ``depth`` at one of the 2x2 pixels around each point (relative tolerance).

    The 2x2 footprint (the pixels bilinear interpolation would read) instead of the single nearest pixel:
    cell centres sit at half-integer coordinates, so "the nearest pixel" of a point landing on another cell
    centre is a tie that float rounding decides. An occluder has to cover the whole footprint to reject.
    """
    b, height, width = depth.shape
    safe = torch.nan_to_num(points, nan=0.0).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    base = torch.floor(safe).long()  # (B, N, 2) top-left pixel of the footprint
    flat = depth.reshape(b, height * width)
    consistent = torch.zeros_like(z, dtype=torch.bool)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        col, row = base[..., 0] + dx, base[..., 1] + dy
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        d = flat.gather(1, row.clamp(0, height - 1) * width + col.clamp(0, width - 1))  # (B, N)
        # |z - d| <= tol * d, without a division; unknown depth (d = 0) never passes since z > 0 there
        consistent |= inside & (d > 0) & ((z - d).abs() <= tolerance * d)
    return consistent


def _check_batched(name: str, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise a ValueError naming ``name`` unless ``tensor`` has ``shape`` (None = any size)."""
    ok = tensor.ndim == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
    if not ok:
        expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")


def warp_points_depth(
    points0: torch.Tensor,
    depth0: torch.Tensor,
    depth1: torch.Tensor,
    K0: torch.Tensor,
    K1: torch.Tensor,
    T_0to1: torch.Tensor,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp pixel points of image0 into image1 with depth, intrinsics and relative pose.

    Depth0 is read at the nearest pixel of each point (0 = unknown), the point is unprojected with ``K0``,
    moved with ``T_0to1`` (``X1 = T_0to1 @ X0``) and projected with ``K1``.

    Args:
        points0: ``(B, N, 2)`` xy pixel coordinates in image0.
        depth0: ``(B, H0, W0)`` depth of image0, 0 = unknown.
        depth1: ``(B, H1, W1)`` depth of image1, 0 = unknown.
        K0: ``(B, 3, 3)`` intrinsics of image0.
        K1: ``(B, 3, 3)`` intrinsics of image1.
        T_0to1: ``(B, 4, 4)`` relative pose, camera0 -> camera1 coordinates.
        depth_tolerance: maximum relative depth difference ``|z1 - depth1| / depth1`` at the landing pixel.

    Returns:
        ``points1 (B, N, 2)`` xy positions in image1 (finite; meaningless where not valid) and
        ``valid (B, N)`` bool: depth0 known, in front of camera1, inside image1, and ``z`` in camera1
        consistent within ``depth_tolerance`` with depth1 at one of the 2x2 pixels around the landing point
        (unknown depth1 never passes).
    """
    _check_batched("points0", points0, (None, None, 2))
    b = points0.shape[0]
    _check_batched("depth0", depth0, (b, None, None))
    _check_batched("depth1", depth1, (b, None, None))
    _check_batched("K0", K0, (b, 3, 3))
    _check_batched("K1", K1, (b, 3, 3))
    _check_batched("T_0to1", T_0to1, (b, 4, 4))
    if depth_tolerance < 0:
        raise ValueError(f"depth_tolerance must be >= 0, got {depth_tolerance}")

    z0, inside0 = _sample_depth_nearest(depth0, points0)  # (B, N)
    valid = inside0 & (z0 > 0)
    xyz0 = unproject_points(points0, z0.unsqueeze(-1), K0)  # (B, N, 3) camera0 frame
    xyz1 = transform_points(T_0to1, xyz0)  # (B, N, 3) camera1 frame
    z1 = xyz1[..., 2]
    in_front = z1 > 1e-6
    points1 = project_points(xyz1, K1)  # (B, N, 2)
    points1 = torch.where(torch.isfinite(points1), points1, torch.zeros_like(points1))

    inside1 = _inside_image(points1, (depth1.shape[-2], depth1.shape[-1]))
    consistent = _depth_consistent(depth1, points1, z1, depth_tolerance)
    return points1, valid & in_front & inside1 & consistent


def warp_points_homography(
    points0: torch.Tensor,
    H_0to1: torch.Tensor,
    image1_hw: tuple[int, int],
    image0_hw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp pixel points of image0 into image1 with a homography.

    Points on the far side of the homography's horizon (homogeneous scale of the opposite sign to that of
    image0's centre, or of the origin when ``image0_hw`` is not given) land at mirrored positions and are
    invalid. ``H`` and ``-H`` give the same result.

    Args:
        points0: ``(B, N, 2)`` xy pixel coordinates in image0.
        H_0to1: ``(B, 3, 3)`` homography, image0 pixel -> image1 pixel.
        image1_hw: ``(H1, W1)`` size of image1.
        image0_hw: ``(H0, W0)`` size of image0, whose centre defines the visible side of the horizon.

    Returns:
        ``points1 (B, N, 2)`` (finite) and ``valid (B, N)`` bool: on the visible side of the horizon and
        inside image1.
    """
    _check_batched("points0", points0, (None, None, 2))
    _check_batched("H_0to1", H_0to1, (points0.shape[0], 3, 3))
    homogeneous = convert_points_to_homogeneous(points0) @ H_0to1.transpose(-1, -2)  # (B, N, 3)
    if image0_hw is None:
        w_ref = H_0to1[:, 2, 2]  # (B,) scale at the origin
    else:
        centre = H_0to1.new_tensor([(image0_hw[1] - 1) / 2, (image0_hw[0] - 1) / 2, 1.0])
        w_ref = H_0to1[:, 2] @ centre  # (B,) scale at image0's centre
    sign = torch.where(w_ref < 0, -1.0, 1.0).to(homogeneous.dtype)
    visible = homogeneous[..., 2] * sign.unsqueeze(-1) > 1e-12
    points1 = convert_points_from_homogeneous(homogeneous)
    points1 = torch.where(torch.isfinite(points1), points1, torch.zeros_like(points1))
    return points1, visible & _inside_image(points1, image1_hw)


def _require(batch: Mapping[str, torch.Tensor], keys: tuple[str, ...], path: str) -> None:
    """Raise a KeyError listing the keys the ``path`` ground truth needs and the batch lacks."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{path} ground truth needs batch keys {list(keys)}; missing {missing}")


@torch.no_grad()
def coarse_ground_truth(
    batch: Mapping[str, torch.Tensor], stride: int, depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE
) -> CoarseGroundTruth:
    """Mutual-nearest-cell ground truth at one coarse stride (call once per stride: 8 teacher, 16 student).

    Dispatches on the batch: with ``H_0to1`` the homography path (its inverse warps back), otherwise the
    depth path (``depth0/1``, ``K0/1``, ``T_0to1`` and ``T_1to0``, the latter inverted from ``T_0to1`` when
    absent). Runs in float32 on the device of ``image0``, outside autocast, without gradients.

    Args:
        batch: the batch contract of docs/ARCHITECTURE.md (``image0/1 (B, 1, H, W)`` give the sizes).
        stride: coarse stride in pixels; the grid of an ``H x W`` image is ``(H // stride) x (W // stride)``.
        depth_tolerance: relative depth-consistency tolerance of the depth path (ignored for homographies).

    Returns:
        CoarseGroundTruth with ``match_ids (B, L0)``, ``points1 (B, L0, 2)``, ``valid (B, L0)``,
        ``L0 = (H0 // stride) * (W0 // stride)``.
    """
    if not isinstance(stride, int) or stride <= 0:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    _require(batch, ("image0", "image1"), "coarse")
    image0, image1 = batch["image0"], batch["image1"]
    if image0.ndim != 4 or image1.ndim != 4 or image0.shape[0] != image1.shape[0]:
        raise ValueError(
            f"image0/image1 must be (B, 1, H, W) with the same B, got {tuple(image0.shape)} and {tuple(image1.shape)}"
        )
    device = image0.device
    b = image0.shape[0]
    hw0 = (int(image0.shape[-2]), int(image0.shape[-1]))
    hw1 = (int(image1.shape[-2]), int(image1.shape[-1]))
    grid0 = CoarseGrid.for_image(*hw0, stride, exact=False)  # LoFTR: cells of the largest multiple
    grid1 = CoarseGrid.for_image(*hw1, stride, exact=False)
    h0, w0 = grid0.shape
    h1, w1 = grid1.shape

    def f32(key: str) -> torch.Tensor:
        return batch[key].to(device=device, dtype=torch.float32)

    centres0 = grid0.centers(device=device).unsqueeze(0).expand(b, -1, -1)  # (B, L0, 2)
    centres1 = grid1.centers(device=device).unsqueeze(0).expand(b, -1, -1)  # (B, L1, 2)

    # Camera math in float32 even inside an autocast region (bmm would otherwise run in half precision).
    with torch.autocast(device_type=device.type, enabled=False):
        if "H_0to1" in batch:
            H_0to1 = f32("H_0to1")
            _check_batched("H_0to1", H_0to1, (b, 3, 3))
            H_1to0 = torch.linalg.inv(H_0to1.double()).float()
            points01, valid01 = warp_points_homography(centres0, H_0to1, hw1, hw0)
            points10, valid10 = warp_points_homography(centres1, H_1to0, hw0, hw1)
        else:
            _require(batch, ("depth0", "depth1", "K0", "K1", "T_0to1"), "depth")
            depth0, depth1, K0, K1, T_0to1 = (f32(k) for k in ("depth0", "depth1", "K0", "K1", "T_0to1"))
            T_1to0 = f32("T_1to0") if "T_1to0" in batch else torch.linalg.inv(T_0to1.double()).float()
            for name, depth, hw in (("depth0", depth0, hw0), ("depth1", depth1, hw1)):
                if tuple(depth.shape) != (b, *hw):
                    raise ValueError(
                        f"{name} must be (B, H, W) = {(b, *hw)} like its image, got {tuple(depth.shape)}"
                    )
            points01, valid01 = warp_points_depth(centres0, depth0, depth1, K0, K1, T_0to1, depth_tolerance)
            points10, valid10 = warp_points_depth(centres1, depth1, depth0, K1, K0, T_1to0, depth_tolerance)

    cells01 = torch.where(valid01, grid1.cell_of(points01), -1)  # (B, L0) cell in image1
    cells10 = torch.where(valid10, grid0.cell_of(points10), -1)  # (B, L1) cell in image0
    # where each image0 cell's landing cell warps back to; "no landing cell" reads an appended -1 column
    padded = torch.cat([cells10, cells10.new_full((b, 1), -1)], dim=1)  # (B, L1 + 1)
    back = padded.gather(1, torch.where(cells01 >= 0, cells01, h1 * w1))  # (B, L0)
    own = torch.arange(h0 * w0, device=device).unsqueeze(0)  # (1, L0)
    mutual = (cells01 >= 0) & (back == own)
    match_ids = torch.where(mutual, cells01, torch.full_like(cells01, -1))
    points1 = torch.where(valid01.unsqueeze(-1), points01, torch.zeros_like(points01))
    return CoarseGroundTruth(match_ids=match_ids, points1=points1.contiguous(), valid=valid01)
