"""EpochPairSampler: reproducible per (seed, epoch), re-drawn per epoch, disjoint DDP shards."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from conftest import quiet_cpu_trainer
from loftr_kd.data.sampling import EpochPairSampler


def test_same_seed_and_epoch_same_indices():
    a, b = EpochPairSampler(1000, 100, seed=3), EpochPairSampler(1000, 100, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    assert len(a) == 100 and len(list(a)) == 100
    assert len(set(a)) == 100  # without replacement when the set is large enough
    assert all(0 <= i < 1000 for i in a)


def test_epochs_and_seeds_differ():
    sampler = EpochPairSampler(1000, 100, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochPairSampler(1000, 100, seed=4)) != first


def test_small_set_repeats_evenly():
    sampler = EpochPairSampler(7, 30, seed=0)
    indices = list(sampler)
    assert len(indices) == 30
    counts = np.bincount(indices, minlength=7)
    assert counts.min() >= 4 and counts.max() <= 5


@pytest.mark.parametrize("world_size,per_epoch", [(2, 100), (3, 100), (4, 7)])
def test_ranks_disjoint_and_cover_the_epoch(world_size, per_epoch):
    shards = []
    for rank in range(world_size):
        sampler = EpochPairSampler(1000, per_epoch, seed=1, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == -(-per_epoch // world_size)  # equal per rank
    flat = [i for shard in shards for i in shard]
    assert len(flat) == len(set(flat))  # disjoint
    full = EpochPairSampler(1000, per_epoch, seed=1, rank=0, world_size=world_size).epoch_indices(2)
    assert sorted(flat) == sorted(full.tolist())  # together they are the epoch's draw
    assert len(flat) >= per_epoch


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        EpochPairSampler(0, 10)
    with pytest.raises(ValueError, match="both"):
        EpochPairSampler(10, 10, rank=0)
    with pytest.raises(ValueError, match="outside"):
        EpochPairSampler(10, 10, rank=2, world_size=2)


class _Indices(Dataset):
    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor([float(i)])


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(int(x) for x in batch[:, 0])
        return (self.weight * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_calls_set_epoch_without_distributed_sampler(tmp_path):
    sampler = EpochPairSampler(50, 10, seed=0)
    loader = DataLoader(_Indices(), batch_size=5, sampler=sampler)
    model = _Recorder()
    trainer = quiet_cpu_trainer(tmp_path, max_epochs=3, use_distributed_sampler=False)
    trainer.fit(model, loader)
    assert trainer.train_dataloader.sampler is sampler  # not replaced by Lightning
    for epoch in range(3):
        assert model.seen[epoch] == sampler.epoch_indices(epoch).tolist()
    assert model.seen[0] != model.seen[1]


def test_resume_within_epoch_continues_the_draw() -> None:
    full = EpochPairSampler(50, 20, seed=3, rank=0, world_size=1)
    full.set_epoch(2)
    expected = list(full)
    resumed = EpochPairSampler(50, 20, seed=3, rank=0, world_size=1)
    resumed.resume_within_epoch(2, 6)
    resumed.set_epoch(2)
    assert list(resumed) == expected[6:]
    # Only once, and only for that epoch.
    assert list(resumed) == expected
    other = EpochPairSampler(50, 20, seed=3, rank=0, world_size=1)
    other.resume_within_epoch(1, 6)
    other.set_epoch(2)
    assert list(other) == expected


def test_a_resumed_sampler_is_placed_before_the_loader_draws() -> None:
    """Lightning sets the epoch only after DataLoader workers drew their first indices: the data module
    places the resumed sampler itself (the epoch, the place in it, the next epoch after an epoch's end)."""
    from loftr_kd.data.sampling import ResumableDraw

    def placed(position: tuple[int, int]) -> list[int]:
        module = ResumableDraw()
        module.load_state_dict({"epoch": position[0], "batches_done": position[1]})
        sampler = EpochPairSampler(50, 20, seed=3, rank=0, world_size=1)
        module._place_resumed(sampler, batches_per_epoch=5, per_batch=4)
        return list(sampler)

    def epoch(number: int) -> list[int]:
        return EpochPairSampler(50, 20, seed=3, rank=0, world_size=1).epoch_indices(number).tolist()

    assert placed((1, 2)) == epoch(1)[8:]  # mid-epoch: the rest of that epoch's draw
    assert placed((1, 5)) == epoch(2)  # saved at the end of epoch 1: epoch 2, whole


def test_an_epoch_cut_short_by_limit_train_batches_is_recorded_as_done() -> None:
    """With limit_train_batches the epoch ends before the sampler's draw does: the checkpoint says so, and
    the resumed run starts the next epoch instead of that epoch's leftover pairs."""
    from types import SimpleNamespace

    from loftr_kd.data.sampling import ResumableDraw

    module = ResumableDraw()
    progress = SimpleNamespace(processed=3)
    module.trainer = SimpleNamespace(
        current_epoch=1,
        num_training_batches=3,  # limit_train_batches=3 of the sampler's 5
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=progress))
        ),
    )
    state = module.state_dict()
    assert state == {"epoch": 1, "batches_done": 3, "epoch_done": True}
    resumed = ResumableDraw()
    resumed.load_state_dict(state)
    sampler = EpochPairSampler(50, 20, seed=3, rank=0, world_size=1)
    resumed._place_resumed(sampler, batches_per_epoch=5, per_batch=4)
    assert list(sampler) == EpochPairSampler(50, 20, seed=3, rank=0, world_size=1).epoch_indices(2).tolist()
