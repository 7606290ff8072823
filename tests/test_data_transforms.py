"""Resizing keeps the intrinsics right (checked by projecting 3-D points and by image content)."""

import numpy as np
import pytest

from loftr_kd.data.transforms import resize_depth_with_intrinsics, resize_with_intrinsics

K = np.array([[500.0, 0.0, 383.5], [0.0, 480.0, 287.5], [0.0, 0.0, 1.0]])


def _project(K, X):
    x = K @ X
    return x[:2] / x[2]


@pytest.mark.parametrize("out_hw", [(480, 640), (240, 320), (600, 900), (576, 768), (100, 50)])
def test_resized_K_projects_to_scaled_pixel(out_hw):
    in_hw = (576, 768)
    points = np.random.default_rng(0).uniform([-2, -2, 3], [2, 2, 10], size=(20, 3)).T  # (3, N)
    _, K_new = resize_with_intrinsics(np.zeros(in_hw, np.uint8), K, out_hw)
    sx, sy = out_hw[1] / in_hw[1], out_hw[0] / in_hw[0]
    u, v = _project(K, points)
    # Independent truth: pixel-centre convention, a pixel's centre x maps to (x + 0.5) * s - 0.5.
    expected = np.stack([(u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5])
    np.testing.assert_allclose(_project(K_new, points), expected, atol=1e-9)


def test_image_content_follows_K():
    # A bright 8x8 block centred on pixel (203.5, 99.5); after halving it is centred on (101.5, 49.5).
    image = np.zeros((240, 320), np.uint8)
    image[96:104, 200:208] = 255
    small, _ = resize_with_intrinsics(image, None, (120, 160))
    ys, xs = np.nonzero(small)
    weights = small[ys, xs].astype(float)
    centre = (np.average(xs, weights=weights), np.average(ys, weights=weights))
    np.testing.assert_allclose(centre, ((203.5 + 0.5) * 0.5 - 0.5, (99.5 + 0.5) * 0.5 - 0.5), atol=1e-6)


def test_identity_size_is_noop():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out, K_new = resize_with_intrinsics(image, K, (3, 4))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(K_new, K)


def test_depth_nearest_keeps_values_and_holes():
    rng = np.random.default_rng(0)
    depth = rng.choice([0.0, 2.0, 7.5], size=(576, 768)).astype(np.float32)
    out, K_new = resize_depth_with_intrinsics(depth, K, (480, 640))
    assert out.shape == (480, 640) and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 2.0, 7.5}  # never blends valid depth with holes
    _, K_img = resize_with_intrinsics(np.zeros((576, 768), np.uint8), K, (480, 640))
    np.testing.assert_allclose(K_new, K_img)


def test_depth_nearest_pixel_centre_convention():
    # Downscale by 2: output pixel j covers input pixels 2j, 2j+1; its centre 2j+0.5 lies in pixel 2j+1
    # by the half-open rule floor((j + 0.5) * 2) = 2j + 1.
    depth = np.arange(8, dtype=np.float32)[None].repeat(2, 0)
    out, _ = resize_depth_with_intrinsics(depth, None, (1, 4))
    np.testing.assert_array_equal(out, [[1, 3, 5, 7]])
    up, _ = resize_depth_with_intrinsics(np.array([[1.0, 2.0]], np.float32), None, (1, 4))
    np.testing.assert_array_equal(up, [[1, 1, 2, 2]])


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="positive"):
        resize_with_intrinsics(np.zeros((4, 4), np.uint8), K, (0, 4))
    with pytest.raises(ValueError, match="empty"):
        resize_depth_with_intrinsics(np.zeros((0, 4), np.float32), K, (2, 2))
