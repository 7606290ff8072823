"""``PairDataModule``: BlendedMVS-layout depth pairs (real or synthetic) or homography pairs."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from loftr_kd.data.blendedmvs import BlendedMVSIndex, BlendedMVSPairDataset, split_scenes
from loftr_kd.data.homography import HomographyPairDataset, find_images
from loftr_kd.data.sampling import EpochPairSampler, ResumableDraw
from loftr_kd.data.sources import (  # noqa: F401 - the settings and sources are public here too
    KINDS,
    ON_BAD_DATA,
    LoaderSettings,
    PhotoSource,
    SceneSource,
    UnlabeledSource,
    _make_source,
    _same_path,
    kind_settings,
)
from loftr_kd.files import describe_entries

log = logging.getLogger(__name__)


def _dropped(root: Path, scenes: Sequence[str], index: BlendedMVSIndex) -> str:
    """Which scenes gave no pair and why (the first problem recorded for each), for the error line."""
    reasons = []
    for scene in scenes:
        if scene in index.scenes:
            continue
        prefix = str(root / scene)
        why = next(
            (m for m in index.report.messages if m.startswith(prefix)), "no usable pair in cams/pair.txt"
        )
        reasons.append(f"{scene}: {why.removeprefix(prefix + '/')}")
    shown = "; ".join(reasons[:5]) + (f"; ... ({len(reasons)} scenes)" if len(reasons) > 5 else "")
    return (
        f": every scene was dropped ({shown}). Repair or remove those files, or list other scenes "
        "(data.train_scenes / data.val_scenes)"
    )


class PairDataModule(ResumableDraw, pl.LightningDataModule):
    """Training and validation pairs for distillation.

    The flat arguments are those of ``conf/data/*.yaml`` (``data.root=...`` and so on); the kind-specific
    ones are validated and kept by the source that owns them (``self.source``: :class:`SceneSource` or
    :class:`PhotoSource`), and one meant for the other kind is an error rather than silently unused.

    Args:
        kind: ``"blendedmvs"`` (BlendedMVS layout: real BlendedMVS or synthetic scenes) or ``"homography"``
            (any folder of images).
        root: data root.
        height, width: training size.
        batch_size: pairs per batch.
        num_workers: DataLoader workers (persistent when > 0).
        pairs_per_epoch: random training pairs per epoch (over all DDP ranks), re-drawn every epoch.
        val_pairs: size of the fixed, deterministic validation subset.
        seed: seeds the epoch draws and the training homographies.
        val_seed: seeds what is validated on — the validation subset, the validation homographies and the
            fallback scene split — apart from ``seed``, so runs with other seeds are scored on the same pairs
            (``conf/train.yaml``: 42, the seed every run used before it existed); ``None``: ``seed``.
        on_bad_data: ``"raise"`` or ``"skip"`` (see :mod:`loftr_kd.data.blendedmvs`; unlabeled data:
            :func:`loftr_kd.data.unlabeled.discover`).
        **source_options: the source's own fields — :class:`SceneSource` (``train_scenes``,
            ``val_scenes``, ``val_fraction``, ``generate``) or :class:`PhotoSource` (``val_root``,
            ``homography``).
    """

    def __init__(
        self,
        kind: str = "blendedmvs",
        root: str | os.PathLike = "data/synthetic",
        height: int = 480,
        width: int = 640,
        batch_size: int = 8,
        num_workers: int = 2,
        pairs_per_epoch: int = 5000,
        val_pairs: int = 200,
        seed: int = 0,
        on_bad_data: str = "raise",
        val_seed: int | None = None,
        **source_options: Any,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"data kind must be one of {KINDS}, got {kind!r}")
        self.loader = LoaderSettings(
            int(height),
            int(width),
            int(batch_size),
            int(num_workers),
            int(pairs_per_epoch),
            int(val_pairs),
            int(seed),
            on_bad_data,
            None if val_seed is None else int(val_seed),
        )
        self.kind = kind
        self.source = _make_source(kind, Path(root), source_options)
        self.root = self.source.root
        self.height, self.width = self.loader.height, self.loader.width
        self.batch_size = self.loader.batch_size
        self.num_workers = self.loader.num_workers
        self.pairs_per_epoch = self.loader.pairs_per_epoch
        self.val_pairs = self.loader.val_pairs
        self.seed = self.loader.seed
        self.val_seed = self.seed if self.loader.val_seed is None else self.loader.val_seed
        self.on_bad_data = on_bad_data
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.summary: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate synthetic scenes into ``root`` where that was asked for (``generate`` set).

        Rule: nothing in a data folder is ever deleted or rewritten. A finished synthetic set
        (``synthetic_info.json``) is used as it is. Generation happens only into a new or empty folder
        (or resumes an interrupted generation there), and only at ``generate.default_root`` (the embedded
        default location, on first use) unless ``generate.allow_other_root`` is true; a mistyped
        ``data.root`` is an error, not a new data set. A folder holding anything else is an error that
        names it and says what to do.
        """
        if self.kind == "unlabeled":
            self.label()
            return
        generate = getattr(self.source, "generate", None)
        if not generate:
            return
        from loftr_kd.data import synthetic

        root = self.root
        state = synthetic.folder_state(root)
        if state == "complete":
            return
        if state == "foreign":
            if root.exists() and not root.is_dir():
                raise ValueError(f"data.root={root} is a file, not a data folder")
            found = sorted(p.name for p in root.iterdir())
            raise ValueError(
                f"data.root={root} holds files the synthetic generator did not write "
                f"({describe_entries(found, shown=3)}) and no "
                f"{synthetic.INFO_FILE}: refusing to generate there, nothing was touched. To train on "
                f"the scenes in it as they are, use data=blendedmvs data.root={root} (or add "
                "data.generate=null); to generate synthetic scenes, choose a new or empty folder."
            )
        default = generate.get("default_root")
        allowed = (
            default is None
            or bool(generate.get("allow_other_root", False))
            or _same_path(root, Path(default))
        )
        if not allowed:
            what = (
                "does not exist"
                if state == "new"
                else "is empty"
                if state == "empty"
                else ("holds an interrupted synthetic generation")
            )
            raise FileNotFoundError(
                f"data.root={root} {what}: synthetic scenes are generated on first use only into the "
                f"default location {default}. Check the path for a typo; to generate scenes there, run "
                f"`loftr-kd-synth --out {root}` or add data.generate.allow_other_root=true."
            )
        synthetic.generate_dataset(
            out_dir=root,
            scenes=int(generate["scenes"]),
            views=int(generate["views"]),
            seed=int(generate.get("seed", 0)),
            log=lambda line: rank_zero_info(f"[data] {line} (data.generate)"),
        )

    def setup(self, stage: str | None = None) -> None:
        """Build (and validate) the data sets once."""
        if self.train_dataset is not None:
            return
        if self.kind == "blendedmvs":
            self._setup_blendedmvs()
        elif self.kind == "unlabeled":
            self._setup_unlabeled()
        else:
            self._setup_homography()
        counts = self.bad_data_counts()
        if any(counts.values()):
            self.summary["bad data"] = counts
        rank_zero_info(
            "[data] "
            + ", ".join(f"{k}: {v}" for k, v in self.summary.items() if not isinstance(v, (list, dict)))
        )

    def _setup_blendedmvs(self) -> None:
        if self.root.is_file():
            raise NotADirectoryError(f"{self.root}: is a file; data.root needs a folder of scenes")
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.root}: data root does not exist (set data.root, or data=synthetic to generate one)"
            )
        scenes = self.source
        train_scenes, val_scenes, source = split_scenes(
            self.root, scenes.train_scenes, scenes.val_scenes, self.val_seed, scenes.val_fraction
        )
        if not train_scenes:
            where = {"config": "data.train_scenes is empty"}.get(source)
            if source.startswith("training_list"):
                where = f"{self.root / 'training_list.txt'} lists no scene"
            raise FileNotFoundError(
                f"{self.root}: no training scenes ({where or 'scenes need cams/pair.txt'})"
            )
        shared = sorted(set(train_scenes) & set(val_scenes))
        if shared:
            log.warning(
                "%s: %d scenes are both training and validation scenes: %s",
                self.root,
                len(shared),
                shared[:5],
            )
        train_index = BlendedMVSIndex.build(self.root, train_scenes, self.on_bad_data)
        if not train_index.pairs:
            raise FileNotFoundError(
                f"{self.root}: no training pairs are left{_dropped(self.root, train_scenes, train_index)}"
            )
        self.train_dataset = BlendedMVSPairDataset(
            self.root, train_scenes, self.height, self.width, self.on_bad_data, index=train_index
        )
        val_note = ""
        if val_scenes:
            val_index = BlendedMVSIndex.build(self.root, val_scenes, self.on_bad_data)
            if not val_index.pairs:
                raise FileNotFoundError(
                    f"{self.root}: no validation pairs are left{_dropped(self.root, val_scenes, val_index)}"
                )
            val_full = BlendedMVSPairDataset(
                self.root, val_scenes, self.height, self.width, self.on_bad_data, index=val_index
            )
        else:
            val_full = self.train_dataset
            val_note = " (no validation scenes: validating on training pairs)"
            log.warning("%s: no validation scenes; validation uses training pairs", self.root)
        self.val_dataset = self._fixed_subset(val_full)
        self.summary = {
            "kind": self.kind,
            "root": str(self.root),
            "scenes from": source + val_note,
            "train scenes": len(train_index.scenes),
            "val scenes": len(val_full.index.scenes) if val_scenes else 0,
            "train pairs": len(self.train_dataset),
            "val pairs": len(self.val_dataset),
            "pairs per epoch": self.pairs_per_epoch,
            "size": f"{self.width}x{self.height}",
        }

    def _setup_homography(self) -> None:
        options = {
            "height": self.height,
            "width": self.width,
            "on_bad_data": self.on_bad_data,
            **self.source.homography,
        }
        self.train_dataset = HomographyPairDataset(self.root, seed=self.seed, **options)
        if self.source.val_root is not None:
            val_images = find_images(self.source.val_root)
            val_root = self.source.val_root
        else:
            val_images, val_root = self.train_dataset.images, self.root
        val_options = {**options, **self.source.val_homography, "length": self.val_pairs}
        # A different seed stream gives validation homographies never seen in training.
        self.val_dataset = HomographyPairDataset(
            val_root, images=val_images, seed=self.val_seed + 1_000_003, **val_options
        )
        self.summary = {
            "kind": self.kind,
            "root": str(self.root),
            "train images": len(self.train_dataset.images),
            "val images": len(val_images) if self.source.val_root is not None else "same as train",
            "train pairs (virtual)": len(self.train_dataset),
            "val pairs": len(self.val_dataset),
            "pairs per epoch": self.pairs_per_epoch,
            "size": f"{self.width}x{self.height}",
        }

    # ------------------------------------------------------------------------------ unlabeled pairs
    def _label_cache(self, teacher: Any = None):
        """The candidate pairs and their label cache (:func:`loftr_kd.data.labels.pairs_and_cache`)."""
        from loftr_kd.data.labels import pairs_and_cache

        return pairs_and_cache(
            self.root,
            self.source.labels_dir or self.root.parent / "labels",
            self.source.pairs,
            self.source.verify,
            (self.height, self.width),
            teacher if teacher is not None else self._labeller,
            on_bad_data=self.on_bad_data,
        )

    def _labeller(self) -> Any:
        if self.source.labeller is None:
            raise ValueError(
                "data.labeller is not set: unlabeled pairs need a sparse teacher to label them "
                "(conf/data/unlabeled.yaml: teacher=lightglue features)"
            )
        return self.source.labeller()

    def label(self, trainer_options: Mapping[str, Any] | None = None) -> Any:
        """Label the candidate pairs not labelled yet (the cache is shared by every later run)."""
        from loftr_kd.data.labels import label_pairs

        pairs, cache, teacher, verify = self._label_cache()
        return label_pairs(
            cache,
            pairs,
            teacher,
            verify,
            batch_size=self.source.label_batch_size,
            trainer_options=trainer_options,
            say=lambda line: rank_zero_info(f"[data] {line}"),
        )

    def _setup_unlabeled(self) -> None:
        from loftr_kd.data.labels import LabelledPairDataset

        pairs, cache, _, verify = self._label_cache()
        if not cache.complete:
            raise FileNotFoundError(
                f"{cache.folder}: the pairs of {self.root} are not labelled yet; run loftr-kd-label with the "
                "same data settings (training labels them itself in prepare_data on one device)"
            )
        dataset = LabelledPairDataset(pairs, cache, verify.min_inliers, self.source.max_matches, self.seed)
        every = max(2, round(1 / self.source.val_fraction)) if self.source.val_fraction > 0 else 0
        held = {k for k in range(len(dataset.items)) if every and k % every == every - 1}
        if every and not held and len(dataset.items) >= 2:  # fewer pairs than 1/val_fraction: still one
            held = {len(dataset.items) - 1}
        val_items = [item for k, item in enumerate(dataset.items) if k in held]
        train_items = [item for k, item in enumerate(dataset.items) if k not in held]
        if not val_items:
            reason = "data.val_fraction=0" if not every else "a single labelled pair"
            rank_zero_warn(
                f"[data] {self.root}: validation runs on training pairs ({reason}): its figures and the best "
                "checkpoint say how well the pairs were learnt, not how well the student generalises"
            )
        self.train_dataset = copy.copy(dataset)
        self.train_dataset.items = train_items
        self.val_dataset = copy.copy(dataset)
        self.val_dataset.items = val_items or train_items[: self.val_pairs]
        self.val_dataset.swap = False
        self.val_dataset = self._fixed_subset(self.val_dataset)
        self.summary = {
            "kind": self.kind,
            "root": str(self.root),
            "labels": str(cache.folder),
            "labelled pairs": len(dataset),
            "train pairs": len(train_items),
            "val pairs": len(self.val_dataset),
            "pairs per epoch": self.pairs_per_epoch,
            "size": f"{self.width}x{self.height}",
        }

    def _fixed_subset(self, dataset: Dataset) -> Dataset:
        """Deterministic validation subset of ``val_pairs`` pairs (all when fewer)."""
        total = len(dataset)
        if total <= self.val_pairs:
            return dataset
        chosen = np.sort(
            np.random.default_rng([self.val_seed, 7]).choice(total, self.val_pairs, replace=False)
        )
        return Subset(dataset, chosen.tolist())

    # ---------------------------------------------------------------------------------------------

    def bad_data_counts(self) -> dict[str, int]:
        """Bad-data counts over train and val sets, for the epoch summary (all zero when clean)."""
        counts: dict[str, int] = {}
        bases = {}
        for dataset in (self.train_dataset, self.val_dataset):
            base = dataset.dataset if isinstance(dataset, Subset) else dataset
            if hasattr(base, "bad_data_counts"):
                bases[id(base)] = base  # val may reuse the training set
        for base in bases.values():
            for key, value in base.bad_data_counts.items():
                counts[key] = counts.get(key, 0) + value
        return counts

    def _loader(
        self, dataset: Dataset, sampler=None, shuffle: bool = False, drop_last: bool = False
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
        )

    def train_sampler(self) -> EpochPairSampler:
        """The epoch sampler over the training set (rank/world size from torch.distributed)."""
        if self.train_dataset is None:
            self.setup("fit")
        sampler = EpochPairSampler(len(self.train_dataset), self.pairs_per_epoch, self.seed)
        batches = (
            len(sampler) // self.batch_size
            if self._drop_last(sampler)
            else -(-len(sampler) // self.batch_size)
        )
        self._place_resumed(sampler, batches, self.batch_size)
        return sampler

    def _drop_last(self, sampler: EpochPairSampler) -> bool:
        """Constant batch size for accumulation, unless the epoch is smaller than one batch."""
        return len(sampler) >= self.batch_size

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        return self._loader(self.train_dataset, sampler=sampler, drop_last=self._drop_last(sampler))

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return self._loader(self.val_dataset, sampler=self.val_sampler())

    def val_sampler(self) -> UnrepeatedDistributedSampler | None:
        """Under DDP, this rank's disjoint share of the fixed validation pairs (``None`` on one process).

        Lightning's ``UnrepeatedDistributedSampler``: rank ``r`` of ``n`` takes pairs ``r, r + n, ...`` and no
        pair is repeated to even out the shares (a ``DistributedSampler`` would pad with repeats and count
        them twice), so the statistics summed over ranks are exactly those of one pass over the set.
        ``use_distributed_sampler`` stays off: the training sampler splits its draw itself.
        """
        trainer = getattr(self, "trainer", None)
        world_size = int(getattr(trainer, "world_size", 1) or 1)
        if world_size <= 1:
            return None
        if len(self.val_dataset) < world_size:
            raise ValueError(
                f"data.val_pairs: {len(self.val_dataset)} validation pairs for {world_size} DDP ranks; every "
                f"rank needs at least one, so give data.val_pairs >= {world_size}"
            )
        return UnrepeatedDistributedSampler(
            self.val_dataset, num_replicas=world_size, rank=int(trainer.global_rank), shuffle=False
        )
