"""PairDataModule: batches follow the contract, fixed validation subset, generation hook, configs."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from loftr_kd.data import synthetic
from loftr_kd.data.blendedmvs_io import write_image
from loftr_kd.data.datamodule import PairDataModule
from loftr_kd.data.sampling import EpochPairSampler
from loftr_kd.data.synthetic import write_toy_dataset

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
H, W = 32, 48
DEPTH_KEYS = {"image0", "image1", "depth0", "depth1", "K0", "K1", "T_0to1", "T_1to0", "pair_id"}


@pytest.fixture
def toy_root(tmp_path):
    write_toy_dataset(tmp_path / "toy", scenes=3, views=3, height=H, width=W)
    return tmp_path / "toy"


def _check_depth_batch(batch, b):
    assert set(batch) == DEPTH_KEYS
    assert batch["image0"].shape == (b, 1, H, W) and batch["image0"].dtype == torch.float32
    assert batch["depth1"].shape == (b, H, W)
    assert batch["K0"].shape == (b, 3, 3) and batch["T_1to0"].shape == (b, 4, 4)
    assert isinstance(batch["pair_id"], list) and len(batch["pair_id"]) == b


def test_blendedmvs_loaders(toy_root):
    dm = PairDataModule(
        kind="blendedmvs",
        root=toy_root,
        height=H,
        width=W,
        batch_size=4,
        num_workers=0,
        pairs_per_epoch=10,
        val_pairs=5,
        seed=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.summary["train scenes"] == 2 and dm.summary["val scenes"] == 1
    assert dm.summary["train pairs"] == 12 and dm.summary["val pairs"] == 5
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochPairSampler)
    batches = list(train)
    assert len(batches) == 2  # 10 pairs, batch 4, last partial batch dropped
    _check_depth_batch(batches[0], 4)
    assert all(pid.startswith(("toy_000/", "toy_001/")) for b in batches for pid in b["pair_id"])
    val = [pid for b in dm.val_dataloader() for pid in b["pair_id"]]
    assert len(val) == 5 and all(pid.startswith("toy_002/") for pid in val)
    dm2 = PairDataModule(
        kind="blendedmvs", root=toy_root, height=H, width=W, batch_size=4, num_workers=0, val_pairs=5
    )
    dm2.setup("fit")
    assert [pid for b in dm2.val_dataloader() for pid in b["pair_id"]] == val  # deterministic subset
    assert dm.bad_data_counts() == {
        "skipped_scenes": 0,
        "skipped_views": 0,
        "skipped_pairs": 0,
        "replaced_on_load": 0,
    }


def test_explicit_scenes_and_workers(toy_root):
    dm = PairDataModule(
        kind="blendedmvs",
        root=toy_root,
        height=H,
        width=W,
        batch_size=2,
        num_workers=1,
        pairs_per_epoch=4,
        val_pairs=2,
        train_scenes=["toy_002"],
        val_scenes=["toy_000"],
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batches = list(loader)
    assert len(batches) == 2 and all(p.startswith("toy_002/") for b in batches for p in b["pair_id"])


def test_skip_mode_counts_reach_the_datamodule(toy_root):
    (toy_root / "toy_000" / "cams" / "00000001_cam.txt").write_text("extrinsic 1 2 3")
    with pytest.raises(Exception, match="00000001_cam.txt"):
        PairDataModule(root=toy_root, height=H, width=W, num_workers=0).setup("fit")
    dm = PairDataModule(root=toy_root, height=H, width=W, num_workers=0, on_bad_data="skip")
    dm.setup("fit")
    counts = dm.bad_data_counts()
    assert counts["skipped_views"] == 1 and counts["skipped_pairs"] == 4
    assert dm.summary["bad data"] == counts


def test_generate_when_root_empty(tmp_path):
    root = tmp_path / "synthetic"
    generate = {"scenes": 2, "views": 3, "seed": 7}
    dm = PairDataModule(root=root, height=H, width=W, num_workers=0, generate=generate, batch_size=2)
    dm.prepare_data()  # the real generator (768x576, 6 views: a couple of seconds)
    info = root / "synthetic_info.json"
    assert info.is_file() and sorted(p.name for p in root.glob("synth_*")) == ["synth_000", "synth_001"]
    stamp = info.stat().st_mtime_ns
    dm.prepare_data()  # a complete set exists now: no second generation
    assert info.stat().st_mtime_ns == stamp
    dm.setup("fit")
    _check_depth_batch(next(iter(dm.train_dataloader())), 2)


def _snapshot(root):
    """Every file under ``root`` with its bytes (the independent record of "nothing was touched")."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_killed_half_way_is_resumed_keeping_its_scenes(tmp_path):
    root = tmp_path / "synthetic"
    generate = {"scenes": 2, "views": 3, "seed": 7}
    synthetic.generate_dataset(root, scenes=1, views=3, seed=7)  # stands in for scene 0 of a killed run
    (root / synthetic.INFO_FILE).unlink()
    for name in ("training_list.txt", "validation_list.txt", "all_list.txt"):
        (root / name).unlink()
    (root / synthetic.PROGRESS_FILE).write_text(
        json.dumps({"version": "1", "seed": 7, "scenes": 2, "views": 3, "height": 576, "width": 768})
    )
    before = _snapshot(root / "synth_000")
    PairDataModule(root=root, height=H, width=W, num_workers=0, generate=generate).prepare_data()
    assert (root / synthetic.INFO_FILE).is_file() and not (root / synthetic.PROGRESS_FILE).exists()
    assert _snapshot(root / "synth_000") == before and (root / "synth_001" / "cams" / "pair.txt").is_file()


def test_synth_scenes_without_info_are_never_regenerated(tmp_path):
    """A hand-edited or copied scene set: refused with a message naming it; every byte kept."""
    root = tmp_path / "mine"
    synthetic.generate_dataset(root, scenes=1, views=3, seed=7, height=48, width=64)
    (root / synthetic.INFO_FILE).unlink()
    (root / "synth_000" / "cams" / "notes.txt").write_text("edited by hand")
    before = _snapshot(root)
    generate = {"scenes": 2, "views": 3, "seed": 7, "default_root": str(root)}
    dm = PairDataModule(root=root, height=H, width=W, num_workers=0, generate=generate)
    with pytest.raises(ValueError, match=r"did not write \(all_list.txt, synth_000.*data=blendedmvs"):
        dm.prepare_data()
    assert _snapshot(root) == before


def test_mistyped_root_is_an_error_not_a_new_data_set(tmp_path):
    default = tmp_path / "data" / "synthetic"
    generate = {"scenes": 1, "views": 3, "seed": 7, "default_root": str(default)}
    typo = tmp_path / "dat" / "synthetic"
    dm = PairDataModule(root=typo, height=H, width=W, num_workers=0, generate=generate)
    with pytest.raises(FileNotFoundError, match=r"dat/synthetic does not exist.*allow_other_root"):
        dm.prepare_data()
    assert not typo.exists() and not (tmp_path / "dat").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        PairDataModule(root=empty, num_workers=0, generate=generate).prepare_data()
    assert list(empty.iterdir()) == []


def test_a_folder_of_anything_else_is_left_byte_identical(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"\xff\xd8 my photo \xff\xd9")
    (root / "sub").mkdir()
    (root / "sub" / "notes.txt").write_text("keep me")
    before = _snapshot(root)
    generate = {"scenes": 1, "views": 3, "allow_other_root": True}
    with pytest.raises(ValueError, match=r"holiday.jpg, sub"):
        PairDataModule(root=root, num_workers=0, generate=generate).prepare_data()
    assert _snapshot(root) == before


def test_never_generates_into_a_folder_of_real_scenes(tmp_path):
    write_toy_dataset(tmp_path, scenes=1, views=3, height=H, width=W, seed=0)
    before = _snapshot(tmp_path)
    dm = PairDataModule(root=tmp_path, height=H, width=W, num_workers=0, generate={"scenes": 1, "views": 3})
    with pytest.raises(ValueError, match="did not write"):
        dm.prepare_data()
    assert _snapshot(tmp_path) == before


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PairDataModule(root=tmp_path / "nothing").setup("fit")
    with pytest.raises(ValueError, match="kind"):
        PairDataModule(kind="kitti")


def test_homography_loaders(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(2):
        image = cv2.GaussianBlur((rng.random((50, 70)) * 255).astype(np.uint8), (0, 0), 1)
        write_image(tmp_path / f"p{k}.png", image)
    dm = PairDataModule(
        kind="homography",
        root=tmp_path,
        height=H,
        width=W,
        batch_size=3,
        num_workers=0,
        pairs_per_epoch=6,
        val_pairs=4,
        homography={"max_zoom": 2.0},
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image0", "image1", "H_0to1", "pair_id"}
    assert batch["image1"].shape == (3, 1, H, W) and batch["H_0to1"].shape == (3, 3, 3)
    assert len(dm.val_dataset) == 4 and len(list(dm.val_dataloader())) == 2


def test_homography_validation_range_is_its_own(tmp_path):
    """``val_homography`` sets the validation pairs' range over ``homography``: training may draw wider
    homographies while the validation pairs stay those of the narrower range, pair for pair."""
    rng = np.random.default_rng(0)
    for k in range(2):
        image = cv2.GaussianBlur((rng.random((50, 70)) * 255).astype(np.uint8), (0, 0), 1)
        write_image(tmp_path / f"p{k}.png", image)
    common = dict(kind="homography", root=tmp_path, height=H, width=W, num_workers=0, val_pairs=3)
    narrow = PairDataModule(**common, homography={"max_rotation_deg": 10.0})
    wide = PairDataModule(
        **common, homography={"max_rotation_deg": 90.0}, val_homography={"max_rotation_deg": 10.0}
    )
    for dm in (narrow, wide):
        dm.setup("fit")
    assert wide.train_dataset.max_rotation_deg == 90.0 and wide.val_dataset.max_rotation_deg == 10.0
    for i in range(3):
        np.testing.assert_array_equal(wide.val_dataset[i]["H_0to1"], narrow.val_dataset[i]["H_0to1"])
    assert not np.array_equal(wide.train_dataset[0]["H_0to1"], narrow.train_dataset[0]["H_0to1"])


def test_runs_with_other_seeds_validate_on_the_same_pairs(tmp_path, toy_root):
    """``val_seed`` alone picks the validation pairs (homographies and the scene subset): two runs with
    different ``seed`` and the same ``val_seed`` are scored on the same pairs while they train on others;
    without it (older configs) the run's seed picks them, as before."""
    rng = np.random.default_rng(0)
    for k in range(2):
        image = cv2.GaussianBlur((rng.random((50, 70)) * 255).astype(np.uint8), (0, 0), 1)
        write_image(tmp_path / f"p{k}.png", image)
    photos = dict(kind="homography", root=tmp_path, height=H, width=W, num_workers=0, val_pairs=3)
    runs = [PairDataModule(**photos, seed=seed, val_seed=42) for seed in (42, 43)]
    old = PairDataModule(**photos, seed=43)
    for dm in (*runs, old):
        dm.setup("fit")
    for i in range(3):
        np.testing.assert_array_equal(runs[0].val_dataset[i]["H_0to1"], runs[1].val_dataset[i]["H_0to1"])
    assert not np.array_equal(runs[0].train_dataset[0]["H_0to1"], runs[1].train_dataset[0]["H_0to1"])
    assert not np.array_equal(old.val_dataset[0]["H_0to1"], runs[0].val_dataset[0]["H_0to1"])

    scenes = dict(kind="blendedmvs", root=toy_root, height=H, width=W, num_workers=0, val_pairs=3)
    subsets = []
    for seed, val_seed in ((42, 42), (43, 42), (43, None)):
        dm = PairDataModule(**scenes, seed=seed, val_seed=val_seed)
        dm.setup("fit")
        subsets.append(list(dm.val_dataset.indices))
    assert subsets[0] == subsets[1] != subsets[2]


@pytest.mark.parametrize("name", ["synthetic", "blendedmvs", "homography"])
def test_configs_instantiate(name, tmp_path):
    data = OmegaConf.load(CONF / f"{name}.yaml")
    for key in ("root", "height", "width", "batch_size", "pairs_per_epoch", "num_workers", "on_bad_data"):
        assert key in set(data.keys())
    assert data._target_ == "loftr_kd.data.datamodule.PairDataModule"
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "seed": 1, "val_seed": 2, "data": data})
    if name != "synthetic":
        assert OmegaConf.is_missing(cfg.data, "root")
        cfg.data.root = str(tmp_path)
    else:
        assert cfg.data.root == f"{tmp_path}/synthetic" and cfg.data.generate.scenes > 0
    dm = instantiate(cfg.data)
    assert isinstance(dm, PairDataModule) and (dm.seed, dm.val_seed) == (1, 2)


def test_skip_mode_with_every_validation_scene_dropped_says_so(toy_root):
    (toy_root / "validation_list.txt").write_text("toy_002\n")
    (toy_root / "toy_002" / "cams" / "pair.txt").write_text("garbage\n")
    dm = PairDataModule(root=toy_root, height=H, width=W, num_workers=0, on_bad_data="skip")
    with pytest.raises(FileNotFoundError, match=r"no validation pairs are left.*toy_002: cams/pair.txt"):
        dm.setup("fit")


def test_a_file_given_as_data_root_is_named_as_such(tmp_path):
    file = tmp_path / "scenes.txt"
    file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        PairDataModule(root=file, num_workers=0).setup("fit")
    with pytest.raises(NotADirectoryError, match="is a file"):
        PairDataModule(kind="homography", root=file, num_workers=0).setup("fit")


def test_each_kind_owns_its_settings(tmp_path):
    """Kind-specific settings live in the source of that kind; one for the other kind is an error."""
    from loftr_kd.data.datamodule import PhotoSource, SceneSource

    scenes = PairDataModule(kind="blendedmvs", root=tmp_path, train_scenes=["a"], val_root=None)
    assert isinstance(scenes.source, SceneSource) and scenes.source.train_scenes == ("a",)
    photos = PairDataModule(kind="homography", root=tmp_path, homography={"max_zoom": 2.0}, generate=None)
    assert isinstance(photos.source, PhotoSource) and photos.source.homography == {"max_zoom": 2.0}
    with pytest.raises(ValueError, match=r"\['val_root'\] apply to another kind of data"):
        PairDataModule(kind="blendedmvs", root=tmp_path, val_root=tmp_path)
    with pytest.raises(ValueError, match=r"\['train_scenes'\] apply to another kind"):
        PairDataModule(kind="homography", root=tmp_path, train_scenes=["a"])
    with pytest.raises(ValueError, match="unknown data setting"):
        PairDataModule(kind="homography", root=tmp_path, max_zoom=2.0)


def test_ddp_ranks_validate_disjoint_shares_of_the_fixed_set(toy_root):
    """Under DDP each rank gets its own pairs: together exactly the validation set, none twice."""
    from types import SimpleNamespace

    dm = PairDataModule(
        kind="blendedmvs", root=toy_root, height=H, width=W, batch_size=2, num_workers=0, val_pairs=5
    )
    dm.setup("validate")
    assert dm.val_sampler() is None  # one process: the whole set, in order
    everything = [pid for b in dm.val_dataloader() for pid in b["pair_id"]]
    shares = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shares.append([pid for b in dm.val_dataloader() for pid in b["pair_id"]])
    assert [len(s) for s in shares] == [3, 2]  # uneven shares; no pair repeated to even them out
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(everything) and len(set(everything)) == 5
    dm.trainer = SimpleNamespace(world_size=6, global_rank=0)
    with pytest.raises(ValueError, match="every rank needs at least one.*val_pairs >= 6"):
        dm.val_dataloader()
