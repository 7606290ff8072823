"""Two-view estimation against independent truths: kornia's essential matrix equals the hand-built
``[t]x R``, true correspondences satisfy the epipolar constraint, the relative pose of two cameras moves
camera-0 points into camera 1, and exact matches give back the pose and the homography they came from."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from loftr_kd.evaluation import corner_error
from loftr_kd.geometry import (
    essential_from_pose,
    estimate_homography,
    estimate_relative_pose,
    normalize_keypoints,
    relative_pose,
    warp_points,
)
from test_evaluation import HEIGHT, WIDTH, random_homography

K0 = np.array([[300.0, 0.0, 159.5], [0.0, 290.0, 119.5], [0.0, 0.0, 1.0]])
K1 = np.array([[320.0, 0.0, 161.0], [0.0, 315.0, 118.0], [0.0, 0.0, 1.0]])


def random_pose(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.radians(rng.uniform(-10, 10, size=3)))[0]
    T[:3, 3] = rng.uniform(-0.5, 0.5, size=3)
    return T


def scene(rng: np.random.Generator, T: np.ndarray, n: int = 300):
    """Exact projections ``(k0, k1)`` of random points at depth 2..8 in front of camera 0."""
    pixels = rng.uniform([0, 0], [WIDTH, HEIGHT], size=(n, 2))
    z = rng.uniform(2.0, 8.0, size=n)
    X0 = np.c_[(pixels - K0[:2, 2]) / K0[[0, 1], [0, 1]] * z[:, None], z]
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    k1 = X1[:, :2] / X1[:, 2:] * K1[[0, 1], [0, 1]] + K1[:2, 2]
    return pixels, k1, X0, X1


def test_kornia_essential_equals_the_hand_built_one():
    T = random_pose(np.random.default_rng(0))
    t = T[:3, 3]
    t_cross = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    E = essential_from_pose(torch.from_numpy(T)).numpy()
    np.testing.assert_allclose(E, t_cross @ T[:3, :3], atol=1e-15)
    batched = essential_from_pose(torch.from_numpy(np.stack([T, np.eye(4)])))
    assert batched.shape == (2, 3, 3) and not batched[1].any()  # no translation: no epipolar geometry


def test_true_correspondences_satisfy_the_epipolar_constraint():
    rng = np.random.default_rng(1)
    T = random_pose(rng)
    k0, k1, X0, X1 = scene(rng, T)
    x0, x1 = normalize_keypoints(k0, K0), normalize_keypoints(k1, K1)
    np.testing.assert_allclose(x0, X0[:, :2] / X0[:, 2:], atol=1e-12)  # normalised = camera rays
    np.testing.assert_allclose(x1, X1[:, :2] / X1[:, 2:], atol=1e-12)
    E = essential_from_pose(torch.from_numpy(T)).numpy()
    residual = np.einsum("ni,ij,nj->n", np.c_[x1, np.ones(len(x1))], E, np.c_[x0, np.ones(len(x0))])
    assert np.abs(residual).max() < 1e-12


def test_relative_pose_of_two_cameras():
    rng = np.random.default_rng(2)
    E0, E1 = random_pose(rng), random_pose(rng)  # world -> camera
    world = np.c_[rng.uniform(-3, 3, size=(20, 3)), np.ones(20)]
    T = relative_pose(E0, E1)
    np.testing.assert_allclose(world @ E0.T @ T.T, world @ E1.T, atol=1e-12)
    np.testing.assert_allclose(relative_pose(E0, E0), np.eye(4), atol=1e-12)


def test_estimate_relative_pose_recovers_the_true_pose():
    rng = np.random.default_rng(3)
    T = random_pose(rng)
    k0, k1, _, _ = scene(rng, T)
    R, t, inliers = estimate_relative_pose(k0, k1, K0, K1)
    assert inliers.mean() > 0.95
    np.testing.assert_allclose(R, T[:3, :3], atol=1e-5)
    np.testing.assert_allclose(t, T[:3, 3] / np.linalg.norm(T[:3, 3]), atol=1e-5)  # unit t, sign fixed
    assert estimate_relative_pose(k0[:4], k1[:4], K0, K1) is None


def test_estimate_homography_recovers_truth_and_flags_outliers():
    rng = np.random.default_rng(1)
    H = random_homography(rng, WIDTH, HEIGHT)
    k0 = rng.uniform([0, 0], [WIDTH, HEIGHT], size=(100, 2))
    k1 = warp_points(k0, H)
    k1[:20] += rng.uniform(30, 60, size=(20, 2))  # gross outliers
    for method in ("magsac", "ransac"):
        H_est, inliers = estimate_homography(k0, k1, method=method)
        assert corner_error(H_est, H, WIDTH, HEIGHT) < 1e-3
        assert not inliers[:20].any() and inliers[20:].all()
    assert estimate_homography(k0[:3], k1[:3])[0] is None
    with pytest.raises(ValueError, match="robust estimator"):
        estimate_homography(k0, k1, method="nope")


def test_repeated_points_do_not_fail_the_pose():
    """A one-way ratio test (the SIFT reference) matches one point to several: OpenCV's 5-point solver
    asserts on a sample that repeats a point with another partner, which used to fail the whole pair."""
    rng = np.random.default_rng(4)
    T = random_pose(rng)
    k0, k1, _, _ = scene(rng, T, n=200)
    again = rng.integers(0, 200, size=150)
    other = rng.integers(0, 200, size=150)
    k0_all = np.r_[k0, k0[again], k0[other]]  # image0 points again with wrong partners, then the reverse
    k1_all = np.r_[k1, k1[other], k1[again]]
    R, t, inliers = estimate_relative_pose(k0_all, k1_all, K0, K1)
    np.testing.assert_allclose(R, T[:3, :3], atol=1e-5)
    np.testing.assert_allclose(t, T[:3, 3] / np.linalg.norm(T[:3, 3]), atol=1e-5)
    assert inliers.shape == (500,) and inliers[:200].mean() > 0.95 and not inliers[200:].any()
    assert estimate_relative_pose(np.repeat(k0[:1], 9, 0), k1[:9], K0, K1) is None  # one distinct point
    with pytest.raises(ValueError, match="must hold the same matches: 150 against 200"):
        estimate_relative_pose(k0[:150], k1, K0, K1)  # the retry once fitted the first 150 and said nothing
    with pytest.raises(ValueError, match=r"transposed\? pass points.T"):
        estimate_relative_pose(k0.T, k1.T, K0, K1)
