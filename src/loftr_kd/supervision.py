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

The warps themselves (``warp_points_depth``, ``warp_points_homography``) and the grid are
:mod:`loftr_kd.geometry`'s; this module re-exports them with ``DEFAULT_DEPTH_TOLERANCE`` under their old names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch

from loftr_kd.geometry import (
    DEFAULT_DEPTH_TOLERANCE,
    CoarseGrid,
    cell_centers,
    points_to_cells,
    warp_points_depth,
    warp_points_homography,
    warp_points_matches,
)
from loftr_kd.geometry.warps import MATCH_KEYS, _check_batched

__all__ = [
    "DEFAULT_DEPTH_TOLERANCE",
    "CoarseGroundTruth",
    "cell_centers",
    "coarse_ground_truth",
    "has_ground_truth",
    "point_ground_truth",
    "points_to_cells",
    "warp_points_depth",
    "warp_points_homography",
    "warp_points_matches",
]


@dataclass(frozen=True)
class SupervisionConfig:
    """Ground-truth settings (``conf/supervision/default.yaml``).

    Attributes:
        depth_tolerance: relative depth-consistency tolerance of the depth ground truth,
            ``|z_warped - depth1| / depth1`` (:data:`loftr_kd.geometry.warps.DEFAULT_DEPTH_TOLERANCE` explains the default).
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


def has_ground_truth(batch: Mapping[str, torch.Tensor]) -> bool:
    """Whether a batch carries what ground truth is derived from (a homography, depth, or a teacher's
    cached matches); pairs without it need an online sparse teacher's matches."""
    return "H_0to1" in batch or "depth0" in batch or "matches0" in batch


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

    Dispatches on the batch: with ``H_0to1`` the homography path (its inverse warps back); with a teacher's
    sparse matches (``matches0/1``, ``match_confidence``, ``match_valid``: pairs without geometry, labelled
    by a sparse teacher) the matches path, each direction through a local affine fit of the matches
    (:func:`warp_points_matches`); otherwise the depth path (``depth0/1``, ``K0/1``, ``T_0to1`` and
    ``T_1to0``, the latter inverted from ``T_0to1`` when absent). Every path ends in the same mutual-cell
    rule. Runs in float32 on the device of ``image0``, outside autocast, without gradients.

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
    grid0 = CoarseGrid.for_image(*image0.shape[-2:], stride, exact=False)  # LoFTR: the largest multiple
    grid1 = CoarseGrid.for_image(*image1.shape[-2:], stride, exact=False)
    h0, w0 = grid0.shape
    h1, w1 = grid1.shape

    centres0 = grid0.centers(device=device).unsqueeze(0).expand(b, -1, -1)  # (B, L0, 2)
    centres1 = grid1.centers(device=device).unsqueeze(0).expand(b, -1, -1)  # (B, L1, 2)
    points01, valid01 = _warp(batch, centres0, stride, depth_tolerance, reverse=False)
    points10, valid10 = _warp(batch, centres1, stride, depth_tolerance, reverse=True)

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


@torch.no_grad()
def point_ground_truth(
    batch: Mapping[str, torch.Tensor],
    points0: torch.Tensor,
    stride: int,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact image1 position of any image0 points, by the same geometry and validity tests as
    :func:`coarse_ground_truth` (which warps the cell centres): what a refinement whose image0 points are not
    the cell centres (``refine_query="corner"``) is supervised with.

    Args:
        batch: as :func:`coarse_ground_truth`'s.
        points0: ``(B, N, 2)`` xy pixels in image0.
        stride: the coarse stride (the matches path's neighbourhood scale).
        depth_tolerance: as :func:`coarse_ground_truth`'s.

    Returns:
        ``(points1 (B, N, 2), valid (B, N))``: ``points1`` is ``0`` where ``valid`` is False.
    """
    _require(batch, ("image0", "image1"), "point")
    image0 = batch["image0"]
    if points0.ndim != 3 or points0.shape[0] != image0.shape[0] or points0.shape[-1] != 2:
        raise ValueError(f"points0 must be (B={image0.shape[0]}, N, 2), got {tuple(points0.shape)}")
    points = points0.to(device=image0.device, dtype=torch.float32)
    points1, valid = _warp(batch, points, stride, depth_tolerance, reverse=False)
    return torch.where(valid.unsqueeze(-1), points1, torch.zeros_like(points1)).contiguous(), valid


def _warp(
    batch: Mapping[str, torch.Tensor],
    points: torch.Tensor,
    stride: int,
    depth_tolerance: float,
    reverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``(B, N, 2)`` points of image0 into image1 (``reverse``: of image1 into image0) by the batch's
    geometry: a homography (``H_0to1``), a sparse teacher's matches (``matches0/1`` ...) or depth and pose.
    Float32, outside autocast (bmm would otherwise run in half precision)."""
    image0, image1 = batch["image0"], batch["image1"]
    device, b = image0.device, image0.shape[0]
    src, dst = ("1", "0") if reverse else ("0", "1")
    hw_src = tuple(int(v) for v in batch[f"image{src}"].shape[-2:])
    hw_dst = tuple(int(v) for v in batch[f"image{dst}"].shape[-2:])

    def f32(key: str) -> torch.Tensor:
        return batch[key].to(device=device, dtype=torch.float32)

    with torch.autocast(device_type=device.type, enabled=False):
        if "H_0to1" in batch:
            H_0to1 = f32("H_0to1")
            _check_batched("H_0to1", H_0to1, (b, 3, 3))
            H = torch.linalg.inv(H_0to1.double()).float() if reverse else H_0to1
            return warp_points_homography(points, H, hw_dst, hw_src)
        if "matches0" in batch:
            _require(batch, MATCH_KEYS, "matches")
            k0, k1, confidence = f32("matches0"), f32("matches1"), f32("match_confidence")
            weight = torch.where(batch["match_valid"].to(device).bool(), confidence, 0.0)
            k_src, k_dst = (k1, k0) if reverse else (k0, k1)
            return warp_points_matches(points, k_src, k_dst, weight, hw_dst, float(stride))
        _require(batch, ("depth0", "depth1", "K0", "K1", "T_0to1"), "depth")
        depth0, depth1, K0, K1, T_0to1 = (f32(k) for k in ("depth0", "depth1", "K0", "K1", "T_0to1"))
        for name, depth, image in (("depth0", depth0, image0), ("depth1", depth1, image1)):
            if tuple(depth.shape) != (b, *image.shape[-2:]):
                raise ValueError(
                    f"{name} must be (B, H, W) = {(b, *image.shape[-2:])} like its image, got {tuple(depth.shape)}"
                )
        if not reverse:
            return warp_points_depth(points, depth0, depth1, K0, K1, T_0to1, depth_tolerance)
        T_1to0 = f32("T_1to0") if "T_1to0" in batch else torch.linalg.inv(T_0to1.double()).float()
        return warp_points_depth(points, depth1, depth0, K1, K0, T_1to0, depth_tolerance)
