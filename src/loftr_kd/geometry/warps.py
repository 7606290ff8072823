"""Where a pixel of one view lands in another: through a homography, or through depth, intrinsics and pose.

One implementation of each warp, on tensors and built from kornia's camera and point transforms, serves the
ground truth (:mod:`loftr_kd.supervision`), the benchmarks (:mod:`loftr_kd.evaluation`), the co-visibility
of the synthetic scenes (:mod:`loftr_kd.data.synthetic`) and registration; :func:`warp_points` (defined in
:mod:`loftr_kd.geometry.estimation`, without torch) is the NumPy one for callers that hold arrays (OpenCV
estimates, keypoint lists).

Pixel convention (docs/ARCHITECTURE.md): pixel centres sit at integer coordinates, so an ``H x W`` image
covers ``[-0.5, W - 0.5) x [-0.5, H - 0.5)`` and the nearest pixel of a sub-pixel point ``x`` is
``floor(x + 0.5)``, the rule :func:`~loftr_kd.geometry.grid.points_to_cells` applies to cells. Depth at a
sub-pixel point (:func:`depth_at_points`) is interpolated bilinearly in inverse depth over the 2x2 pixels
around it (exact on a plane) where those four depths are known and agree within
``DEPTH_INTERPOLATION_TOLERANCE``, and read at the nearest pixel elsewhere (depth edges, holes, the outermost
half pixel): never across unknown depth.
"""

from __future__ import annotations

import torch
from kornia.geometry.camera.perspective import project_points, unproject_points
from kornia.geometry.conversions import convert_points_from_homogeneous, convert_points_to_homogeneous
from kornia.geometry.linalg import transform_points

from loftr_kd.geometry.estimation import HORIZON_EPS as _HORIZON_EPS
from loftr_kd.geometry.estimation import warp_points
from loftr_kd.geometry.grid import _COORD_LIMIT

__all__ = [
    "MATCH_KEYS",
    "warp_points_matches",
    "DEFAULT_DEPTH_TOLERANCE",
    "depth_at_nearest_pixel",
    "depth_at_points",
    "DEPTH_INTERPOLATION_TOLERANCE",
    "inside_image",
    "nearest_pixels",
    "reproject_points",
    "warp_points",
    "warp_points_depth",
    "warp_points_homography",
]

# Relative depth-consistency tolerance |z_warped - depth1| / depth1 of the depth warp (and so of the
# depth ground truth, loftr_kd.supervision).
#
# 0.1 sits between LoFTR's 0.2 and Coarse_LoFTR_TRT's 0.005, for these reasons:
# - The depths compared are not read at the exact point: depth1 is any of the 2x2 pixels around the
#   sub-pixel landing point (up to ~1 px off), and depth0, interpolated at the point where its 2x2 pixels
#   agree, falls back to the nearest pixel (~0.7 px off a half-integer cell centre) where they do not. On a
#   surface seen at a grazing angle (ground in aerial BlendedMVS views, facades) depth changes by ~0.3-1 %
#   per pixel at f ~ 500-600 px, and resizing 768x576 depth to 640x480 shifts samples by up to another
#   ~0.6 px. 0.005 rejects correct correspondences there even with exact (synthetic) depth, and a rejected
#   correspondence is not merely missing: the dense focal loss treats that pair as a negative.
# - BlendedMVS depth is rendered from a reconstructed mesh (not sensor depth): mutually consistent between
#   views, but with rasterisation and mesh errors at the percent level near edges.
# - 0.2 lets an occluder 15 % nearer than the background through. At 0.1, the occluders it misses are those
#   less than 10 % nearer, and most of those are caught by the mutual check anyway (the occluder's cell
#   warps back elsewhere).
# Synthetic scenes with exact depth could use less (0.02-0.05); the default has to suit both.
DEFAULT_DEPTH_TOLERANCE = 0.1

# The most by which the 2x2 depths around a point may differ, relative (max - min <= this * min), for depth
# to be interpolated there (depth_at_points); else the nearest pixel's is read. One smooth surface varies by
# ~1-3 % across the footprint's diagonal even at grazing angles (above); a larger spread is a depth edge,
# where a blend of the two sides is a depth neither surface has. Stricter than the consistency tolerance,
# and independent of it, on purpose (on the synthetic scenes, 0.02-0.1 give the same target errors).
DEPTH_INTERPOLATION_TOLERANCE = 0.05


def _check_batched(name: str, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise a ValueError naming ``name`` unless ``tensor`` has ``shape`` (None = any size)."""
    ok = tensor.ndim == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
    if not ok:
        expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")


def inside_image(points: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Whether the nearest pixel of each point lies inside an image of ``image_hw``.

    Args:
        points: ``(..., 2)`` xy pixel coordinates.
        image_hw: ``(H, W)`` of the image.

    Returns:
        ``(...)`` bool, ``-0.5 <= x < W - 0.5`` and ``-0.5 <= y < H - 0.5`` (False for NaN).
    """
    height, width = image_hw
    x, y = points[..., 0], points[..., 1]
    return (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)


def nearest_pixels(points: torch.Tensor) -> torch.Tensor:
    """Integer ``(col, row)`` of the nearest pixel of each point, ``floor(x + 0.5)``.

    Args:
        points: ``(..., 2)`` xy pixel coordinates; non-finite ones read as 0, huge ones are clamped.

    Returns:
        ``(..., 2)`` int64 pixel indices (not clipped to any image: see :func:`inside_image`).
    """
    safe = torch.nan_to_num(points, nan=0.0).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    return torch.floor(safe + 0.5).long()


def depth_at_nearest_pixel(depth: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth at the nearest pixel of each point.

    Args:
        depth: ``(B, H, W)`` depth maps, 0 = unknown.
        points: ``(B, N, 2)`` xy pixel coordinates.

    Returns:
        ``values (B, N)`` (dtype of ``depth``, 0 outside the image) and ``inside (B, N)`` bool (finite and
        inside the image, :func:`inside_image`).
    """
    b, height, width = depth.shape
    inside = inside_image(points, (height, width)) & torch.isfinite(points).all(-1)
    pix = nearest_pixels(points)  # (B, N, 2)
    col = pix[..., 0].clamp(0, width - 1)
    row = pix[..., 1].clamp(0, height - 1)
    values = depth.reshape(b, height * width).gather(1, row * width + col)  # (B, N)
    return torch.where(inside, values, torch.zeros_like(values)), inside


def depth_at_points(
    depth: torch.Tensor, points: torch.Tensor, tolerance: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth at sub-pixel points: bilinear in inverse depth where the 2x2 pixels around a point agree.

    On a plane, inverse depth is affine in the pixel coordinates, so bilinear interpolation of ``1 / z`` is
    exact there; the nearest pixel alone would be up to ~0.7 px off (a half-integer cell centre), which moves
    a warped point along its epipolar line on any slanted surface. Where the footprint mixes surfaces (the
    four depths differ by more than ``tolerance``, relative), holds unknown depth (0) or leaves the image,
    the point reads its nearest pixel (:func:`depth_at_nearest_pixel`), so unknown depth is never blended
    with known depth and a point is known exactly where its nearest pixel is.

    Args:
        depth: ``(B, H, W)`` depth maps, 0 = unknown.
        points: ``(B, N, 2)`` xy pixel coordinates.
        tolerance: the most by which the 4 depths may differ, ``max - min <= tolerance * min``, to be
            interpolated (None: ``DEPTH_INTERPOLATION_TOLERANCE``).

    Returns:
        ``values (B, N)`` and ``inside (B, N)`` as :func:`depth_at_nearest_pixel`'s (0 outside the image,
        and 0 exactly where the nearest pixel's depth is 0).
    """
    nearest, inside = depth_at_nearest_pixel(depth, points)  # (B, N)
    tolerance = DEPTH_INTERPOLATION_TOLERANCE if tolerance is None else tolerance
    b, height, width = depth.shape
    safe = torch.nan_to_num(points, nan=0.0).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    corner = torch.floor(safe)  # (B, N, 2) top-left pixel of the footprint
    fx, fy = (safe - corner).unbind(-1)  # (B, N) each, in [0, 1)
    corner = corner.long()
    flat = depth.reshape(b, height * width)
    footprint, on_image = [], inside.clone()
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        col, row = corner[..., 0] + dx, corner[..., 1] + dy
        on_image &= (col >= 0) & (col < width) & (row >= 0) & (row < height)
        footprint.append(flat.gather(1, row.clamp(0, height - 1) * width + col.clamp(0, width - 1)))
    footprint = torch.stack(footprint, -1)  # (B, N, 4) in the order of the weights below
    low, high = footprint.amin(-1), footprint.amax(-1)
    # NaN or inf depth fails these comparisons too, and so falls back to the nearest pixel
    agree = on_image & (low > 0) & (high - low <= tolerance * low)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)  # (B, N, 4)
    inverse = (weights / torch.where(agree.unsqueeze(-1), footprint, 1.0)).sum(-1)  # (B, N)
    # four equal depths give exactly that depth (1 / (1 / z) need not be z in floating point)
    interpolated = torch.where(high == low, low, 1.0 / inverse)
    return torch.where(agree, interpolated, nearest), inside


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


def reproject_points(
    points0: torch.Tensor, z0: torch.Tensor, K0: torch.Tensor, K1: torch.Tensor, T_0to1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of camera0 at known depth, seen by camera1: unproject with ``K0``, move, project with ``K1``.

    Args:
        points0: ``(B, N, 2)`` xy pixel coordinates in image0.
        z0: ``(B, N)`` camera0 depth (z) of each point.
        K0: ``(B, 3, 3)`` intrinsics of image0.
        K1: ``(B, 3, 3)`` intrinsics of image1.
        T_0to1: ``(B, 4, 4)`` relative pose, ``X_cam1 = T_0to1 @ X_cam0``.

    Returns:
        ``points1 (B, N, 2)`` xy pixel coordinates in image1 (non-finite or mirrored where ``z1 <= 0``) and
        ``z1 (B, N)``, the depth of each point in camera1.
    """
    xyz0 = unproject_points(points0, z0.unsqueeze(-1), K0)  # (B, N, 3) camera0 frame
    xyz1 = transform_points(T_0to1, xyz0)  # (B, N, 3) camera1 frame
    return project_points(xyz1, K1), xyz1[..., 2]


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

    Depth0 is read at each point (:func:`depth_at_points`: interpolated in inverse depth where the 2x2
    pixels around it agree within ``DEPTH_INTERPOLATION_TOLERANCE``, else the nearest pixel's; 0 =
    unknown), the point is unprojected with ``K0``, moved with ``T_0to1`` (``X1 = T_0to1 @ X0``) and
    projected with ``K1`` (:func:`reproject_points`).

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

    z0, inside0 = depth_at_points(depth0, points0)  # (B, N)
    valid = inside0 & (z0 > 0)
    points1, z1 = reproject_points(points0, z0, K0, K1, T_0to1)
    in_front = z1 > 1e-6
    points1 = torch.where(torch.isfinite(points1), points1, torch.zeros_like(points1))

    inside1 = inside_image(points1, (depth1.shape[-2], depth1.shape[-1]))
    consistent = _depth_consistent(depth1, points1, z1, depth_tolerance)
    return points1, valid & in_front & inside1 & consistent


def _through_homography(points: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N, 2)`` points through ``(B, 3, 3)`` homographies and their homogeneous scale ``w (B, N)``:
    kornia's ``transform_points`` (the same product and division), with ``w`` kept to tell the horizon."""
    homogeneous = convert_points_to_homogeneous(points) @ H.transpose(-1, -2)  # (B, N, 3)
    return convert_points_from_homogeneous(homogeneous, eps=_HORIZON_EPS), homogeneous[..., 2]


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
    points1, w = _through_homography(points0, H_0to1)
    if image0_hw is None:
        w_ref = H_0to1[:, 2, 2]  # (B,) scale at the origin
    else:
        centre = H_0to1.new_tensor([(image0_hw[1] - 1) / 2, (image0_hw[0] - 1) / 2, 1.0])
        w_ref = H_0to1[:, 2] @ centre  # (B,) scale at image0's centre
    sign = torch.where(w_ref < 0, -1.0, 1.0).to(w.dtype)
    visible = w * sign.unsqueeze(-1) > 1e-12
    points1 = torch.where(torch.isfinite(points1), points1, torch.zeros_like(points1))
    return points1, visible & inside_image(points1, image1_hw)


# Pseudo ground truth from a teacher's sparse matches (pairs without geometry): the local map around each
# point is fitted to the matches within MATCH_RADIUS cells, weighted by a Gaussian of MATCH_SIGMA cells and
# the match confidence, robustly (Cauchy reweighting); it holds where MATCH_MIN_SUPPORT matches support it
# and they agree with the fit to MATCH_MAX_RESIDUAL px (weighted RMS).
MATCH_RADIUS = 1.5
MATCH_SIGMA = 0.5
MATCH_MIN_SUPPORT = 4
MATCH_MAX_RESIDUAL = 2.0
# The point must lie within its matches' support, not beyond it: the fit's leverage at the point (the
# variance factor of the value there, relative to that at the matches' weighted centre) at most this.
MATCH_MAX_LEVERAGE = 2.0
# Ridge on the linear part of the fit only, relative to the summed weight (in cells^2, the fit's local units):
# it keeps a degenerate neighbourhood (one match, collinear matches) solvable, and such a point fails the
# leverage test unless it lies on the matches. The landing point itself is never regularised: it is in
# absolute pixels, and a ridge on it would pull it towards pixel (0, 0).
MATCH_RIDGE = 1e-5
MATCH_KEYS = ("matches0", "matches1", "match_confidence", "match_valid")


def _weighted_mean(points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean ``(B, L, 2)`` of ``(B, L, N, 2)`` points under ``(B, L, N)`` weights."""
    return (w.unsqueeze(-1) * points).sum(-2) / w.sum(-1, keepdim=True).clamp(min=1e-12)


def _weighted_moments(local: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean ``(B, L, 2)`` of ``(B, L, N, 2)`` points and their centred weighted scatter
    ``(B, L, 2, 2)`` plus the ridge ``MATCH_RIDGE`` times the summed weight."""
    mean = _weighted_mean(local, w)
    centred = local - mean.unsqueeze(-2)  # (B, L, N, 2)
    total = w.sum(-1).clamp(min=1e-12)[..., None, None]  # (B, L, 1, 1)
    ridge = MATCH_RIDGE * total * torch.eye(2, device=local.device, dtype=local.dtype)
    return mean, (centred * w.unsqueeze(-1)).transpose(-1, -2) @ centred + ridge


def warp_points_matches(
    points0: torch.Tensor,
    keypoints0: torch.Tensor,
    keypoints1: torch.Tensor,
    weight: torch.Tensor,
    image1_hw: tuple[int, int],
    cell: float,
    iterations: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp pixel points of image0 into image1 through a local affine map fitted to sparse matches.

    For each point, an affine map ``p1 = A (p0 - point) + t`` is fitted by weighted least squares to the
    matches ``keypoints0 -> keypoints1`` within ``MATCH_RADIUS * cell`` pixels of it (weights: a Gaussian
    of ``MATCH_SIGMA * cell`` px times ``weight``), with Cauchy reweighting of the residuals so that a few
    wrong matches do not move it; the point lands at ``t``. The fit is solved about the matches' weighted
    means (``A`` from the centred coordinates, with a small ridge ``MATCH_RIDGE``; ``t`` from the means,
    unregularised), so an exact affine map is recovered exactly wherever the point lies in the image. A
    teacher's matches on a plane give the plane's homography locally; across a depth edge the residual test
    rejects the point.

    Args:
        points0: ``(B, L, 2)`` xy pixels in image0.
        keypoints0, keypoints1: ``(B, N, 2)`` matched xy pixels in image0 and image1.
        weight: ``(B, N)`` match weight (confidence; 0 for padding).
        image1_hw: ``(H1, W1)`` size of image1.
        cell: the grid's cell size in pixels (radius and width of the neighbourhood).
        iterations: reweighting passes.

    Returns:
        ``points1 (B, L, 2)`` and ``valid (B, L)``: at least ``MATCH_MIN_SUPPORT`` matches of the
        neighbourhood within ``2 * MATCH_MAX_RESIDUAL`` px of the fit, a weighted RMS residual under
        ``MATCH_MAX_RESIDUAL`` px, a leverage at the point of at most ``MATCH_MAX_LEVERAGE``, inside image1.
    """
    _check_batched("points0", points0, (None, None, 2))
    b = points0.shape[0]
    _check_batched("keypoints0", keypoints0, (b, None, 2))
    _check_batched("keypoints1", keypoints1, (b, keypoints0.shape[1], 2))
    _check_batched("weight", weight, (b, keypoints0.shape[1]))
    offsets = keypoints0.unsqueeze(1) - points0.unsqueeze(2)  # (B, L, N, 2)
    distance2 = offsets.pow(2).sum(-1)  # (B, L, N)
    near = distance2 <= (MATCH_RADIUS * cell) ** 2
    base = torch.where(
        near, torch.exp(-distance2 / (2 * (MATCH_SIGMA * cell) ** 2)) * weight.unsqueeze(1), 0.0
    )
    local = offsets / cell  # (B, L, N, 2) the matches about the point, in cells
    target = keypoints1.unsqueeze(1).expand(-1, points0.shape[1], -1, -1)  # (B, L, N, 2)
    robust = torch.ones_like(base)
    for _ in range(iterations):
        w = base * robust
        mean0, scatter = _weighted_moments(local, w)  # (B, L, 2), (B, L, 2, 2)
        mean1 = _weighted_mean(target, w)  # (B, L, 2)
        centred0, centred1 = local - mean0.unsqueeze(-2), target - mean1.unsqueeze(-2)  # (B, L, N, 2)
        cross = (centred0 * w.unsqueeze(-1)).transpose(-1, -2) @ centred1  # (B, L, 2, 2)
        linear = torch.linalg.solve(scatter, cross)  # (B, L, 2, 2): row vector (dx, dy) @ linear
        points1 = mean1 - (mean0.unsqueeze(-2) @ linear).squeeze(-2)  # (B, L, 2) the map at the point itself
        residual2 = (centred0 @ linear - centred1).pow(2).sum(-1)  # (B, L, N)
        robust = 1.0 / (1.0 + residual2 / MATCH_MAX_RESIDUAL**2)  # Cauchy
    w = base * robust
    total = w.sum(-1)  # (B, L)
    rms = torch.sqrt((w * residual2).sum(-1) / total.clamp(min=1e-12))  # (B, L)
    agreeing = near & (weight.unsqueeze(1) > 0) & (residual2 <= (2 * MATCH_MAX_RESIDUAL) ** 2)
    support = agreeing.sum(-1)  # (B, L) matches that agree with the fit
    # Leverage at the point with the weights normalised to sum 1: the variance factor of the fitted value
    # there, 1 + (point - mean)^T C^-1 (point - mean) with C the normalised weighted scatter (the same,
    # ridge included, that the fit solves with; the point is at local 0): 1 at the matches' weighted centre,
    # growing outside them (an extrapolated affine map drifts at image borders).
    mean0, scatter = _weighted_moments(local, w)
    spread = torch.linalg.solve(scatter, mean0.unsqueeze(-1)).squeeze(-1)  # (B, L, 2)
    leverage = 1.0 + total * (mean0 * spread).sum(-1)
    points1 = torch.where(torch.isfinite(points1), points1, torch.zeros_like(points1))
    valid = (support >= MATCH_MIN_SUPPORT) & (rms <= MATCH_MAX_RESIDUAL) & (leverage <= MATCH_MAX_LEVERAGE)
    valid &= inside_image(points1, image1_hw)
    return points1, valid
