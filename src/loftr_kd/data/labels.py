"""Pseudo ground truth for pairs without geometry: a sparse teacher's matches, checked and cached on disk.

:func:`label_pairs` runs a teacher that provides ``matches`` (``teacher=lightglue``: LightGlue over DISK /
ALIKED / XFeat keypoints) on every candidate pair once, at the training size, with Lightning's predict
loop, so labelling shards over DDP ranks and SLURM jobs the way training does. Each pair's matches are
checked with RANSAC (a fundamental matrix, MAGSAC; ``verify.model=homography`` for planar data) and only
the inliers are kept; a pair with fewer than ``verify.min_inliers`` is dropped.

The cache (:class:`LabelCache`) is a folder named by a hash of everything the labels depend on — the
teacher (class, settings, SHA-256 of its weight files), the labelling size, the check's settings, and
every image (path, size, SHA-256 of its content) — so a change of any of them labels again into a new folder,
and nothing stale is ever reused. A pair's label depends only on its two images and the teacher, size and
check, so a new folder first takes over, from the caches beside it with the same teacher, size and check, the
labels of the pairs whose two images are unchanged (:meth:`LabelCache.reuse_siblings`): one added, changed or
removed photo labels only the pairs it is in. Labels are written batch by batch (``shard_*.npz``,
atomically): an interrupted labelling resumes with the pairs not yet done. ``complete.json`` marks a
finished cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset

from loftr_kd.data.unlabeled import FrameRef, PairSpec
from loftr_kd.files import replacing, sha256_file, write_json

__all__ = [
    "LabelCache",
    "pairs_and_cache",
    "LabelledPairDataset",
    "VerifySettings",
    "label_pairs",
    "load_pair_images",
]

log = logging.getLogger(__name__)

COMPLETE = "complete.json"
RECORD = "labels.json"


@dataclass(frozen=True)
class VerifySettings:
    """How a pair's teacher matches are checked before they become pseudo ground truth."""

    model: str = "fundamental"  # or "homography"
    threshold: float = 1.0  # RANSAC inlier threshold, pixels at the labelling size
    min_inliers: int = 30  # a pair with fewer checked matches is dropped
    confidence: float = 0.999

    def __post_init__(self) -> None:
        if self.model not in ("fundamental", "homography"):
            raise ValueError(f"data.verify.model={self.model!r}: expected fundamental or homography")
        if self.threshold <= 0:
            raise ValueError(f"data.verify.threshold={self.threshold!r}: expected > 0 pixels")
        if self.min_inliers < 8:
            raise ValueError(f"data.verify.min_inliers={self.min_inliers!r}: expected >= 8")


def verify_matches(keypoints0: np.ndarray, keypoints1: np.ndarray, settings: VerifySettings) -> np.ndarray:
    """Inlier mask of a pair's matches under a RANSAC model (all False when too few)."""
    inliers = np.zeros(len(keypoints0), bool)
    if len(keypoints0) < max(8, settings.min_inliers):
        return inliers
    k0, k1 = keypoints0.astype(np.float64), keypoints1.astype(np.float64)
    try:
        if settings.model == "homography":
            _, mask = cv2.findHomography(
                k0, k1, cv2.USAC_MAGSAC, settings.threshold, confidence=settings.confidence
            )
        else:
            _, mask = cv2.findFundamentalMat(k0, k1, cv2.USAC_MAGSAC, settings.threshold, settings.confidence)
    except cv2.error:
        # MAGSAC asserts on degenerate sets (every match on a line or one point): no model, no inliers.
        return inliers
    if mask is None:
        return inliers
    return mask.ravel().astype(bool)


def checked_matches(matches: Any, settings: VerifySettings) -> list[np.ndarray]:
    """Per pair of a batch of teacher matches (:class:`~loftr_kd.teachers.TeacherMatches`), the indices of
    the matches that pass :func:`verify_matches`; none for a pair with fewer than ``min_inliers``."""
    kept = []
    for b in range(matches.valid.shape[0]):
        slots = np.flatnonzero(matches.valid[b].cpu().numpy())
        k0 = matches.keypoints0[b].cpu().numpy()[slots]
        k1 = matches.keypoints1[b].cpu().numpy()[slots]
        inliers = verify_matches(k0, k1, settings)
        kept.append(slots[inliers] if inliers.sum() >= settings.min_inliers else slots[:0])
    return kept


def load_pair_images(pair: PairSpec, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images of a pair as float32 ``(height, width)`` in [0, 1]: centre-cropped to the aspect ratio,
    then resized (the same for labelling and training, so the labels are in the training pixels)."""
    return tuple(_load_frame(ref, height, width) for ref in (pair.image0, pair.image1))


def _load_frame(ref: FrameRef, height: int, width: int) -> np.ndarray:
    from loftr_kd.images import read_image, to_gray_float

    if ref.frame is not None:
        raise ValueError(f"{ref.label}: video frames are decoded into the label cache first")
    image = to_gray_float(read_image(ref.path), name=ref.path)
    h, w = image.shape
    scale = min(h / height, w / width)
    crop_h, crop_w = round(height * scale), round(width * scale)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    image = image[top : top + crop_h, left : left + crop_w]
    interpolation = cv2.INTER_AREA if crop_h > height else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _file_identity(path: str) -> list[Any]:
    """A file in a cache key: its path and content (its SHA-256: a file replaced by another of the same
    size and time stamp, as ``cp -p``, ``rsync -a`` or ``tar`` leave it, is a new file). A photo with an EXIF
    orientation adds it: since 2026-12-07 it is read upright in colour too (:func:`loftr_kd.images.read_image`),
    so labels made from its sideways read must not be reused; other files keep their earlier keys."""
    identity = [path, os.stat(path).st_size, sha256_file(path)]
    orientation = _exif_orientation(path)
    return identity + ([f"exif-upright-{orientation}"] if orientation not in (None, 1) else [])


def _exif_orientation(path: str) -> int | None:
    """The EXIF orientation tag of an image (Pillow reads the header only); ``None`` without one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.getexif().get(0x0112)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):  # no EXIF Pillow can read
        return None


def teacher_identity(teacher: torch.nn.Module) -> dict[str, Any]:
    """What a teacher's labels depend on: its class, settings and the SHA-256 of its weight files."""
    settings = getattr(teacher, "settings", None)
    if settings is not None and hasattr(settings, "__dataclass_fields__"):
        settings = asdict(settings)
    weights = [str(p) for p in getattr(teacher, "weight_files", ())]
    return {
        "class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        "name": getattr(teacher, "name", None),
        "settings": settings,
        "weights": {Path(p).name: sha256_file(p) for p in weights},
    }


class LabelCache:
    """A folder of labels for one (teacher, size, check, images) combination (module docstring)."""

    def __init__(self, folder: Path, record: Mapping[str, Any]) -> None:
        self.folder = folder
        self.record = dict(record)

    @classmethod
    def for_pairs(
        cls,
        root: str | Path,
        pairs: Sequence[PairSpec],
        teacher: Mapping[str, Any],
        size: tuple[int, int],
        verify: VerifySettings,
        data_root: str | Path | None = None,
    ) -> LabelCache:
        """The cache of these pairs under ``root`` (its folder name is the hash of the record). Image paths
        enter the record relative to ``data_root`` (resolved), so ``data.root=data/real`` and its absolute
        spelling, or a run from another folder, find the same cache."""
        base = Path(data_root).resolve() if data_root is not None else None

        def name(path: str) -> str:
            return Path(os.path.relpath(Path(path).resolve(), base)).as_posix() if base else path

        images = sorted({ref.path for pair in pairs for ref in (pair.image0, pair.image1)})
        record = {
            "teacher": dict(teacher),
            "size": list(size),
            "verify": asdict(verify),
            "images": [[name(p), *_file_identity(p)[1:]] for p in images],
            "pairs": [
                [name(pair.image0.path), name(pair.image1.path), pair.kind, pair.gap] for pair in pairs
            ],
        }
        key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
        return cls(Path(root) / key, record)

    @property
    def complete(self) -> bool:
        return (self.folder / COMPLETE).is_file()

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard_*.npz"))

    def done(self) -> set[int]:
        """Indices of the pairs already labelled (readable shards only)."""
        indices: set[int] = set()
        for shard in self.shards():
            try:
                with np.load(shard) as data:
                    indices.update(int(i) for i in data["index"])
            except (OSError, ValueError, KeyError):
                continue  # a shard cut short by a crash: its pairs are labelled again
        return indices

    def start(self) -> None:
        """Create the folder and its record (what the labels depend on)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / RECORD).is_file():
            write_json(self.folder / RECORD, self.record)

    def pair_identities(self) -> list[tuple[Any, ...]]:
        """Per pair, what its label depends on besides the cache's teacher, size and check: both images'
        names and identities (size, SHA-256, EXIF orientation where it has one)."""
        images = {entry[0]: tuple(entry[1:]) for entry in self.record["images"]}
        return [(a, images[a], b, images[b]) for a, b, *_ in self.record["pairs"]]

    def reuse_siblings(self, exclude: set[int] | frozenset[int] = frozenset()) -> dict[int, Path]:
        """Take over the labels of unchanged pairs from the other caches in this cache's parent folder that
        have the same teacher, size and check; written as one shard (``shard_<first>_reused.npz``, the same
        file whichever rank writes it).

        Args:
            exclude: indices of this cache's pairs that are labelled already.

        Returns:
            index -> the cache folder its label came from (nothing when no sibling shares a pair).
        """
        wanted = {identity: i for i, identity in enumerate(self.pair_identities()) if i not in exclude}
        same = ("teacher", "size", "verify")
        found: dict[int, tuple[Path, tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = {}
        for record_path in sorted(self.folder.parent.glob(f"*/{RECORD}")):
            folder = record_path.parent
            if folder == self.folder or not wanted:
                continue
            try:
                record = json.loads(record_path.read_text())
                if any(record.get(key) != self.record.get(key) for key in same):
                    continue
                sibling = LabelCache(folder, record)
                shared = {
                    j: wanted[identity]
                    for j, identity in enumerate(sibling.pair_identities())
                    if identity in wanted
                }
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                continue  # not a cache this version wrote, or damaged: nothing taken from it
            if not shared:
                continue
            for j, label in sibling.load().items():
                if j in shared and shared[j] not in found:
                    found[shared[j]] = (folder, label)
        if found:
            indices = sorted(found)
            results = [
                {
                    "index": i,
                    "keypoints0": found[i][1][0],
                    "keypoints1": found[i][1][1],
                    "confidence": found[i][1][2],
                    "candidates": found[i][1][3],
                }
                for i in indices
            ]
            self.write_shard(results, name=f"shard_{indices[0]:07d}_reused.npz")
        return {i: folder for i, (folder, _) in found.items()}

    def finish(self, summary: Mapping[str, Any]) -> None:
        write_json(self.folder / COMPLETE, dict(summary))

    def check_some_kept(self) -> None:
        """A complete cache must hold a pair to train on: none kept is said now, not as an empty data set
        later (the labels stay cached).

        Raises:
            ValueError: the summary counts no kept pair.
        """
        summary = json.loads((self.folder / COMPLETE).read_text())
        if summary.get("kept") == 0:
            raise ValueError(
                f"{self.folder}: none of the {summary.get('pairs')} pairs kept enough checked matches of the "
                f"teacher (verify.min_inliers): the images share too little (larger frame gaps or unrelated "
                f"photos?), or lower verify.min_inliers"
            )

    def write_shard(self, results: Sequence[Mapping[str, Any]], name: str | None = None) -> Path:
        """One batch's labels, atomically (``shard_<first index>_<pid>.npz``, or ``name``)."""
        index = np.array([r["index"] for r in results], np.int64)
        counts = np.array([len(r["keypoints0"]) for r in results], np.int64)
        arrays = {
            "index": index,
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "candidates": np.array([r["candidates"] for r in results], np.int64),
            "keypoints0": _stack([r["keypoints0"] for r in results], (0, 2)),
            "keypoints1": _stack([r["keypoints1"] for r in results], (0, 2)),
            "confidence": _stack([r["confidence"] for r in results], (0,)),
        }
        path = self.folder / (name or f"shard_{int(index.min()):07d}_{os.getpid()}.npz")
        with replacing(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path

    def load(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """Every labelled pair: ``index -> (keypoints0, keypoints1, confidence, candidates)``."""
        labels = {}
        for shard in self.shards():
            try:
                with np.load(shard) as data:
                    offsets = data["offsets"]
                    for k, index in enumerate(data["index"]):
                        span = slice(int(offsets[k]), int(offsets[k + 1]))
                        labels[int(index)] = (
                            data["keypoints0"][span],
                            data["keypoints1"][span],
                            data["confidence"][span],
                            int(data["candidates"][k]),
                        )
            except (OSError, ValueError, KeyError):
                continue
        return labels


def _stack(arrays: Sequence[np.ndarray], empty: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(empty, np.float32)


def pairs_and_cache(
    root: Path,
    labels_dir: Path,
    pair_settings: Mapping[str, Any],
    verify_settings: Mapping[str, Any],
    size: tuple[int, int],
    teacher: Callable[[], torch.nn.Module] | torch.nn.Module,
    on_bad_data: str = "raise",
) -> tuple[list[PairSpec], LabelCache, torch.nn.Module, VerifySettings]:
    """The candidate pairs of a folder and the label cache they map to.

    ``labels_dir`` (and any other label cache under ``root``) is never taken as data; a bad image or video
    is an error naming it, before the teacher is built, or left out with ``on_bad_data="skip"``
    (:func:`~loftr_kd.data.unlabeled.discover`).

    The draw of the pairs depends on ``pair_settings`` only (``pairs.seed``), never on a run's seed, so
    every training run and ``loftr-kd-label`` find the same cache.

    Videos are decoded once into ``labels_dir/frames/<hash of the video>``, their long side at most
    ``video_max_side`` (:func:`~loftr_kd.data.unlabeled.video_frames_folder`); the teacher is built (when
    ``teacher`` is a function) because its weight files are part of the cache's key.

    Returns:
        ``(pairs, cache, teacher, verify)``.
    """
    from loftr_kd.data.unlabeled import (
        VIDEO_EXTENSIONS,
        UnlabeledSettings,
        candidate_pairs,
        discover,
        video_frames,
        video_frames_folder,
    )

    settings = UnlabeledSettings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in pair_settings.items()}
    )
    sequences, groups = discover(root, settings.min_sequence, exclude=[labels_dir], on_bad_data=on_bad_data)
    decoded = []
    for frames in sequences:
        if len(frames) == 1 and Path(frames[0].path).suffix.lower() in VIDEO_EXTENSIONS:
            video, max_side = Path(frames[0].path), settings.video_max_side
            if max_side is not None and max(size) > max_side:
                raise ValueError(
                    f"data.pairs.video_max_side={max_side} is below the training size {size[1]}x{size[0]}: "
                    f"the frames of {video} would be upscaled; raise it to at least {max(size)}, or null"
                )
            out_dir = video_frames_folder(video, Path(labels_dir) / "frames", max_side)
            frames = video_frames(video, out_dir, max_side=max_side)
        decoded.append(frames)
    pairs = candidate_pairs(decoded, groups, settings)
    if not pairs:
        longest = max((len(frames) for frames in decoded), default=0)
        raise ValueError(
            f"data.root={root}: no candidate pair: {len(decoded)} sequences (the longest {longest} frames, "
            f"frame gaps {list(settings.gaps)}) and {len(groups)} folders of photos with 2 or more photos "
            "(photos pair only within their folder)"
        )
    model = teacher() if callable(teacher) and not isinstance(teacher, torch.nn.Module) else teacher
    verify = VerifySettings(**dict(verify_settings))
    cache = LabelCache.for_pairs(labels_dir, pairs, teacher_identity(model), size, verify, data_root=root)
    return pairs, cache, model, verify


class _PairImages(Dataset):
    """The pairs still to label, as image tensors at the labelling size."""

    def __init__(self, pairs: Sequence[PairSpec], indices: Sequence[int], size: tuple[int, int]) -> None:
        self.pairs, self.indices, self.size = pairs, list(indices), size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        index = self.indices[k]
        image0, image1 = load_pair_images(self.pairs[index], *self.size)
        return {
            "image0": torch.from_numpy(image0)[None],
            "image1": torch.from_numpy(image1)[None],
            "index": index,
        }


class _Labeller(pl.LightningModule):
    """The predict step: the teacher's matches of a batch, checked by RANSAC, per pair."""

    def __init__(self, teacher: torch.nn.Module, verify: VerifySettings) -> None:
        super().__init__()
        self.teacher = teacher
        self.verify = verify

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        matches = self.teacher(batch["image0"], batch["image1"]).matches
        if matches is None:
            raise ValueError(
                f"{type(self.teacher).__name__} provides no matches; label with a sparse teacher"
            )
        results = []
        for b, (index, kept) in enumerate(
            zip(batch["index"].tolist(), checked_matches(matches, self.verify))
        ):
            results.append(
                {
                    "index": index,
                    "keypoints0": matches.keypoints0[b].cpu().numpy()[kept],
                    "keypoints1": matches.keypoints1[b].cpu().numpy()[kept],
                    "confidence": matches.confidence[b].cpu().numpy()[kept],
                    "candidates": int(matches.valid[b].sum()),
                }
            )
        return results


class _ShardWriter(BasePredictionWriter):
    """Lightning's prediction writer: every batch's labels go to the cache as they are made."""

    def __init__(self, cache: LabelCache) -> None:
        super().__init__(write_interval="batch")
        self.cache = cache

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        self.cache.write_shard(prediction)
        if trainer.received_sigterm:
            # Lightning's predict loop records SIGTERM but goes on; stop after the batch just written (the
            # labels so far are kept: the same command resumes), as training stops at a batch boundary.
            raise SIGTERMException()


def label_pairs(
    cache: LabelCache,
    pairs: Sequence[PairSpec],
    teacher: Callable[[], torch.nn.Module] | torch.nn.Module,
    verify: VerifySettings,
    batch_size: int = 4,
    num_workers: int = 0,
    trainer_options: Mapping[str, Any] | None = None,
    say: Callable[[str], None] = print,
) -> LabelCache:
    """Label the pairs not in ``cache`` yet with Lightning's predict loop; mark the cache complete.

    Args:
        cache: where the labels go (:meth:`LabelCache.for_pairs`).
        pairs: all candidate pairs (indices into this list are the labels' keys).
        teacher: a sparse teacher, or a function building one (called only when something is left to do).
        verify: the RANSAC check.
        batch_size, num_workers: the loader of the images to label.
        trainer_options: ``pl.Trainer`` arguments (``accelerator``, ``devices``, ``strategy``, ``num_nodes``:
            several ranks share the pairs through Lightning's distributed sampler).
        say: progress lines.

    Returns:
        The complete cache.
    """
    _warn_xfeat_on_photos(cache.record.get("teacher", {}), pairs)
    if cache.complete:
        cache.check_some_kept()
        kept = json.loads((cache.folder / COMPLETE).read_text()).get("kept")
        say(
            f"Labels: all {len(pairs)} pairs already labelled in {cache.folder}"
            + (f" ({kept} kept)." if kept is not None else ".")
        )
        return cache
    cache.start()
    done = cache.done()
    # Every rank finds the same reused pairs (the sibling caches do not change while labelling runs), so the
    # ranks agree on what is left whether or not another rank's shard is on disk yet.
    reused = cache.reuse_siblings(exclude=done)
    if reused:
        sources = sorted({folder.name for folder in reused.values()})
        say(
            f"Labels: {len(reused)} pairs of unchanged images taken from the earlier cache"
            f"{'s' if len(sources) > 1 else ''} {', '.join(sources)} (same teacher, size and check)."
        )
    done |= set(reused)
    todo = [i for i in range(len(pairs)) if i not in done]
    say(
        f"Labels: {len(done)} of {len(pairs)} pairs already labelled in {cache.folder}; labelling {len(todo)}."
    )
    if todo:
        model = teacher() if callable(teacher) and not isinstance(teacher, torch.nn.Module) else teacher
        loader = DataLoader(
            _PairImages(pairs, todo, tuple(cache.record["size"])),
            batch_size=batch_size,
            num_workers=num_workers,
        )
        options = {"accelerator": "auto", "devices": 1, **(trainer_options or {})}
        trainer = pl.Trainer(
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[_ShardWriter(cache)],
            **options,
        )
        trainer.predict(_Labeller(model, verify), dataloaders=loader, return_predictions=False)
        if not trainer.is_global_zero:
            return cache
    labels = cache.load()
    missing = [i for i in range(len(pairs)) if i not in labels]
    if missing:
        raise RuntimeError(
            f"labelling left {len(missing)} pairs without labels in {cache.folder}; run it again"
        )
    kept = sum(1 for k0, *_ in labels.values() if len(k0) >= verify.min_inliers)
    summary = {"pairs": len(pairs), "kept": kept, "dropped": len(pairs) - kept}
    cache.finish(summary)
    say(
        f"Labels: {kept} of {len(pairs)} pairs kept ({len(pairs) - kept} without {verify.min_inliers} checked matches)."
    )
    cache.check_some_kept()
    return cache


def _warn_xfeat_on_photos(teacher: Mapping[str, Any], pairs: Sequence[PairSpec]) -> None:
    """XFeat + LighterGlue's false matches agree with one another, so the RANSAC check keeps unrelated
    photos (5 of 6 unrelated pairs kept with 42-55 % inliers; ALIKED and DISK kept none): say so when it
    labels photo pairs rather than sequences."""
    settings = teacher.get("settings") or {}
    xfeat = str(teacher.get("name") or "").startswith("XFeat") or (
        isinstance(settings, Mapping) and settings.get("features") == "xfeat"
    )
    photos = sum(pair.kind == "photos" for pair in pairs)
    if xfeat and photos:
        log.warning(
            "data.labeller.features=xfeat labels %d pairs of unordered photos: its RANSAC-checked matches keep "
            "unrelated photos as pairs (docs/unlabeled.md); label photos with features=aliked (the default) "
            "or disk, and xfeat only sequences",
            photos,
        )


class LabelledPairDataset(Dataset):
    """Training pairs with a teacher's checked matches as pseudo ground truth (the batch keys of
    :func:`loftr_kd.supervision.coarse_ground_truth`'s matches path).

    Args:
        pairs: the candidate pairs the cache was made for.
        cache: a complete :class:`LabelCache`.
        min_inliers: pairs with fewer checked matches are left out.
        max_matches: the fixed number of match slots per pair (a random subset when there are more).
        seed: draws of the subsets and of the swap.
        swap: show each pair either way round (image1 first for odd draws).
    """

    def __init__(
        self,
        pairs: Sequence[PairSpec],
        cache: LabelCache,
        min_inliers: int,
        max_matches: int = 1024,
        seed: int = 0,
        swap: bool = True,
    ) -> None:
        labels = cache.load()
        self.size = tuple(cache.record["size"])
        self.items = [
            (pairs[i], labels[i])
            for i in sorted(labels)
            if i < len(pairs) and len(labels[i][0]) >= min_inliers
        ]
        if not self.items:
            raise ValueError(
                f"no pair in {cache.folder} has {min_inliers} checked matches: nothing to train on (more "
                "overlapping pairs, smaller frame gaps, or a lower data.verify.min_inliers)"
            )
        self.max_matches, self.seed, self.swap = int(max_matches), int(seed), bool(swap)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair, (k0, k1, confidence, _) = self.items[index]
        image0, image1 = load_pair_images(pair, *self.size)
        rng = np.random.default_rng([self.seed, index])
        if self.swap and rng.random() < 0.5:
            image0, image1, k0, k1 = image1, image0, k1, k0
        n = len(k0)
        chosen = rng.choice(n, self.max_matches, replace=False) if n > self.max_matches else np.arange(n)
        slots = np.zeros((self.max_matches, 2), np.float32), np.zeros((self.max_matches, 2), np.float32)
        slots[0][: len(chosen)], slots[1][: len(chosen)] = k0[chosen], k1[chosen]
        score = np.zeros(self.max_matches, np.float32)
        score[: len(chosen)] = confidence[chosen]
        valid = np.zeros(self.max_matches, bool)
        valid[: len(chosen)] = True
        return {
            "image0": torch.from_numpy(image0)[None],
            "image1": torch.from_numpy(image1)[None],
            "matches0": torch.from_numpy(slots[0]),
            "matches1": torch.from_numpy(slots[1]),
            "match_confidence": torch.from_numpy(score),
            "match_valid": torch.from_numpy(valid),
            "pair_id": f"{pair.image0.label}|{pair.image1.label}",
        }
