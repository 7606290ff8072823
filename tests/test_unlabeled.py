"""Pairs without geometry: candidate pairs from sequences and photos, pseudo ground truth from a teacher's
matches (against the exact ground truth of a known homography), the label cache's key, and the mixture of
sources by weight."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.data.labels import LabelCache, LabelledPairDataset, VerifySettings, verify_matches
from loftr_kd.data.mixed import MixedBatchSampler
from loftr_kd.data.unlabeled import (
    FrameRef,
    PairSpec,
    UnlabeledSettings,
    candidate_pairs,
    discover,
    video_frames,
)
from loftr_kd.supervision import coarse_ground_truth

H, W = 240, 320
WARP = torch.tensor([[1.1, 0.15, -20.0], [-0.1, 1.05, 10.0], [1e-4, 5e-5, 1.0]])


def _matches(count: int, noise: float, outliers: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` matches of the known homography, with pixel noise and a share of random outliers."""
    g = torch.Generator().manual_seed(seed)
    k0 = torch.rand(1, count, 2, generator=g) * torch.tensor([W - 1, H - 1])
    h = torch.cat([k0, torch.ones(1, count, 1)], -1) @ WARP.T
    k1 = h[..., :2] / h[..., 2:] + noise * torch.randn(1, count, 2, generator=g)
    bad = torch.rand(1, count, generator=g) < outliers
    k1 = torch.where(bad[..., None], torch.rand(1, count, 2, generator=g) * torch.tensor([W - 1, H - 1]), k1)
    return k0, k1


@pytest.mark.parametrize(("count", "noise", "outliers"), [(1000, 0.3, 0.0), (500, 0.5, 0.1)])
def test_pseudo_ground_truth_agrees_with_the_exact_homography(count, noise, outliers):
    images = torch.rand(1, 1, H, W)
    exact = coarse_ground_truth({"image0": images, "image1": images, "H_0to1": WARP[None]}, 16)
    k0, k1 = _matches(count, noise, outliers)
    inside = (k1 >= 0).all(-1) & (k1[..., 0] < W) & (k1[..., 1] < H)
    batch = {
        "image0": images,
        "image1": images,
        "matches0": k0,
        "matches1": k1,
        "match_confidence": torch.ones(1, count),
        "match_valid": inside,
    }
    pseudo = coarse_ground_truth(batch, 16)
    labelled = pseudo.match_ids >= 0
    both = labelled & (exact.match_ids >= 0)
    assert labelled.sum() >= 0.4 * (exact.match_ids >= 0).sum()  # cells inside the matches get a label
    assert (pseudo.match_ids[both] == exact.match_ids[both]).float().mean() > 0.95  # cell borders may flip
    assert (labelled & (exact.match_ids < 0)).sum() <= 3  # almost never a cell the truth has no match for
    error = (pseudo.points1 - exact.points1).norm(dim=-1)[labelled & exact.valid]
    assert error.median() < max(2 * noise, 0.5) and error.quantile(0.9) < 1.0  # sub-pixel positions


def test_cells_without_nearby_matches_get_no_label():
    images = torch.rand(1, 1, H, W)
    k0, k1 = _matches(400, 0.2, 0.0)
    left = k0[..., 0] < W / 2  # matches only in the left half of image0
    batch = {
        "image0": images,
        "image1": images,
        "matches0": k0,
        "matches1": k1,
        "match_confidence": torch.ones(1, 400),
        "match_valid": left,
    }
    pseudo = coarse_ground_truth(batch, 16)
    columns = torch.arange(pseudo.match_ids.shape[1]) % (W // 16)
    assert (pseudo.match_ids[0, columns >= W // 16 // 2 + 2] < 0).all()


def test_verify_keeps_a_homography_and_drops_noise():
    k0, k1 = _matches(300, 0.3, 0.3, seed=3)
    inliers = verify_matches(k0[0].numpy(), k1[0].numpy(), VerifySettings(model="homography", threshold=2.0))
    h = np.c_[k0[0].numpy(), np.ones(300)] @ WARP.numpy().T
    truth = np.linalg.norm(h[:, :2] / h[:, 2:] - k1[0].numpy(), axis=1) < 2.0
    assert (inliers == truth).mean() > 0.95
    assert not verify_matches(k0[0, :5].numpy(), k1[0, :5].numpy(), VerifySettings()).any()


def test_a_sparse_teacher_labelling_online_is_checked_as_the_label_cache_is():
    """Sparse matches made online became pseudo ground truth without the RANSAC check the cache applies."""
    from loftr_kd.lightning_module import verified
    from loftr_kd.teachers.base import TeacherMatches

    k0, k1 = _matches(300, 0.3, 0.3, seed=3)
    few0, few1 = _matches(300, 0.3, 0.95, seed=4)  # about 15 consistent matches: under min_inliers
    slots = torch.ones(2, 300, dtype=torch.bool)
    slots[0, 250:] = False  # padding stays invalid
    matches = TeacherMatches(torch.cat([k0, few0]), torch.cat([k1, few1]), torch.ones(2, 300), slots)
    settings = VerifySettings(model="homography", threshold=2.0)
    checked = verified(matches, settings)
    expected = verify_matches(k0[0, :250].numpy(), k1[0, :250].numpy(), settings)
    assert checked.valid[0, :250].numpy().tolist() == expected.tolist() and 100 < expected.sum() < 250
    assert not checked.valid[0, 250:].any() and not checked.valid[1].any()
    assert torch.equal(checked.keypoints1, matches.keypoints1)  # only the mask changes


def test_discovery_tells_sequences_from_photos_and_draws_gapped_pairs(tmp_path):
    photo = cv2.resize(skdata.coffee(), (W, H))
    (tmp_path / "seq").mkdir()
    for i in range(10):
        cv2.imwrite(str(tmp_path / "seq" / f"frame{i:04d}.png"), np.roll(photo, 3 * i, axis=1))
    (tmp_path / "photos").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(tmp_path / "photos" / name), photo)
    sequences, groups = discover(tmp_path, min_sequence=8)
    assert [len(s) for s in sequences] == [10] and [len(g) for g in groups] == [3]
    assert sequences[0][0].path.endswith("frame0000.png") and sequences[0][-1].path.endswith("frame0009.png")
    pairs = candidate_pairs(sequences, groups, UnlabeledSettings(gaps=(2, 4)))
    gaps = sorted(p.gap for p in pairs if p.kind == "sequence")
    assert gaps == [2] * 8 + [4] * 6 and sum(p.kind == "photos" for p in pairs) == 3
    capped = candidate_pairs(sequences, groups, UnlabeledSettings(gaps=(2, 4), max_pairs=5, seed=1))
    assert len(capped) == 5 and capped == candidate_pairs(
        sequences, groups, UnlabeledSettings(gaps=(2, 4), max_pairs=5, seed=1)
    )
    with pytest.raises(FileNotFoundError, match="no images"):
        discover(tmp_path / "seq" / "none") if False else discover(_empty(tmp_path))


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    return folder


def test_video_frames_are_decoded_once(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for i in range(6):
        writer.write(np.roll(cv2.resize(skdata.astronaut(), (W, H)), 4 * i, axis=1))
    writer.release()
    frames = video_frames(path, tmp_path / "frames")
    assert len(frames) == 6 and all(FrameRef(f.path).path == f.path for f in frames)
    stamp = (tmp_path / "frames" / "frames.txt").stat().st_mtime_ns
    assert video_frames(path, tmp_path / "frames") == frames
    assert (tmp_path / "frames" / "frames.txt").stat().st_mtime_ns == stamp


def test_large_videos_are_decoded_shrunk_and_small_ones_keep_their_folder(tmp_path):
    """Videos were decoded at full resolution: a minute of 4K is about 10 GB of PNG frames."""
    from loftr_kd.data.labels import pairs_and_cache
    from loftr_kd.data.unlabeled import video_frames_folder

    def clip(path, size):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
        for i in range(8):
            writer.write(np.roll(cv2.resize(skdata.astronaut(), size), 4 * i, axis=1))
        writer.release()
        return path

    root = tmp_path / "videos"
    root.mkdir()
    large, small = clip(root / "large.avi", (800, 450)), clip(root / "small.avi", (W, H))
    frames = video_frames(large, tmp_path / "shrunk", max_side=400)
    assert cv2.imread(frames[0].path, cv2.IMREAD_UNCHANGED).shape == (225, 400)
    full = video_frames(large, tmp_path / "full")
    assert cv2.imread(full[0].path, cv2.IMREAD_UNCHANGED).shape == (450, 800)
    # the folder names the limit only for a video it shrinks: a small video keeps its frames and labels
    import hashlib

    from loftr_kd.files import sha256_file

    before = hashlib.sha256(f"{small.resolve()}:{sha256_file(small)}".encode()).hexdigest()[:16]
    assert video_frames_folder(small, tmp_path, 400).name == before
    assert video_frames_folder(large, tmp_path, 400) != video_frames_folder(large, tmp_path, None)
    # through the data source: frames at most video_max_side, and never below the training size
    teacher = torch.nn.Identity()
    settings = {"gaps": [2], "min_sequence": 4, "video_max_side": 640}
    pairs, *_ = pairs_and_cache(root, tmp_path / "labels", settings, {}, (H, W), teacher)
    sides = {cv2.imread(p.image0.path, cv2.IMREAD_UNCHANGED).shape for p in pairs}
    assert sides == {(360, 640), (H, W)}
    with pytest.raises(ValueError, match=r"video_max_side=200 is below the training size 320x240"):
        pairs_and_cache(root, tmp_path / "labels", {**settings, "video_max_side": 200}, {}, (H, W), teacher)
    with pytest.raises(ValueError, match=r"data.pairs.video_max_side=8: expected >= 64 pixels"):
        UnlabeledSettings(video_max_side=8)


def test_a_truncated_video_is_said_and_tiny_frames_are_refused(tmp_path, caplog):
    """A video cut short was labelled without a word (the demo says so); an 8x8 video was upscaled."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for i in range(12):
        writer.write(np.roll(cv2.resize(skdata.astronaut(), (W, H)), 4 * i, axis=1))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])  # the header still announces 12 frames
    caplog.set_level("WARNING")
    frames = video_frames(path, tmp_path / "frames")
    assert 0 < len(frames) < 12
    assert f"the video ended after {len(frames)} of the 12 frames its container announces" in caplog.text
    tiny = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (16, 16))
    for _ in range(3):
        writer.write(np.full((16, 16, 3), 128, np.uint8))
    writer.release()
    with pytest.raises(ValueError, match=r"tiny.avi: frames of 16x16 pixels, too small to label"):
        video_frames(tiny, tmp_path / "tiny_frames")


def test_a_complete_cache_without_a_kept_pair_is_an_error(tmp_path):
    """'0 of 4 pairs kept' ended labelling with exit 0 and left training an empty data set."""
    cache = LabelCache(tmp_path / "labels", {"teacher": "x"})
    cache.start()
    cache.finish({"pairs": 4, "kept": 0, "dropped": 4})
    with pytest.raises(ValueError, match=r"none of the 4 pairs kept enough checked matches"):
        cache.check_some_kept()
    cache.finish({"pairs": 4, "kept": 1, "dropped": 3})
    cache.check_some_kept()


def test_the_cache_key_changes_with_any_input_and_shards_resume(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), cv2.resize(skdata.camera(), (W, H)))
    other = tmp_path / "b.png"
    cv2.imwrite(str(other), cv2.resize(skdata.camera(), (W, H))[:, ::-1])
    pairs = [PairSpec(FrameRef(str(image)), FrameRef(str(other)), "photos")]
    teacher = {"class": "T", "weights": {"w.pth": "abc"}}
    cache = LabelCache.for_pairs(tmp_path / "labels", pairs, teacher, (H, W), VerifySettings())
    same = LabelCache.for_pairs(tmp_path / "labels", pairs, teacher, (H, W), VerifySettings())
    assert cache.folder == same.folder
    variants = [
        LabelCache.for_pairs(
            tmp_path / "labels", pairs, {**teacher, "weights": {"w.pth": "abd"}}, (H, W), VerifySettings()
        ),
        LabelCache.for_pairs(tmp_path / "labels", pairs, teacher, (H, 2 * W), VerifySettings()),
        LabelCache.for_pairs(tmp_path / "labels", pairs, teacher, (H, W), VerifySettings(min_inliers=50)),
    ]
    assert len({cache.folder, *(v.folder for v in variants)}) == 4
    cv2.imwrite(str(image), cv2.resize(skdata.camera(), (W, H))[::-1])  # the image changed
    import os

    os.utime(image, (1, 1))
    assert (
        LabelCache.for_pairs(tmp_path / "labels", pairs, teacher, (H, W), VerifySettings()).folder
        != cache.folder
    )
    # another picture of the same size and time stamp (cp -p, rsync -a, tar): a new cache all the same
    bmp = tmp_path / "c.bmp"
    cv2.imwrite(str(bmp), cv2.resize(skdata.camera(), (W, H)))
    on_bmp = [PairSpec(FrameRef(str(bmp)), FrameRef(str(other)), "photos")]
    before = LabelCache.for_pairs(tmp_path / "labels", on_bmp, teacher, (H, W), VerifySettings()).folder
    stamp = bmp.stat()
    cv2.imwrite(str(bmp), cv2.resize(skdata.camera(), (W, H))[:, ::-1])
    os.utime(bmp, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert bmp.stat().st_size == stamp.st_size and bmp.stat().st_mtime_ns == stamp.st_mtime_ns
    assert (
        LabelCache.for_pairs(tmp_path / "labels", on_bmp, teacher, (H, W), VerifySettings()).folder != before
    )
    # the same images spelt relative to another working folder: the same cache
    monkeypatch.chdir(tmp_path)
    relative = [PairSpec(FrameRef("b.png"), FrameRef("a.png"), "photos")]
    absolute = [PairSpec(FrameRef(str(other)), FrameRef(str(image)), "photos")]
    spelt = {
        LabelCache.for_pairs("labels", ps, teacher, (H, W), VerifySettings(), data_root=root).folder.name
        for ps, root in ((relative, "."), (absolute, tmp_path), (absolute, "."))
    }
    assert len(spelt) == 1
    # shards: written atomically, read back, the done set resumes labelling; a broken shard is redone
    cache.start()
    k = np.random.default_rng(0).random((40, 2)).astype(np.float32) * 100
    cache.write_shard(
        [{"index": 0, "keypoints0": k, "keypoints1": k + 1, "confidence": np.ones(40), "candidates": 50}]
    )
    (cache.folder / "shard_9999999_1.npz").write_bytes(b"cut")
    assert cache.done() == {0} and json.loads((cache.folder / "labels.json").read_text())["size"] == [H, W]
    dataset = LabelledPairDataset(pairs, cache, min_inliers=30, max_matches=64, swap=False)
    item = dataset[0]
    assert item["matches0"].shape == (64, 2) and int(item["match_valid"].sum()) == 40
    assert torch.allclose(item["matches1"][:40] - item["matches0"][:40], torch.ones(40, 2))
    with pytest.raises(ValueError, match="checked matches"):
        LabelledPairDataset(pairs, cache, min_inliers=41)


def test_mixed_batches_come_whole_from_one_source_by_weight():
    sampler = MixedBatchSampler([100, 50, 10], [2.0, 1.0, 1.0], batch_size=4, batches=400, seed=3)
    batches = sampler.epoch_batches(0)
    sources = [np.searchsorted([100, 150, 160], max(b), side="right") for b in batches]
    assert all(
        np.searchsorted([100, 150, 160], i, side="right") == s for b, s in zip(batches, sources) for i in b
    )
    share = np.bincount(sources, minlength=3) / len(batches)
    assert abs(share[0] - 0.5) < 0.07 and abs(share[1] - 0.25) < 0.07 and abs(share[2] - 0.25) < 0.07
    assert batches == MixedBatchSampler([100, 50, 10], [2.0, 1.0, 1.0], 4, 400, seed=3).epoch_batches(0)
    assert batches != sampler.epoch_batches(1)
    ranks = [
        list(MixedBatchSampler([100, 50, 10], [2, 1, 1], 4, 400, 3, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert ranks[0] + ranks[1] and sorted(map(tuple, ranks[0] + ranks[1])) == sorted(map(tuple, batches))
    resumed = MixedBatchSampler([100, 50, 10], [2, 1, 1], 4, 400, 3)
    resumed.resume_within_epoch(0, 10)
    assert list(resumed) == batches[10:]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_trainer_draws_new_mixed_batches_every_epoch(workers):
    """Lightning sets the epoch on a loader's batch_sampler.sampler, never on the batch sampler: every
    data=mixed epoch trained on epoch 0's batches (the shipped default's stage 3 included)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: dict[int, list[list[int]]] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).append(batch[0].long().tolist())
            return self.layer(batch[0][:, None].float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    sampler = MixedBatchSampler([40, 20], [1.0, 1.0], batch_size=4, batches=6, seed=3)
    loader = DataLoader(
        TensorDataset(torch.arange(60)),
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    model = Recorder()
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        accelerator="cpu",
    )
    trainer.fit(model, loader)
    assert [model.seen[e] for e in range(3)] == [sampler.epoch_batches(e) for e in range(3)]
    assert model.seen[0] != model.seen[1] != model.seen[2]


# ---------------------------------------------------------------------------- labelling with a real teacher
def _panning_sequence(folder, frames: int = 10, step: int = 5):
    """A real photo panning ``step`` px per frame: frame i is the photo shifted by ``i * step`` px (not a
    multiple of half a cell: a shift of exactly 1.5 cells puts every centre on a cell border, where no
    cell is a mutual match, with exact ground truth too)."""
    photo = cv2.resize(skdata.astronaut()[:, :, ::-1], (W + step * frames, H), interpolation=cv2.INTER_AREA)
    folder.mkdir(parents=True)
    for i in range(frames):
        cv2.imwrite(
            str(folder / f"frame{i:04d}.png"), np.ascontiguousarray(photo[:, step * i : step * i + W])
        )
    return step


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A sequence labelled by XFeat + LighterGlue through the data module (Lightning's predict loop)."""
    pytest.importorskip("kornia")
    from functools import partial

    from loftr_kd.data.datamodule import PairDataModule
    from loftr_kd.teachers import build_lightglue_teacher

    root = tmp_path_factory.mktemp("unlabeled")
    step = _panning_sequence(root / "videos" / "pan")
    module = PairDataModule(
        kind="unlabeled",
        root=root / "videos",
        height=H,
        width=W,
        batch_size=2,
        num_workers=0,
        val_pairs=2,
        labeller=partial(build_lightglue_teacher, features="xfeat", max_keypoints=1024),
        pairs={"gaps": [2, 4], "min_sequence": 8},
        verify={"model": "homography", "threshold": 2.0, "min_inliers": 20},
        labels_dir=root / "labels",
        max_matches=512,
        val_fraction=0.2,
    )
    module.prepare_data()
    module.setup("fit")
    return module, step


def test_labelling_checks_caches_and_resumes(labelled, caplog):
    module, step = labelled
    _, cache, _, _ = module._label_cache()
    assert cache.complete and cache.folder.parent == module.source.labels_dir
    record = json.loads((cache.folder / "labels.json").read_text())
    assert record["teacher"]["name"] == "XFeat + LighterGlue" and len(record["teacher"]["weights"]) == 2
    labels = cache.load()
    assert len(labels) == 14  # 8 pairs 2 frames apart, 6 pairs 4 apart
    for k0, k1, confidence, candidates in labels.values():
        assert len(k0) >= 20 and candidates >= len(k0) and (confidence > 0).all()
        shift = k0[:, 0] - k1[:, 0]  # image1 is further along the pan: points move left
        assert np.median(np.abs(k1[:, 1] - k0[:, 1])) < 1.0 and np.median(shift) > step
    # a shard lost: labelling again does only its pairs, and the cache is the same folder
    shards = cache.shards()
    with np.load(shards[0]) as lost:
        redo = len(lost["index"])
    (cache.folder / "complete.json").unlink()
    shards[0].unlink()
    caplog.set_level("INFO")
    module.label()
    assert cache.complete and len(cache.load()) == 14
    assert f"{14 - redo} of 14 pairs already labelled" in caplog.text
    caplog.clear()
    module.label()  # complete: one line says so (a second loftr-kd-label printed nothing)
    assert f"Labels: all 14 pairs already labelled in {cache.folder} (" in caplog.text


def test_a_changed_frame_labels_only_the_pairs_it_is_in(labelled, tmp_path):
    """The cache is keyed by every image, so one changed frame used to label all 14 pairs again; the pairs of
    unchanged images now come from the earlier cache, bit for bit, and only the frame's own are labelled."""
    import shutil

    from loftr_kd.data.labels import label_pairs, pairs_and_cache

    module, _ = labelled
    _, cache, teacher, _ = module._label_cache()
    root, labels_dir = tmp_path / "videos", tmp_path / "labels"
    shutil.copytree(module.root, root)
    shutil.copytree(cache.folder.parent, labels_dir)
    settings = (module.source.pairs, module.source.verify, (H, W), teacher)
    pairs, copied, _, _ = pairs_and_cache(root, labels_dir, *settings)
    assert copied.folder.name == cache.folder.name and copied.complete  # names relative to the data root
    frame = root / "pan" / "frame0009.png"
    cv2.imwrite(str(frame), (cv2.imread(str(frame)) * 0.9).astype(np.uint8))
    pairs, changed, model, verify = pairs_and_cache(root, labels_dir, *settings)
    assert changed.folder != copied.folder and not changed.complete
    lines: list[str] = []
    label_pairs(changed, pairs, model, verify, batch_size=2, say=lines.append)
    touching = [i for i, pair in enumerate(pairs) if "frame0009" in pair.image0.path + pair.image1.path]
    assert len(touching) == 2  # (7, 9) two frames apart, (5, 9) four apart
    assert (
        f"Labels: 12 pairs of unchanged images taken from the earlier cache {copied.folder.name}" in lines[0]
    )
    assert "12 of 14 pairs already labelled" in lines[1] and lines[1].endswith("labelling 2.")
    old, new = copied.load(), changed.load()
    assert changed.complete and sorted(new) == list(range(14))
    for i in set(range(14)) - set(touching):
        for before, after in zip(old[i][:3], new[i][:3], strict=True):
            np.testing.assert_array_equal(before, after)
    # a cache of another check shares no label
    other = pairs_and_cache(
        root, labels_dir, module.source.pairs, {**module.source.verify, "threshold": 3.0}, (H, W), teacher
    )[1]
    assert other.reuse_siblings() == {}


def test_labelled_pairs_give_pseudo_ground_truth_of_the_pan(labelled):
    """Every pair is a pure horizontal pan (either way round after the random swap): the pseudo ground
    truth of each cell centre is that shift, to a fraction of a pixel."""
    module, step = labelled
    assert len(module.train_dataset) >= 8 and len(module.val_dataset) >= 1
    cells = torch.arange((H // 16) * (W // 16))
    centres = torch.stack(
        [(cells % (W // 16)).float() * 16 + 7.5, (cells // (W // 16)).float() * 16 + 7.5], -1
    )
    errors = []
    for dataset in (module.train_dataset, module.val_dataset):
        for index in range(len(dataset)):
            item = dataset[index]
            gt = coarse_ground_truth(torch.utils.data.default_collate([item]), 16)
            valid = item["match_valid"]
            shift = (item["matches1"][valid] - item["matches0"][valid]).median(0).values  # the pan's
            assert abs(float(shift[0])) >= 2 * step - 1 and abs(float(shift[1])) < 1
            errors.append((gt.points1[0] - centres - shift).norm(dim=-1)[gt.valid[0]])
            assert (gt.match_ids[0] >= 0).sum() >= 20
    errors = torch.cat(errors)
    assert errors.median() < 0.5 and errors.quantile(0.9) < 1.0 and errors.max() < 3.0


def test_verification_of_a_degenerate_match_set_finds_no_inliers():
    """MAGSAC asserts on matches along one line or on one point: the pair has no inliers, labelling goes on."""
    import numpy as np

    from loftr_kd.data.labels import VerifySettings, verify_matches

    line = np.stack([np.linspace(0, 100, 40)] * 2, axis=1).astype(np.float32)
    point = np.zeros((40, 2), np.float32)
    for model in ("fundamental", "homography"):
        for k0 in (line, point):
            assert not verify_matches(k0, k0 + 1, VerifySettings(model=model)).any()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "status", "how"), [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")]
)
def test_a_signal_stops_labelling_and_the_same_command_resumes(tmp_path, signum, status, how):
    """Lightning's predict loop only records SIGTERM: loftr-kd-label stops after the batch it is writing,
    exits 143 with one line, keeps the labels so far, and the same command labels the rest. Ctrl-C ended with
    Lightning's exit 1 and its own line only: 130 and the same line now."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("kornia")
    import re

    _panning_sequence(tmp_path / "videos" / "pan", frames=10)
    labels = tmp_path / "labels"

    def command(run: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "loftr_kd.cli.label",
            f"data.root={tmp_path / 'videos'}",
            f"data.labels_dir={labels}",
            f"data.height={H}",
            f"data.width={W}",
            "data.labeller.features=xfeat",
            "+data.labeller.max_keypoints=512",
            "data.label_batch_size=1",
            "data.pairs.gaps=[1,2]",
            "data.verify.model=homography",
            f"hydra.run.dir={tmp_path / run}",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(  # a background job's children inherit an ignored SIGINT: give the default back
        command("first"),
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not list(labels.glob("*/shard_*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signum))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == status, stderr[-2000:]
    assert f"loftr-kd-label: stopped by {how}; the labels written so far are kept" in stderr
    assert "Traceback" not in stderr
    (cache,) = labels.iterdir()
    written = len(list(cache.glob("shard_*.npz")))
    assert written >= 1 and not (cache / "complete.json").exists()
    again = subprocess.run(command("second"), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = re.search(r"Labels: (\d+) of (\d+) pairs already labelled", again.stdout + again.stderr)
    assert resumed and int(resumed[1]) == written < int(resumed[2]), again.stderr[-2000:]
    assert (cache / "complete.json").exists()


def test_fewer_pairs_than_one_over_val_fraction_still_hold_one_out(labelled):
    """16 labelled pairs at val_fraction=0.05 held none out, and validation silently ran on training pairs."""
    import copy
    import dataclasses

    module, _ = labelled
    few = copy.copy(module)
    few.source = dataclasses.replace(module.source, val_fraction=0.05)  # every 20th pair, of 14
    few._setup_unlabeled()
    train_items, val_items = few.train_dataset.items, few.val_dataset.items
    assert len(val_items) == 1 and len(train_items) == 13
    assert not {id(item) for item in val_items} & {id(item) for item in train_items}
    none = copy.copy(module)
    none.source = dataclasses.replace(module.source, val_fraction=0.0)
    with pytest.warns(UserWarning, match="validation runs on training pairs \\(data.val_fraction=0\\)"):
        none._setup_unlabeled()


# ---------------------------------------------------------------------------- what discovery finds and refuses
def _photo(path, seed: int = 0, size: tuple[int, int] = (W, H)) -> None:
    """A real photo (rolled by ``seed``) written at ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.roll(cv2.resize(skdata.coffee(), size), 7 * seed, axis=1))


def test_symlink_loops_are_walked_once_and_said(tmp_path, caplog):
    """`self -> .` listed every image 41 times (41 photo groups); two loop links never finished."""
    root = tmp_path / "twoloops"
    for k, name in enumerate(("a.png", "b.png")):
        _photo(root / name, k)
    (root / "self").symlink_to(".")
    (root / "again").symlink_to(".")
    (root / "nested").mkdir()
    (root / "nested" / "up").symlink_to("..")
    for k, name in enumerate(("c.png", "d.png")):  # a link to a folder elsewhere is still followed
        _photo(tmp_path / "elsewhere" / name, k)
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    caplog.set_level("INFO")
    found = []
    walk = threading.Thread(target=lambda: found.append(discover(root)), daemon=True)
    walk.start()
    walk.join(timeout=60)  # before, two loop links walked about 2**40 paths
    assert found, "discover() did not finish within 60 s"
    sequences, groups = found[0]
    assert sequences == []
    assert [[Path(f.path).relative_to(root).as_posix() for f in g] for g in groups] == [
        ["a.png", "b.png"],
        ["linked/c.png", "linked/d.png"],
    ]
    (record,) = [r for r in caplog.records if "lead back inside it" in r.getMessage()]
    assert record.levelname == "WARNING"
    for link in ("self", "again", "nested/up"):
        assert str(root / link) in record.getMessage()


def test_a_folder_inside_the_root_is_listed_under_its_own_path_whatever_links_to_it(tmp_path, caplog):
    """A link near the top (alink -> z/deep) was walked first, and the real folder was skipped as a "linked
    folder", its images keyed under the link's path."""
    root = tmp_path / "walk"
    for k, name in enumerate(("a.png", "b.png")):
        _photo(root / "z" / "deep" / name, k)
    (root / "alink").symlink_to(root / "z" / "deep")
    for k, name in enumerate(("c.png", "d.png")):  # two links to one folder outside: listed once
        _photo(tmp_path / "outside" / name, k)
    (root / "l1").symlink_to(tmp_path / "outside")
    (root / "l2").symlink_to(tmp_path / "outside")
    caplog.set_level("INFO")
    _, groups = discover(root)
    assert [[Path(f.path).relative_to(root).as_posix() for f in g] for g in groups] == [
        ["l1/c.png", "l1/d.png"],
        ["z/deep/a.png", "z/deep/b.png"],
    ]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(root / "alink") in messages and str(root / "l2") in messages
    assert str(root / "z") not in messages  # the real folder is not called a link, nor skipped


def test_label_caches_inside_the_data_folder_are_not_data(tmp_path):
    """With labels_dir inside data.root the decoded frames became a second sequence on the next run (12
    pairs instead of 6, and a new cache); a copy of a label folder under another name did the same."""
    import shutil

    from loftr_kd.data.labels import pairs_and_cache

    root = tmp_path / "data"
    root.mkdir()
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for i in range(10):
        writer.write(np.roll(cv2.resize(skdata.astronaut(), (W, H)), 4 * i, axis=1))
    writer.release()

    def find(labels):
        return pairs_and_cache(root, labels, {"gaps": [2]}, {}, (H, W), torch.nn.Identity())[:2]

    pairs, cache = find(root / "labels")
    assert len(pairs) == 8 and (root / "labels" / "frames").is_dir()
    cache.start()
    again, same = find(root / "labels")
    assert again == pairs and same.folder == cache.folder
    shutil.copytree(root / "labels", root / "old_labels")  # decoded frames, under any name
    none = np.zeros((0, 2))
    cache.write_shard(
        [{"index": 0, "keypoints0": none, "keypoints1": none, "confidence": none[:, 0], "candidates": 0}]
    )
    shutil.copytree(cache.folder, root / "old_cache")  # a label cache with a shard
    for name in ("stray0.png", "stray1.png"):  # would be a photo group of their own
        _photo(root / "old_cache" / name, len(name))
    again, same = find(root / "labels")
    assert again == pairs and same.folder == cache.folder
    sequences, groups = discover(root, exclude=[root / "labels"])
    assert [s[0].path for s in sequences] == [str(root / "clip.avi")] and groups == []


def test_bad_images_and_videos_are_found_before_the_teacher(tmp_path, caplog):
    """A truncated image or an empty video stopped labelling when its batch came (hours in), and
    data.on_bad_data=skip was accepted and ignored: now every file is checked when it is found."""
    from loftr_kd.data.datamodule import PairDataModule

    root = tmp_path / "photos"
    for k, name in enumerate(("a.png", "b.png", "cut.png")):
        _photo(root / name, k)
    data = (root / "cut.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    _photo(root / "tiny.png", size=(16, 12))
    empty = cv2.VideoWriter(str(root / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    empty.release()
    (root / "garbage.mp4").write_bytes(b"not a video at all" * 10)
    bad = ["cut.png", "tiny.png", "empty.avi", "garbage.mp4"]

    built = []  # the teacher is never built for a folder with a bad file

    def labeller():
        built.append(True)
        return torch.nn.Identity()

    def module(on_bad_data):
        return PairDataModule(
            kind="unlabeled",
            root=root,
            height=H,
            width=W,
            on_bad_data=on_bad_data,
            labeller=labeller,
            labels_dir=tmp_path / "labels",
        )

    with pytest.raises(
        ValueError, match=r"3 more bad files .*\(data.on_bad_data=skip leaves such files out\)"
    ):
        module("raise")._label_cache()
    assert built == []
    with pytest.raises(ValueError, match=r"cut.png: PNG truncated \(no IEND chunk\)"):
        discover(_only(root, "cut.png", tmp_path))
    caplog.set_level("WARNING")
    pairs, cache, _, _ = module("skip")._label_cache()
    assert [(Path(p.image0.path).name, Path(p.image1.path).name) for p in pairs] == [("a.png", "b.png")]
    (record,) = [r for r in caplog.records if "bad files" in r.getMessage()]
    assert "left out 4 bad files (data.on_bad_data=skip)" in record.getMessage()
    assert all(str(root / name) in record.getMessage() for name in bad)


def _only(root, name, tmp_path):
    """A folder holding the good photos and one bad file of ``root``."""
    import shutil

    folder = tmp_path / f"only_{name}"
    folder.mkdir()
    for keep in ("a.png", "b.png", name):
        shutil.copy(root / keep, folder / keep)
    return folder


def test_numbered_photos_taken_as_a_sequence_are_said(tmp_path, caplog):
    """IMG_0001 ... IMG_0009 became a sequence without a word, and adjacent shots were never paired."""
    folder = tmp_path / "phone"
    for i in range(1, 10):
        _photo(folder / f"IMG_{i:04d}.png", i)
    caplog.set_level("INFO")
    sequences, groups = discover(tmp_path, min_sequence=8)
    assert [len(s) for s in sequences] == [9] and groups == []
    assert f"9 numbered images in {folder} taken as a sequence (data.pairs.min_sequence=8" in caplog.text
    caplog.clear()
    sequences, groups = discover(tmp_path, min_sequence=10)  # the documented way out: photos
    assert sequences == [] and [len(g) for g in groups] == [9] and "taken as a sequence" not in caplog.text


def test_a_complete_cache_is_said_and_xfeat_on_photos_is_warned(tmp_path, caplog):
    """A second loftr-kd-label printed nothing; XFeat's checked matches keep unrelated photos as pairs."""
    from loftr_kd.data.labels import label_pairs

    for name in ("a.png", "b.png", "c.png"):
        _photo(tmp_path / name, len(name))
    photos = [PairSpec(FrameRef(str(tmp_path / "a.png")), FrameRef(str(tmp_path / "b.png")), "photos")]
    frames = [PairSpec(FrameRef(str(tmp_path / "a.png")), FrameRef(str(tmp_path / "c.png")), "sequence", 2)]
    xfeat = {"name": "XFeat + LighterGlue", "settings": {"features": "xfeat"}, "weights": {}}
    aliked = {"name": "ALIKED + LightGlue", "settings": {"features": "aliked"}, "weights": {}}

    def complete(pairs, teacher):
        cache = LabelCache.for_pairs(tmp_path / "labels", pairs, teacher, (H, W), VerifySettings())
        cache.start()
        cache.finish({"pairs": len(pairs), "kept": 1, "dropped": 0})
        return cache

    def warnings_of(pairs, teacher):
        caplog.clear()
        label_pairs(complete(pairs, teacher), pairs, torch.nn.Identity(), VerifySettings(), say=lines.append)
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    caplog.set_level("WARNING")
    lines = []
    (warning,) = warnings_of(photos, xfeat)
    assert warning.startswith("data.labeller.features=xfeat labels 1 pairs of unordered photos")
    cache = complete(photos, xfeat)
    assert lines == [f"Labels: all 1 pairs already labelled in {cache.folder} (1 kept)."]
    assert warnings_of(photos, aliked) == [] and warnings_of(frames, xfeat) == []


_THREADS_SEEN: list[int] = []


def _threads_recording_teacher(**options):
    """The real XFeat + LighterGlue teacher, noting torch's thread count at each call."""
    from loftr_kd.teachers import build_lightglue_teacher

    teacher = build_lightglue_teacher(**options, max_keypoints=512)
    teacher.register_forward_pre_hook(lambda module, args: _THREADS_SEEN.append(torch.get_num_threads()))
    return teacher


def test_labelling_runs_on_the_configured_threads(tmp_path):
    """loftr-kd-label had no thread policy: torch's default threads made it 13x slower on a loaded
    2-core machine. conf/label.yaml's `threads: 1` holds while the teacher runs and is restored after."""
    pytest.importorskip("kornia")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from loftr_kd.cli.label import run
    from loftr_kd.config import CONFIG_DIR

    _panning_sequence(tmp_path / "videos" / "pan", frames=8)
    overrides = [
        f"data.root={tmp_path / 'videos'}",
        f"data.labels_dir={tmp_path / 'labels'}",
        f"data.height={H}",
        f"data.width={W}",
        f"data.labeller._target_={__name__}._threads_recording_teacher",
        "data.labeller.features=xfeat",
        "data.pairs.gaps=[4]",
        "data.verify.model=homography",
        "data.verify.min_inliers=20",
        "trainer.accelerator=cpu",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="label", overrides=overrides)
        bad = compose(config_name="label", overrides=[*overrides, "threads=0"])
    assert cfg.threads == 1
    with pytest.raises(ValueError, match=r"threads=0: expected a number of CPU threads >= 1"):
        run(bad)
    before = torch.get_num_threads()
    _THREADS_SEEN.clear()
    torch.set_num_threads(2)
    try:
        (cache,) = run(cfg)
        assert torch.get_num_threads() == 2  # the caller's setting, restored
    finally:
        torch.set_num_threads(before)
    assert cache.complete and _THREADS_SEEN and set(_THREADS_SEEN) == {1}


def test_a_folder_with_one_photo_says_what_was_found(tmp_path):
    """The hint was about sequences shorter than the gaps, for a folder holding one photo."""
    from loftr_kd.data.labels import pairs_and_cache

    (tmp_path / "one").mkdir()
    cv2.imwrite(str(tmp_path / "one" / "a.png"), cv2.resize(skdata.camera(), (W, H)))
    with pytest.raises(
        ValueError, match=r"no candidate pair: 0 sequences .* and 0 folders of photos with 2 or more"
    ):
        pairs_and_cache(tmp_path / "one", tmp_path / "labels", {"gaps": [2]}, {}, (H, W), torch.nn.Identity())


def test_labels_of_a_photo_read_sideways_are_not_reused(tmp_path):
    """Colour reads turn EXIF-rotated photos upright since 2026-12-07: a cache labelled from the sideways read
    would give keypoints in the wrong frame, so such a photo's identity in the cache key changed; a photo
    without the tag keeps its key (no relabelling of every cache)."""
    from PIL import Image

    from loftr_kd.data.labels import _file_identity

    plain, turned = tmp_path / "plain.jpg", tmp_path / "turned.jpg"
    picture = Image.fromarray(cv2.resize(skdata.camera(), (W, H)))
    picture.save(plain)
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(turned, exif=exif)
    assert len(_file_identity(str(plain))) == 3  # path, size, SHA-256: as before
    assert _file_identity(str(turned))[3:] == ["exif-upright-6"]
