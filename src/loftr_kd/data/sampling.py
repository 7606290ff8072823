"""Per-epoch random pair sampler: ``pairs_per_epoch`` pairs re-drawn every epoch, split across ranks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def placement(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's ``(rank, world size)``: the given ones, else torch.distributed's, else ``(0, 1)``."""
    if world_size is not None:
        return int(rank or 0), int(world_size)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableDraw:
    """Data-module state Lightning stores in every checkpoint and restores before the loaders are built:
    where in its epoch's draw the run stopped, so a run resumed mid-epoch continues that epoch's draw
    instead of starting it again (``_resume_position``: ``(epoch, batches done)``, consumed once)."""

    _resume_position: tuple[int, int] | None = None
    _resume_epoch_done = False

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        done = int(progress.processed)
        # whether the epoch's batches are all done (limit_train_batches included): the run goes on with the next
        limit = trainer.num_training_batches
        epoch_done = isinstance(limit, int | float) and limit != float("inf") and done >= limit
        return {"epoch": int(trainer.current_epoch), "batches_done": done, "epoch_done": bool(epoch_done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "epoch" in state_dict:
            self._resume_position = (int(state_dict["epoch"]), int(state_dict["batches_done"]))
            self._resume_epoch_done = bool(state_dict.get("epoch_done", False))

    def _place_resumed(self, sampler: Any, batches_per_epoch: int, per_batch: int) -> None:
        """Point a new training sampler at the resumed run's epoch (and its place in it), once.

        Lightning builds the loader's iterator before it calls ``set_epoch`` on a resumed run's first epoch,
        and DataLoader workers draw their first indices when the iterator is built: without this the
        resumed epoch would get epoch 0's draw (mid-epoch), or nothing at all (a checkpoint saved at an
        epoch's end, whose run goes on with the next epoch). ``per_batch``: the sampler's items per batch
        (``batch_size`` for a sampler of indices, 1 for a batch sampler).
        """
        if self._resume_position is None:
            return
        epoch, batches_done = self._resume_position
        self._resume_position = None
        # The checkpoint closed its epoch (recorded by state_dict; older checkpoints: judged by the count):
        # the run goes on with the next.
        if self._resume_epoch_done or batches_done >= batches_per_epoch:
            epoch, batches_done = epoch + 1, 0
        sampler.set_epoch(epoch)
        if batches_done:
            sampler.resume_within_epoch(epoch, batches_done * per_batch)


class EpochPairSampler(Sampler[int]):
    """Draws ``pairs_per_epoch`` random pair indices per epoch, reproducible from ``(seed, epoch)``.

    Without replacement when the data set holds at least ``pairs_per_epoch`` pairs; otherwise whole
    random permutations are concatenated (every pair appears equally often, ±1). The epoch's draw is
    split across DDP ranks by striding, so ranks never overlap and together cover the draw. To give every
    rank the same number of batches (DDP would hang otherwise) the draw is rounded up to a multiple of
    the world size.

    Rank and world size are taken from the arguments, else from ``torch.distributed`` when it is
    initialised at ``__iter__``/``__len__`` time, else 0 and 1. Lightning calls :meth:`set_epoch` on a
    DataLoader's sampler at every epoch, also with ``use_distributed_sampler=False``.

    Args:
        num_pairs_total: size of the data set to draw from.
        pairs_per_epoch: pairs per epoch over all ranks.
        seed: base seed.
        rank, world_size: explicit DDP placement (both or neither).
    """

    def __init__(
        self,
        num_pairs_total: int,
        pairs_per_epoch: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if num_pairs_total <= 0:
            raise ValueError(f"cannot sample from an empty data set (num_pairs_total={num_pairs_total})")
        if pairs_per_epoch <= 0:
            raise ValueError(f"pairs_per_epoch must be positive, got {pairs_per_epoch}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_pairs_total = int(num_pairs_total)
        self.pairs_per_epoch = int(pairs_per_epoch)
        self.seed = int(seed)
        self._rank = rank
        self._world_size = world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` yields."""
        self.epoch = int(epoch)

    def resume_within_epoch(self, epoch: int, consumed: int) -> None:
        """Continue epoch ``epoch`` after this rank's first ``consumed`` indices (once, on resume).

        A run resumed from a mid-epoch checkpoint then sees exactly the pairs it had not seen yet, and
        later epochs are unaffected (their draws depend only on ``(seed, epoch)``).
        """
        self._resume = (int(epoch), max(0, int(consumed)))

    def _placement(self) -> tuple[int, int]:
        return placement(self._rank, self._world_size)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """All ranks' indices of an epoch (length rounded up to a multiple of the world size)."""
        epoch = self.epoch if epoch is None else int(epoch)
        _, world_size = self._placement()
        count = math.ceil(self.pairs_per_epoch / world_size) * world_size
        rng = np.random.default_rng([self.seed, epoch])
        chunks = [
            rng.permutation(self.num_pairs_total) for _ in range(math.ceil(count / self.num_pairs_total))
        ]
        return np.concatenate(chunks)[:count]

    def __iter__(self) -> Iterator[int]:
        rank, world_size = self._placement()
        indices = self.epoch_indices()[rank::world_size]
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] :]
            self._resume = None
        return iter(indices.tolist())

    def __len__(self) -> int:
        _, world_size = self._placement()
        return math.ceil(self.pairs_per_epoch / world_size)
