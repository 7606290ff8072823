"""BlendedMVS index validation, skip mode and dataset items on tiny scenes written with our writers."""

import numpy as np
import pytest
import torch

from loftr_kd.data.blendedmvs import (
    BlendedMVSIndex,
    BlendedMVSPairDataset,
    find_scenes,
    split_scenes,
)
from loftr_kd.data.blendedmvs_io import (
    BlendedMVSFormatError,
    cam_path,
    depth_path,
    image_path,
    pair_path,
    read_pair_file,
    write_image,
    write_pair_file,
    write_pfm,
)
from loftr_kd.data.synthetic import write_toy_dataset

H, W = 48, 64


@pytest.fixture
def toy(tmp_path):
    names = write_toy_dataset(tmp_path, scenes=2, views=3, height=H, width=W, depth=4.0, baseline=0.5)
    return tmp_path, names


def test_pairs_both_directions_deduplicated(toy):
    root, names = toy
    # Asymmetric, duplicated and self-referencing pair lists.
    write_pair_file(
        pair_path(root / names[0]), {0: [(1, 1.0), (1, 0.5), (0, 9.0)], 1: [(0, 1.0)], 2: [(0, 2.0)]}
    )
    index = BlendedMVSIndex.build(root, [names[0]])
    assert sorted((p.view0, p.view1) for p in index.pairs) == [(0, 1), (0, 2), (1, 0), (2, 0)]
    assert index.report.total == 0


def test_item_keys_shapes_and_geometry(toy):
    root, names = toy
    dataset = BlendedMVSPairDataset(root, names, height=24, width=32)
    assert len(dataset) == 2 * 6  # 3 views, all ordered pairs
    item = dataset[0]
    assert set(item) == {"image0", "image1", "depth0", "depth1", "K0", "K1", "T_0to1", "T_1to0", "pair_id"}
    for key in ("image0", "image1"):
        assert item[key].shape == (1, 24, 32) and item[key].dtype == torch.float32
        assert item[key].min() >= 0.0 and item[key].max() <= 1.0
    for key in ("depth0", "depth1"):
        assert item[key].shape == (24, 32) and item[key].dtype == torch.float32
        assert torch.all(item[key] == 4.0)
    assert item["K0"].shape == (3, 3) and item["T_0to1"].shape == (4, 4)
    assert item["K0"].dtype == torch.float32 and item["T_0to1"].dtype == torch.float32
    pair = dataset.pairs[0]
    assert item["pair_id"] == f"{pair.scene}/{pair.view0}-{pair.view1}"
    torch.testing.assert_close(item["T_0to1"] @ item["T_1to0"], torch.eye(4), atol=1e-6, rtol=0)
    # Camera v sits at x = v * baseline: a point in camera view0 is x + (view0 - view1) * b in view1.
    expected = torch.eye(4)
    expected[0, 3] = (pair.view0 - pair.view1) * 0.5
    torch.testing.assert_close(item["T_0to1"], expected)
    # Halving the image halves the focal length (pixel-centre convention for the principal point).
    toy_K = dataset.index.views[(pair.scene, pair.view0)].camera.intrinsic
    assert item["K0"][0, 0] == pytest.approx(toy_K[0, 0] / 2)
    assert item["K0"][0, 2] == pytest.approx((toy_K[0, 2] + 0.5) / 2 - 0.5)


def test_item_pose_and_depth_map_pixels_between_views(toy):
    """Independent truth: the toy texture moves by a known shift, so warping by depth + pose lands on it."""
    root, names = toy
    dataset = BlendedMVSPairDataset(root, names, height=H, width=W)
    i = next(k for k, p in enumerate(dataset.pairs) if (p.view0, p.view1) == (0, 1))
    item = dataset[i]
    K0, K1, T = item["K0"].double(), item["K1"].double(), item["T_0to1"].double()
    u, v, d = 40.0, 20.0, float(item["depth0"][20, 40])
    X0 = d * torch.linalg.inv(K0) @ torch.tensor([u, v, 1.0], dtype=torch.float64)
    X1 = T[:3, :3] @ X0 + T[:3, 3]
    x1 = K1 @ X1
    u1, v1 = float(x1[0] / x1[2]), float(x1[1] / x1[2])
    assert v1 == pytest.approx(v)
    assert float(item["image1"][0, int(v1), round(u1)]) == pytest.approx(
        float(item["image0"][0, 20, 40]), abs=0.02
    )


def test_split_from_list_files_and_fallback(toy, tmp_path):
    root, names = toy
    assert split_scenes(root)[:2] == (names[:-1], names[-1:])
    assert split_scenes(root, train_scenes=[names[1]])[:2] == ([names[1]], [names[0]])
    (root / "training_list.txt").unlink()
    (root / "validation_list.txt").unlink()
    train, val, _ = split_scenes(root, seed=3)
    assert sorted(train + val) == sorted(names) and len(val) == 1
    assert split_scenes(root, seed=3)[:2] == (train, val)


def test_masked_images_ignored(toy):
    root, names = toy
    write_image(root / names[0] / "blended_images" / "00000000_masked.jpg", np.zeros((H, W), np.uint8))
    assert find_scenes(root) == names
    index = BlendedMVSIndex.build(root, names)
    assert len(index.views) == 6


# -- validation when the index is built --------------------------------------------------------------


def _break_missing_image(scene_dir):
    image_path(scene_dir, 1).unlink()
    return "00000001.jpg"


def _break_pair_names_unknown_view(scene_dir):
    table = read_pair_file(pair_path(scene_dir))
    table[0].append((9, 1.0))
    write_pair_file(pair_path(scene_dir), table)
    return "00000009"


def _break_cam_tokens(scene_dir):
    path = cam_path(scene_dir, 2)
    path.write_text(path.read_text() + " 7\n")
    return "00000002_cam.txt"


def _break_depth_size(scene_dir):
    write_pfm(depth_path(scene_dir, 1), np.ones((H - 1, W), np.float32))
    return "00000001.pfm"


def _break_pair_file(scene_dir):
    pair_path(scene_dir).write_text("3\n0\n2 1 0.5\n")
    return "pair.txt"


BREAKERS = [
    _break_missing_image,
    _break_pair_names_unknown_view,
    _break_cam_tokens,
    _break_depth_size,
    _break_pair_file,
]


@pytest.mark.parametrize("breaker", BREAKERS)
def test_index_raises_naming_the_file(toy, breaker):
    root, names = toy
    fragment = breaker(root / names[0])
    with pytest.raises(BlendedMVSFormatError) as info:
        BlendedMVSIndex.build(root, names)
    assert fragment in str(info.value)


@pytest.mark.parametrize("breaker", BREAKERS)
def test_index_skip_mode_counts(toy, breaker, caplog):
    root, names = toy
    breaker(root / names[0])
    dataset = BlendedMVSPairDataset(root, names, H, W, on_bad_data="skip")
    counts = dataset.bad_data_counts
    assert counts["skipped_scenes"] + counts["skipped_views"] >= 1
    assert dataset.index.report.messages and "skipping bad data" in caplog.text
    assert len(dataset) >= 6  # the intact scene survives
    assert all(p.scene == names[1] or {p.view0, p.view1} <= {0, 1, 2} for p in dataset.pairs)
    dataset[0]


def test_missing_listed_scene(toy):
    root, names = toy
    with pytest.raises(BlendedMVSFormatError, match="nowhere"):
        BlendedMVSIndex.build(root, [*names, "nowhere"])
    index = BlendedMVSIndex.build(root, [*names, "nowhere"], on_bad_data="skip")
    assert index.report.skipped_scenes == 1


# -- problems only visible on load -------------------------------------------------------------------


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _break_on_load_image(scene_dir):
    _truncate(image_path(scene_dir, 0))
    return "00000000.jpg"


def _break_on_load_empty_depth(scene_dir):
    write_pfm(depth_path(scene_dir, 0), np.zeros((H, W), np.float32))
    return "00000000.pfm"


def _break_on_load_blank_image(scene_dir):
    write_image(image_path(scene_dir, 0), np.zeros((H, W), np.uint8))
    return "00000000.jpg"


LOAD_BREAKERS = [_break_on_load_image, _break_on_load_empty_depth, _break_on_load_blank_image]


@pytest.mark.parametrize("breaker", LOAD_BREAKERS)
def test_load_errors_name_the_file(toy, breaker):
    root, names = toy
    dataset = BlendedMVSPairDataset(root, names[:1], H, W)  # index still valid: header-level checks pass
    fragment = breaker(root / names[0])
    with pytest.raises(BlendedMVSFormatError) as info:
        dataset[0]  # pair (0, 1)
    assert fragment in str(info.value)


@pytest.mark.parametrize("breaker", LOAD_BREAKERS)
def test_load_skip_mode_replaces_and_counts(toy, breaker):
    root, names = toy
    dataset = BlendedMVSPairDataset(root, names, H, W, on_bad_data="skip")
    breaker(root / names[0])
    bad = [i for i, p in enumerate(dataset.pairs) if p.scene == names[0] and 0 in (p.view0, p.view1)]
    for i in bad:
        item = dataset[i]
        assert item["pair_id"] != dataset.pairs[i].pair_id
    assert dataset.skipped_on_load >= len(bad)
    assert dataset.bad_data_counts["replaced_on_load"] == dataset.skipped_on_load
    assert dataset[bad[0]]["pair_id"] == dataset[bad[0]]["pair_id"]  # deterministic replacement


def test_skip_counts_reach_main_process_from_workers(toy):
    root, names = toy
    dataset = BlendedMVSPairDataset(root, names, H, W, on_bad_data="skip")
    _break_on_load_empty_depth(root / names[0])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1)
    batches = list(loader)
    assert sum(len(b["pair_id"]) for b in batches) == len(dataset)
    assert dataset.skipped_on_load >= 4  # 4 pairs of the broken scene involve view 0


def test_bad_on_bad_data_value(toy):
    root, names = toy
    with pytest.raises(ValueError, match="on_bad_data"):
        BlendedMVSPairDataset(root, names, on_bad_data="ignore")


def test_an_exif_orientation_does_not_turn_an_image_away_from_its_depth(tmp_path):
    """A BlendedMVS-layout JPEG with an EXIF orientation of 3 was read turned 180 degrees while its depth,
    intrinsics and pose stayed as stored: a silently wrong pair (6 failed on the size check)."""
    from PIL import Image
    from skimage import data as skdata

    from loftr_kd.data.blendedmvs_io import read_image_gray, read_image_size
    from loftr_kd.images import read_image

    stored = np.ascontiguousarray(skdata.camera()[:, :400])  # not symmetric: a turn shows
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    for orientation in (3, 6):
        exif[0x0112] = orientation
        path = tmp_path / f"turned{orientation}.jpg"
        picture.save(path, exif=exif, quality=95)
        read = read_image_gray(path)
        assert read.shape == read_image_size(path) == stored.shape
        assert np.abs(read.astype(float) - stored).mean() < 3  # the raster as stored (JPEG noise)
        assert read.shape != read_image(path, gray=True).shape or orientation == 3
    assert (
        np.abs(read_image(tmp_path / "turned3.jpg", gray=True).astype(float) - stored[::-1, ::-1]).mean() < 3
    )
