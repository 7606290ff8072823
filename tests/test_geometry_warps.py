"""Point warps against independent truths: an identity pose maps every pixel to itself, a fronto-parallel
plane has a known homography, the nearest pixel is floor(x + 0.5), inverse depth on a plane is affine in the
pixels, an affine map is its own local fit, and the NumPy adapter agrees with the homography written out by
hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loftr_kd.geometry import (
    depth_at_nearest_pixel,
    inside_image,
    nearest_pixels,
    points_to_cells,
    reproject_points,
    warp_points,
    warp_points_depth,
    warp_points_homography,
    warp_points_matches,
)
from loftr_kd.geometry.warps import (
    DEPTH_INTERPOLATION_TOLERANCE,
    MATCH_MAX_LEVERAGE,
    MATCH_MIN_SUPPORT,
    MATCH_RADIUS,
    MATCH_SIGMA,
    depth_at_points,
)

H_IMG, W_IMG = 60, 80
K = np.array([[70.0, 0.0, 39.5], [0.0, 65.0, 29.5], [0.0, 0.0, 1.0]])


def rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def pose(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def by_hand(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """x' = (H [x, y, 1])[:2] / (H [x, y, 1])[2], one point at a time."""
    out = []
    for x, y in points:
        u, v, w = H @ np.array([x, y, 1.0])
        out.append((u / w, v / w))
    return np.array(out)


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def test_identity_pose_maps_every_pixel_to_itself():
    rng = np.random.default_rng(0)
    v, u = np.mgrid[0:H_IMG, 0:W_IMG]
    pixels = t64(np.stack([u.ravel(), v.ravel()], -1))[None]  # every pixel of the image
    depth = t64(rng.uniform(1.0, 9.0, (1, H_IMG, W_IMG)))  # any depth: the identity ignores it
    Kt, T = t64(K)[None], t64(np.eye(4))[None]
    points1, valid = warp_points_depth(pixels, depth, depth, Kt, Kt, T, depth_tolerance=0.0)
    torch.testing.assert_close(points1, pixels, atol=1e-9, rtol=0)
    assert valid.all()
    # and the depth each pixel has in camera 1 is its own
    _, z1 = reproject_points(pixels, depth.reshape(1, -1), Kt, Kt, T)
    torch.testing.assert_close(z1, depth.reshape(1, -1))


@pytest.mark.parametrize(
    ("R", "t"), [(np.eye(3), [0.3, -0.2, 0.4]), (rot_y(7.0), [-0.5, 0.1, -0.3])], ids=["shift", "turn"]
)
def test_fronto_parallel_plane_moves_by_its_homography(R, t):
    # Plane Z0 = d in camera 0 (normal n = (0, 0, 1)): X1 = R X0 + t = (R + t n^T / d) X0 on it, so
    # pixels move by H = K (R + t n^T / d) K^-1 (Hartley & Zisserman, eq. 13.2).
    d = 4.0
    H = K @ (R + np.outer(t, [0.0, 0.0, 1.0]) / d) @ np.linalg.inv(K)
    points0 = np.random.default_rng(1).uniform([0, 0], [W_IMG - 1, H_IMG - 1], size=(200, 2))
    expected = by_hand(H, points0)

    z0 = torch.full((1, len(points0)), d, dtype=torch.float64)
    via_depth, z1 = reproject_points(
        t64(points0)[None], z0, t64(K)[None], t64(K)[None], t64(pose(R, t))[None]
    )
    np.testing.assert_allclose(via_depth[0].numpy(), expected, atol=1e-9)
    np.testing.assert_allclose(
        z1[0].numpy(), (np.c_[points0, np.ones(200)] @ np.linalg.inv(K).T * d) @ R[2] + t[2]
    )

    via_h, valid = warp_points_homography(t64(points0)[None], t64(H)[None], (H_IMG, W_IMG), (H_IMG, W_IMG))
    np.testing.assert_allclose(via_h[0].numpy(), expected, atol=1e-9)
    inside = (expected >= -0.5).all(1) & (expected[:, 0] < W_IMG - 0.5) & (expected[:, 1] < H_IMG - 0.5)
    np.testing.assert_array_equal(valid[0].numpy(), inside)
    np.testing.assert_allclose(warp_points(points0, H), expected, atol=1e-9)


def test_nearest_pixel_is_floor_x_plus_half_and_agrees_with_the_cells():
    points = torch.tensor([[0.5, 1.5], [2.49, -0.5], [-0.51, 3.0], [79.4999, 59.5], [float("nan"), 2.0]])
    assert nearest_pixels(points).tolist() == [[1, 2], [2, 0], [-1, 3], [79, 60], [0, 2]]
    # the same rule as the grid's at stride 1: the pixel is the 1-px cell
    finite = points[:4]
    cols, rows = nearest_pixels(finite).unbind(-1)
    cells = points_to_cells(finite, 1, H_IMG, W_IMG)
    on = (cols >= 0) & (cols < W_IMG) & (rows >= 0) & (rows < H_IMG)
    assert torch.equal(cells, torch.where(on, rows * W_IMG + cols, -1))
    assert inside_image(points, (H_IMG, W_IMG)).tolist() == [True, True, False, False, False]


def test_depth_is_read_at_the_nearest_pixel():
    depth = torch.arange(H_IMG * W_IMG, dtype=torch.float32).reshape(1, H_IMG, W_IMG)  # value = row * W + col
    points = torch.tensor([[[3.4, 2.6], [3.5, 2.4], [-0.5, -0.5], [79.49, 59.49], [80.0, 0.0], [1.0, -0.6]]])
    values, inside = depth_at_nearest_pixel(depth, points)
    assert values[0].tolist() == [3 * W_IMG + 3, 2 * W_IMG + 4, 0, 59 * W_IMG + 79, 0, 0]
    assert inside[0].tolist() == [True, True, True, True, False, False]


def test_depth_at_points_is_exact_on_a_plane_and_never_blends_across_holes_or_edges():
    # a slanted plane: 1 / z = a u + b v + c exactly, so bilinear interpolation of 1 / z is exact at any point
    v, u = np.mgrid[0:H_IMG, 0:W_IMG].astype(np.float64)
    a, b, c = 2e-3, -1.5e-3, 0.25
    depth = t64(1.0 / (a * u + b * v + c))[None]
    points = np.random.default_rng(2).uniform([0.0, 0.0], [W_IMG - 1.0, H_IMG - 1.0], size=(300, 2))
    values, inside = depth_at_points(depth, t64(points)[None])
    np.testing.assert_allclose(values[0].numpy(), 1.0 / (points @ [a, b] + c), rtol=1e-12)
    assert inside.all()
    # the nearest pixel alone is off by up to half a pixel's slope; at a pixel centre both agree exactly
    nearest, _ = depth_at_nearest_pixel(depth, t64(points)[None])
    assert (nearest - values).abs().max() > 1e-3
    centres = t64([[[10.0, 20.0], [0.0, 0.0], [W_IMG - 1.0, H_IMG - 1.0]]])
    assert torch.equal(depth_at_points(depth, centres)[0], depth_at_nearest_pixel(depth, centres)[0])

    flat = torch.full((1, 4, 4), 5.0, dtype=torch.float64)
    flat[0, 1, 2] = 0.0  # a hole
    flat[0, 2, 0] = 5.0 * (1 + 2 * DEPTH_INTERPOLATION_TOLERANCE)  # a depth edge at pixel (0, 2)
    queries = t64(
        [
            [
                [2.3, 2.6],  # 4 equal depths: exactly that depth
                [1.6, 1.4],  # footprint holds the hole, nearest pixel (2, 1) is the hole: unknown
                [1.4, 1.4],  # footprint holds the hole, nearest pixel (1, 1) is known: its depth, not a blend
                [0.4, 1.6],  # footprint across the edge: the nearest pixel (0, 2)'s depth
                [-0.3, 0.2],  # outermost half pixel: the nearest pixel's depth
                [3.7, 0.0],  # outside the image: unknown
            ]
        ]
    )
    values, inside = depth_at_points(flat, queries)
    assert values[0].tolist() == [5.0, 0.0, 5.0, 5.0 * (1 + 2 * DEPTH_INTERPOLATION_TOLERANCE), 5.0, 0.0]
    assert inside[0].tolist() == [True, True, True, True, True, False]


def _ideal_matches_validity(centres, k0, weight, truth, hw, cell):
    """Which points an exact local fit keeps, from the rule alone (float64, no ridge): enough matches around
    the point, the point within their support (weighted-least-squares leverage), landing inside the image."""
    out = []
    for point, landing in zip(centres, truth):
        d = (k0 - point) / cell
        near = (d**2).sum(1) <= MATCH_RADIUS**2
        w = np.where(near, np.exp(-(d**2).sum(1) / (2 * MATCH_SIGMA**2)) * weight, 0.0)
        if (near & (weight > 0)).sum() < MATCH_MIN_SUPPORT:
            out.append(False)
            continue
        mean = (w[:, None] * d).sum(0) / w.sum()
        scatter = ((d - mean) * w[:, None]).T @ (d - mean) / w.sum()
        leverage = 1.0 + mean @ np.linalg.solve(scatter, mean)
        inside = -0.5 <= landing[0] < hw[1] - 0.5 and -0.5 <= landing[1] < hw[0] - 0.5
        out.append(bool(leverage <= MATCH_MAX_LEVERAGE and inside))
    return np.array(out)


def test_matches_fit_is_exact_for_an_affine_map_far_from_the_origin():
    # Sparse, low-confidence, noise-free matches of an affine map on a 640x480 image: the local affine fit is
    # exact, so every target must be the map's own image of the cell centre, also near the far corner (landing
    # points at ~620 px, where a ridge on the landing point would pull it most towards pixel (0, 0)).
    h, w, cell = 480, 640, 16
    A = np.array([[0.97, 0.04], [-0.03, 0.99]])
    shift = np.array([-4.0, 12.0])
    rng = np.random.default_rng(3)
    k0 = rng.uniform([0.0, 0.0], [w - 1.0, h - 1.0], size=(1200, 2))
    k1 = k0 @ A.T + shift
    gr, gc = np.mgrid[0 : h // cell, 0 : w // cell]
    centres = np.stack([(gc.ravel() + 0.5) * cell - 0.5, (gr.ravel() + 0.5) * cell - 0.5], -1)
    truth = centres @ A.T + shift
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)[None]  # noqa: E731
    for confidence in (0.2, 1.0):
        weight = np.full(len(k0), confidence)
        points1, valid = warp_points_matches(f32(centres), f32(k0), f32(k1), f32(weight), (h, w), float(cell))
        points1, valid = points1[0].double().numpy(), valid[0].numpy()
        error = np.linalg.norm(points1 - truth, axis=1)[valid]
        assert error.max() < 0.01
        far = valid & (truth[:, 0] > 0.8 * w) & (truth[:, 1] > 0.8 * h)
        assert far.sum() >= 10 and np.linalg.norm(points1 - truth, axis=1)[far].max() < 0.01
        # no cell lost to a biased fit: the cells the rule keeps with an exact fit (up to a leverage tie)
        ideal = _ideal_matches_validity(centres, k0, weight, truth, (h, w), cell)
        assert valid.sum() >= ideal.sum() and (valid != ideal).sum() <= 2
        assert valid.mean() > 0.5


def test_numpy_adapter_by_hand_and_at_infinity():
    H = np.array([[1.2, 0.1, 5.0], [-0.2, 0.9, -3.0], [1e-3, 2e-3, 1.0]])
    points = np.array([[0.0, 0.0], [10.0, 20.0], [-7.5, 33.25]])
    np.testing.assert_allclose(warp_points(points, H), by_hand(H, points), rtol=1e-14)
    round_trip = warp_points(warp_points(points, H), np.linalg.inv(H))
    np.testing.assert_allclose(round_trip, points, atol=1e-10)
    # the horizon of H is 1e-3 x + 2e-3 y + 1 = 0: a point on it goes to infinity
    on_horizon = np.array([[-1000.0, 0.0]])
    assert np.isinf(warp_points(on_horizon, H)).all()
    assert warp_points(np.zeros((0, 2)), H).shape == (0, 2)
    assert warp_points(points[0], np.eye(3)).shape == (1, 2)
