"""Point warps against independent truths: an identity pose maps every pixel to itself, a fronto-parallel
plane has a known homography, the nearest pixel is floor(x + 0.5), and the NumPy adapter agrees with the
homography written out by hand."""

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
