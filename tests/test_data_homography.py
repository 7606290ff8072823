"""Homography pairs: H_0to1 agrees with the rendered image content; determinism; range of motions."""

import math

import cv2
import numpy as np
import pytest
import torch

from loftr_kd.data.blendedmvs_io import write_image
from loftr_kd.data.homography import HomographyPairDataset, find_images, render, sample_homography

H, W = 60, 80


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for k, name in enumerate(["a.jpg", "sub/b.png", "sub/c.ppm"]):
        image = (rng.random((90 + 10 * k, 120, 3)) * 255).astype(np.uint8)
        write_image(tmp_path / name, cv2.GaussianBlur(image, (0, 0), 1.5))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_find_images_recursive(folder):
    assert [p.name for p in find_images(folder)] == ["a.jpg", "b.png", "c.ppm"]


def test_item_keys_shapes_and_determinism(folder):
    dataset = HomographyPairDataset(folder, H, W, seed=5)
    assert len(dataset) == 3000
    item = dataset[4]
    assert set(item) == {"image0", "image1", "H_0to1", "pair_id"}
    assert item["image0"].shape == (1, H, W) and item["image1"].shape == (1, H, W)
    assert item["image0"].dtype == torch.float32 and item["H_0to1"].dtype == torch.float32
    assert item["H_0to1"].shape == (3, 3)
    assert item["image1"].min() >= 0 and item["image1"].max() <= 1
    again = HomographyPairDataset(folder, H, W, seed=5)[4]
    for key in ("image0", "image1", "H_0to1"):
        torch.testing.assert_close(item[key], again[key], atol=0, rtol=0)
    other = HomographyPairDataset(folder, H, W, seed=6)[4]
    assert not torch.equal(item["H_0to1"], other["H_0to1"])
    assert item["pair_id"] == "sub/b.png#4"


def test_blob_lands_where_H_says(tmp_path):
    """Independent truth: a single Gaussian blob in the source; its centroid in image1 is H(centroid0)."""
    source = np.zeros((300, 400), np.float32)
    cv2.circle(source, (170, 140), 6, 1.0, -1)
    source = cv2.GaussianBlur(source, (0, 0), 3)
    write_image(tmp_path / "blob.png", (source / source.max() * 255).astype(np.uint8))
    dataset = HomographyPairDataset(
        tmp_path, 120, 160, seed=1, photometric_strength=0, max_zoom=1.5, max_rotation_deg=60, crop_scale=1.0
    )
    checked = 0
    for i in range(30):
        item = dataset[i]
        image0, image1 = item["image0"][0].numpy(), item["image1"][0].numpy()

        def centroid(image):
            ys, xs = np.nonzero(image > 0.3 * image.max())
            w = image[ys, xs]
            return np.array([np.average(xs, weights=w), np.average(ys, weights=w)])

        if image0.max() < 0.5 or image1.max() < 0.5:
            continue
        c0, c1 = centroid(image0), centroid(image1)
        if min(c0.min(), c1.min()) < 12 or c0[0] > 148 or c1[0] > 148 or c0[1] > 108 or c1[1] > 108:
            continue  # blob cut by the border
        p = item["H_0to1"].double().numpy() @ np.array([c0[0], c0[1], 1.0])
        np.testing.assert_allclose(p[:2] / p[2], c1, atol=1.0)
        checked += 1
    assert checked >= 5


def test_image1_is_image0_warped(folder):
    """Warping image0 by H_0to1 reproduces image1 where image0 is visible (no photometric change)."""
    dataset = HomographyPairDataset(folder, H, W, seed=0, photometric_strength=0, max_zoom=2.0)
    for i in range(5):
        item = dataset[i]
        image0 = item["image0"][0].numpy()
        image1 = item["image1"][0].numpy()
        Hm = item["H_0to1"].double().numpy()
        warped = cv2.warpPerspective(image0, Hm, (W, H), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.ones_like(image0), Hm, (W, H), flags=cv2.INTER_NEAREST)
        mask = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
        if mask.sum() < 200:
            continue
        error = np.abs(warped - image1)[mask].mean()
        assert error < 0.04, (i, error)


def test_homography_range_covers_zoom_and_rotation():
    rng = np.random.default_rng(0)
    zooms, angles = [], []
    for _ in range(300):
        Hm = sample_homography(rng, 480, 640, max_perspective=0.0)
        A = Hm[:2, :2] / Hm[2, 2]
        zooms.append(math.sqrt(abs(np.linalg.det(A))))
        angles.append(math.degrees(math.atan2(A[1, 0], A[0, 0])))
    assert max(zooms) > 2.5 and min(zooms) < 1 / 2.5
    assert max(angles) > 50 and min(angles) < -50


def test_render_antialias_keeps_geometry():
    # A shrink by 4 goes through the pyramid; a bright square must still land where G maps it.
    source = np.zeros((400, 400), np.uint8)
    source[180:220, 180:220] = 255  # centre 199.5
    G = np.array([[0.25, 0, 0], [0, 0.25, 0], [0, 0, 1.0]])
    G = np.array([[1, 0, 0.25 * 0.5 - 0.5], [0, 1, 0.25 * 0.5 - 0.5], [0, 0, 1]]) @ G  # pixel-centre scale
    out = render(source, G, (100, 100)).astype(float)
    ys, xs = np.nonzero(out)
    centre = np.average(xs, weights=out[ys, xs]), np.average(ys, weights=out[ys, xs])
    np.testing.assert_allclose(centre, ((199.5 + 0.5) * 0.25 - 0.5,) * 2, atol=0.1)


def test_empty_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no usable images"):
        HomographyPairDataset(tmp_path, H, W)


def test_bad_images_raise_or_skip(folder):
    (folder / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(Exception, match="broken.jpg"):
        HomographyPairDataset(folder, H, W)
    dataset = HomographyPairDataset(folder, H, W, on_bad_data="skip")
    assert dataset.bad_data_counts == {"skipped_images": 1, "replaced_on_load": 0}
    assert len(dataset.images) == 3


def test_image_truncated_after_header_is_replaced_on_load(folder):
    dataset = HomographyPairDataset(folder, H, W, on_bad_data="skip")
    path = folder / "sub" / "b.png"  # image 1
    path.write_bytes(path.read_bytes()[:200])  # header intact, data cut
    item = dataset[1]
    assert item["pair_id"].startswith("sub/c.ppm#")
    assert dataset.bad_data_counts["replaced_on_load"] == 1
    with pytest.raises(Exception, match="b.png"):
        HomographyPairDataset(folder, H, W, images=dataset.images)[1]


def test_hpatches_layout_export_reads_back_with_exact_homographies(tmp_path):
    from loftr_kd.data.homography import write_hpatches_layout
    from loftr_kd.evaluation import load_hpatches

    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(
        str(photos / "a.png"), cv2.GaussianBlur((rng.random((120, 160)) * 255).astype(np.uint8), (0, 0), 1.5)
    )
    dataset = HomographyPairDataset(photos, height=64, width=96, seed=4, photometric_strength=0.0)
    write_hpatches_layout(dataset, tmp_path / "hp", 3)
    pairs = load_hpatches(tmp_path / "hp")
    assert len(pairs) == 3
    for pair, index in zip(pairs, range(3)):
        np.testing.assert_allclose(pair.H, dataset[index]["H_0to1"].numpy(), rtol=1e-6, atol=1e-6)
        image1 = cv2.imread(str(pair.path1), cv2.IMREAD_GRAYSCALE)
        assert image1.shape == (64, 96)
        expected = (dataset[index]["image1"][0].numpy() * 255.0).round()
        np.testing.assert_array_equal(image1, expected)


@pytest.mark.parametrize("size", [(8, 8), (1, 1), (20, 400)])
def test_too_small_images_are_rejected_or_skipped_and_counted(folder, size):
    write_image(folder / "tiny.png", (np.random.default_rng(1).random(size) * 255).astype(np.uint8))
    with pytest.raises(Exception, match=rf"tiny.png: image is {size[1]}x{size[0]} pixels, too small"):
        HomographyPairDataset(folder, H, W)
    dataset = HomographyPairDataset(folder, H, W, on_bad_data="skip")
    assert dataset.bad_data_counts["skipped_images"] == 1
    assert "tiny.png" not in {p.name for p in dataset.images}


def test_blank_images_are_rejected_or_replaced_and_counted(folder):
    blank = folder / "sub" / "b.png"  # image 1
    write_image(blank, np.full((100, 120), 200, np.uint8))
    with pytest.raises(Exception, match=r"b.png: image is blank \(all pixels equal 200\)"):
        HomographyPairDataset(folder, H, W)[1]
    dataset = HomographyPairDataset(folder, H, W, on_bad_data="skip")
    assert dataset[1]["pair_id"].startswith("sub/c.ppm#")
    assert dataset.bad_data_counts["replaced_on_load"] == 1
    flat = np.full((100, 120), 90, np.uint8)
    flat[::7, ::5] = 91  # one grey level of noise: still nothing to match
    write_image(blank, flat)
    with pytest.raises(Exception, match="featureless"):
        HomographyPairDataset(folder, H, W)[1]


def test_a_folder_of_only_blank_images_is_an_error(tmp_path):
    for k in range(2):
        write_image(tmp_path / f"{k}.png", np.zeros((64, 64), np.uint8))
    dataset = HomographyPairDataset(tmp_path, H, W, on_bad_data="skip")
    with pytest.raises(Exception, match="no source image could be loaded"):
        dataset[0]


def test_homographies_command_and_its_module_spelling(tmp_path):
    """``loftr-kd-homographies`` and ``python -m loftr_kd.cli.homography`` write the same pairs."""
    import subprocess
    import sys

    import cv2
    import skimage.data

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "brick.png"), skimage.data.brick())
    args = ["--images", str(photos), "--pairs", "2", "--height", "96", "--width", "128"]
    from loftr_kd.cli.homography import main

    main([*args, "--out", str(tmp_path / "new")])
    subprocess.run(
        [sys.executable, "-m", "loftr_kd.cli.homography", *args, "--out", str(tmp_path / "old")], check=True
    )
    for name in ("h_0000/H_1_2", "h_0001/H_1_2", "h_0001/2.png"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()
