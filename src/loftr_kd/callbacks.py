"""Lightning callbacks of the project (everything else comes from Lightning itself)."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException


def pairs_in_batch(batch: dict) -> int:
    """Image pairs in a training batch: the ``batch_size_fn`` of Lightning's ``ThroughputMonitor``
    (``conf/callbacks/default.yaml``), whose ``samples_per_sec`` is then pairs per second."""
    return int(batch["image0"].shape[0])


class DataHealth(pl.Callback):
    """Epoch summary of bad data: pairs, views and scenes skipped (``on_bad_data=skip``) or replaced on load.

    The counts come from the datamodule's ``bad_data_counts()``; they are logged to TensorBoard as
    ``data/<count>`` and printed whenever one is non-zero, so skipped garbage never goes unnoticed.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        counts = datamodule.bad_data_counts() if hasattr(datamodule, "bad_data_counts") else {}
        for name, value in counts.items():
            pl_module.log(f"data/{name}", float(value), sync_dist=True, reduce_fx="sum")
        if any(counts.values()):
            listed = ", ".join(f"{name} {value}" for name, value in counts.items())
            rank_zero_info(f"[data] epoch {trainer.current_epoch}: bad data so far — {listed}")


class InterruptCheckpoint(pl.Callback):
    """On SIGTERM (batch systems, Kubernetes, ``timeout``), write ``interrupted.ckpt`` to resume from.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary; this callback saves a
    full (resumable) checkpoint then, atomically like every checkpoint. ``train()`` says how to resume
    and exits 143. Other exceptions are left to the regular checkpoints.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.global_step == 0:
            return
        path = self.dirpath / "interrupted.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
