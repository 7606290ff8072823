"""Several data sources in one training run, mixed by weight (``data=mixed``).

Each source is a :class:`~loftr_kd.data.datamodule.PairDataModule` of its own kind — synthetic scenes with
depth, homographies of photos, real pairs with a teacher's pseudo ground truth — at the same training
size. Every batch comes whole from one source (their items carry different ground-truth keys: depth and
poses, a homography, or matches), the source drawn with probability proportional to its weight, so a
mixture of 1 : 1 : 1 gives each about a third of the steps. The draw is reproducible from
``(seed, epoch)``, split across DDP ranks and resumed mid-epoch like :class:`EpochPairSampler`'s.
Validation runs every source's own validation pairs (named by ``validate_on``), batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, DataLoader, Sampler, Subset

from loftr_kd.data.sampling import ResumableDraw, placement

__all__ = ["EpochCounter", "MixedBatchSampler", "MixedDataModule"]


class EpochCounter:
    """The epoch of a batch sampler, where Lightning sets it.

    Lightning calls ``set_epoch`` on a loader's ``sampler`` and on its ``batch_sampler.sampler``, never on
    the ``batch_sampler`` itself (``lightning_fabric.utilities.data._set_sampler_epoch``): a batch sampler
    that draws by epoch keeps its epoch here, as its ``sampler`` attribute.
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of indices into a ``ConcatDataset``, each batch from one source chosen by weight.

    Within a source, indices are drawn without replacement from its permutations, so its pairs appear
    equally often (±1). The epoch's batches are split across ranks by striding, their count rounded up to
    a multiple of the world size. Each epoch draws anew: Lightning sets the epoch on :attr:`sampler`
    (:class:`EpochCounter`; until 2026-12-07 it was never set, and every epoch repeated epoch 0's batches).

    Args:
        sizes: length of each source's data set (in ``ConcatDataset`` order).
        weights: relative share of batches of each source.
        batch_size: pairs per batch.
        batches: batches per epoch over all ranks.
        seed: base seed.
        rank, world_size: explicit DDP placement (both or neither; default: torch.distributed).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        batches: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"one weight per source: {len(sizes)} sources, {len(weights)} weights")
        if any(s <= 0 for s in sizes):
            raise ValueError(f"every source needs pairs, got sizes {list(sizes)}")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}")
        self.sizes = [int(s) for s in sizes]
        self.probabilities = np.asarray(weights, np.float64) / float(sum(weights))
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.batch_size, self.batches, self.seed = int(batch_size), int(batches), int(seed)
        self._rank, self._world_size = rank, world_size
        self.sampler = EpochCounter()  # where Lightning's set_epoch reaches a batch sampler
        self._resume: tuple[int, int] | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def resume_within_epoch(self, epoch: int, batches_done: int) -> None:
        """Continue epoch ``epoch`` after this rank's first ``batches_done`` batches (once, on resume)."""
        self._resume = (int(epoch), max(0, int(batches_done)))

    def _placement(self) -> tuple[int, int]:
        return placement(self._rank, self._world_size)

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All ranks' batches of an epoch."""
        epoch = self.epoch if epoch is None else int(epoch)
        _, world_size = self._placement()
        count = math.ceil(self.batches / world_size) * world_size
        rng = np.random.default_rng([self.seed, epoch, 17])
        choice = rng.choice(len(self.sizes), size=count, p=self.probabilities)
        streams = []
        for source, size in enumerate(self.sizes):
            needed = int((choice == source).sum()) * self.batch_size
            draws = [rng.permutation(size) for _ in range(max(1, math.ceil(needed / size)))]
            streams.append(iter((np.concatenate(draws)[:needed] + self.offsets[source]).tolist()))
        return [[next(streams[s]) for _ in range(self.batch_size)] for s in choice]

    def __iter__(self) -> Iterator[list[int]]:
        rank, world_size = self._placement()
        batches = self.epoch_batches()[rank::world_size]
        if self._resume is not None and self._resume[0] == self.epoch:
            batches = batches[self._resume[1] :]
            self._resume = None
        return iter(batches)

    def __len__(self) -> int:
        _, world_size = self._placement()
        return math.ceil(self.batches / world_size)


class _SourceBatches(Sampler[list[int]]):
    """Validation batches in order, never mixing two sources (and this rank's share under DDP)."""

    def __init__(self, sizes: Sequence[int], batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        batches, start = [], 0
        for size in sizes:
            batches += [
                list(range(start + i, start + min(i + batch_size, size))) for i in range(0, size, batch_size)
            ]
            start += size
        self.batches = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class MixedDataModule(ResumableDraw, pl.LightningDataModule):
    """Training batches from several sources by weight; validation on the named sources.

    Args:
        sources: name -> data module (each a ``PairDataModule`` at the same ``height`` x ``width``).
        weights: name -> relative share of the training batches (a source left out gets none).
        batch_size: pairs per batch (every source's batches have this size).
        pairs_per_epoch: training pairs per epoch over all ranks.
        num_workers: DataLoader workers.
        seed: seeds the draws.
        validate_on: sources whose validation pairs are validated (default: every source with weight).
        val_pairs: at most this many validation pairs of each validated source (``None``: all of them).
        height, width: the training size, checked against the sources' (``${data.height}`` for the student).
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        weights: Mapping[str, float],
        batch_size: int = 8,
        pairs_per_epoch: int = 5000,
        num_workers: int = 2,
        seed: int = 0,
        validate_on: Sequence[str] | None = None,
        val_pairs: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            raise ValueError(f"data.weights names sources that are not in data.sources: {unknown}")
        self.sources = dict(sources)
        self.weights = {name: float(weights.get(name, 0.0)) for name in self.sources}
        if sum(self.weights.values()) <= 0:
            raise ValueError(f"data.weights: every source has weight 0 ({self.weights})")
        sizes = {(getattr(s, "height", None), getattr(s, "width", None)) for s in self.sources.values()}
        if len(sizes) > 1:
            raise ValueError(f"data.sources must share one training size, got {sorted(sizes)}")
        self.height, self.width = sizes.pop()
        for name, value in (("height", height), ("width", width)):
            if value is not None and value != getattr(self, name):
                raise ValueError(f"data.{name}={value} differs from the sources' {getattr(self, name)}")
        self.batch_size, self.pairs_per_epoch = int(batch_size), int(pairs_per_epoch)
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.validate_on = (
            list(validate_on) if validate_on is not None else [n for n, w in self.weights.items() if w > 0]
        )
        missing = sorted(set(self.validate_on) - set(self.sources))
        if missing:
            raise ValueError(f"data.validate_on names sources that are not in data.sources: {missing}")
        if val_pairs is not None and int(val_pairs) < 1:
            raise ValueError(f"data.val_pairs={val_pairs!r}: expected >= 1")
        self.val_pairs = None if val_pairs is None else int(val_pairs)
        self.train_dataset: ConcatDataset | None = None
        self.val_dataset: ConcatDataset | None = None
        self._training = [n for n, w in self.weights.items() if w > 0]

    def prepare_data(self) -> None:
        for name in dict.fromkeys(self._training + self.validate_on):
            self.sources[name].prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        for name in dict.fromkeys(self._training + self.validate_on):
            self.sources[name].setup(stage)
        self.train_dataset = ConcatDataset([self.sources[n].train_dataset for n in self._training])
        self.val_dataset = ConcatDataset(
            [self._val_subset(self.sources[n].val_dataset) for n in self.validate_on]
        )
        shares = ", ".join(
            f"{n} {self.weights[n]:g} ({len(self.sources[n].train_dataset)} pairs)" for n in self._training
        )
        rank_zero_info(f"[data] mixed: {shares}; validating on {', '.join(self.validate_on)}")

    def _val_subset(self, dataset: Any) -> Any:
        """The first ``val_pairs`` of a source's (already fixed, deterministic) validation pairs."""
        if self.val_pairs is None or len(dataset) <= self.val_pairs:
            return dataset
        return Subset(dataset, list(range(self.val_pairs)))

    def bad_data_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for source in self.sources.values():
            for key, value in (
                source.bad_data_counts() if hasattr(source, "bad_data_counts") else {}
            ).items():
                counts[key] = counts.get(key, 0) + value
        return counts

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        sampler = MixedBatchSampler(
            [len(self.sources[n].train_dataset) for n in self._training],
            [self.weights[n] for n in self._training],
            self.batch_size,
            max(1, self.pairs_per_epoch // self.batch_size),
            self.seed,
        )
        self._place_resumed(sampler, len(sampler), 1)
        return DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        trainer = getattr(self, "trainer", None)
        world_size = int(getattr(trainer, "world_size", 1) or 1)
        rank = int(getattr(trainer, "global_rank", 0) or 0)
        sizes = [len(d) for d in self.val_dataset.datasets]
        return DataLoader(
            self.val_dataset,
            batch_sampler=_SourceBatches(sizes, self.batch_size, rank, world_size),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
