"""Photo sets from installed packages: held-out photos never reach training; collecting and its errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from loftr_kd.cli.photos import main as photos_main
from loftr_kd.data import synthetic
from loftr_kd.data.homography import jpeg_round_trip, photometric
from loftr_kd.data.photos import (
    HELDOUT,
    HELDOUT_FILES,
    PHOTO_SETS,
    TRAIN_LOMIRI,
    TRAIN_WIDE,
    Photo,
    collect_photos,
    photo_set,
)


def test_heldout_photos_are_in_no_training_set_nor_in_synthetic_textures() -> None:
    heldout = {(p.package, p.file) for p in HELDOUT}
    for name, photos in PHOTO_SETS.items():
        if name != "heldout":
            assert heldout.isdisjoint((p.package, p.file) for p in photos), name
    assert HELDOUT_FILES.isdisjoint(synthetic._PHOTOS)
    assert {"astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"} == set(HELDOUT_FILES)


def test_train_more_is_the_wide_set_plus_lomiri_scene_photos_found_where_installed() -> None:
    more = photo_set("train-more")
    assert more[: len(TRAIN_WIDE)] == TRAIN_WIDE and more[len(TRAIN_WIDE) :] == TRAIN_LOMIRI
    assert len({p.name for p in more}) == len(more) == 43
    assert {p.package for p in TRAIN_LOMIRI} == {"lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"}
    photo = TRAIN_LOMIRI[0]
    assert photo.install_hint == "apt-get install lomiri-wallpapers-16.04"
    source = Path("/usr/share/backgrounds") / photo.file
    assert photo.locate() == (source if source.is_file() else None)


def test_collect_writes_pngs_and_a_manifest_of_the_sources(tmp_path: Path) -> None:
    photos = photo_set("train-pip")[:3]
    rows = collect_photos(photos, tmp_path, max_side=256)
    manifest = json.loads((tmp_path / "photos.json").read_text())
    assert [r["name"] for r in rows] == [p.name for p in photos] == [r["name"] for r in manifest["photos"]]
    for photo, row in zip(photos, rows):
        source = photo.locate()
        assert row["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        written = cv2.imread(str(tmp_path / f"{photo.name}.png"), cv2.IMREAD_COLOR)
        original = cv2.imread(str(source), cv2.IMREAD_COLOR)
        assert max(written.shape[:2]) == min(256, max(original.shape[:2]))
        # aspect kept (to the rounding of one pixel)
        assert abs(written.shape[1] / written.shape[0] - original.shape[1] / original.shape[0]) < 0.01


def test_a_missing_package_names_how_to_install_it(tmp_path: Path) -> None:
    absent = Photo("nowhere", "mate-backgrounds", "NoSuchPhoto_for_a_test.jpg")
    with pytest.raises(FileNotFoundError, match="apt-get install mate-backgrounds"):
        collect_photos([absent, *photo_set("train-pip")[:1]], tmp_path)
    rows = collect_photos([absent, *photo_set("train-pip")[:1]], tmp_path, allow_missing=True)
    assert len(rows) == 1
    assert json.loads((tmp_path / "photos.json").read_text())["missing"] == ["nowhere"]
    with pytest.raises(ValueError, match="unknown photo set"):
        photo_set("nope")


def test_cli_writes_the_heldout_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photos_main(["--set", "heldout", "--out", str(tmp_path), "--max-side", "128"])
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(p.name for p in HELDOUT)
    photos_main(["--set", "heldout", "--list"])
    assert "astronaut" in capsys.readouterr().out


def test_jpeg_artefacts_are_real_jpeg_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((64, 96)).astype(np.float32), (0, 0), 2.0)
    low = jpeg_round_trip(image, 10)
    high = jpeg_round_trip(image, 95)
    assert low.shape == image.shape and low.dtype == np.float32
    assert np.abs(high - image).mean() < np.abs(low - image).mean()
    # the 8x8 block grid of JPEG: the error jumps more across block edges than inside blocks at low quality
    diff = np.abs(np.diff(low - image, axis=1))
    assert diff[:, 7::8].mean() > diff[:, 3::8].mean()
    a = photometric(image, np.random.default_rng([1, 2]))
    b = photometric(image, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a, b)


def test_a_set_that_stops_midway_leaves_nothing_of_itself(tmp_path: Path) -> None:
    """Ctrl-C or an error part-way wrote the first photos into the folder with no photos.json: training and
    --images took them as the set. Now the set is written beside it and moved in when complete."""
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")

    class Undecodable(Photo):  # an installed file that is not a photo, third in the set
        def locate(self) -> Path | None:
            return junk

    photos = [*photo_set("train-pip")[:2], Undecodable("broken", "scikit-image", "junk.jpg")]
    out = tmp_path / "set"
    with pytest.raises(ValueError, match="junk.jpg: does not decode as an image"):
        collect_photos(photos, out, max_side=128)
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["junk.jpg", "set"]


def test_allow_missing_with_nothing_installed_is_an_error_not_an_empty_set(tmp_path: Path) -> None:
    absent = [Photo(f"nowhere{i}", "mate-backgrounds", f"NoSuchPhoto_{i}.jpg") for i in range(2)]
    with pytest.raises(FileNotFoundError, match="2 of 2 photos are not installed"):
        collect_photos(absent, tmp_path / "set", allow_missing=True)
    assert not (tmp_path / "set" / "photos.json").exists()


def test_a_max_side_that_makes_photos_too_small_to_train_on_is_refused(tmp_path: Path) -> None:
    """--max-side 32 (the long side) wrote photos of 20-28 px short sides, which homographies then refused."""
    with pytest.raises(
        ValueError, match=r"max_side=32 makes \w+ 32x\d+ pixels, below the 32-pixel shorter side"
    ):
        collect_photos(photo_set("train-pip")[:3], tmp_path / "set", max_side=32)
    assert not list((tmp_path / "set").iterdir())
