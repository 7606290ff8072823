"""Lightning callbacks of the project (everything else comes from Lightning itself)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
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


class CarryBestCheckpoint(pl.Callback):
    """A run resumed into a new folder keeps the best checkpoint of the run it resumes.

    Lightning's ``ModelCheckpoint`` reloads ``best_model_score`` and ``best_k_models`` only when its folder is
    the one the checkpoint was saved from; the recipe and ``make rerun`` always resume into a new folder, so
    the first validation there became "best" whatever the earlier epochs scored. Before Lightning restores
    the callbacks, this points the saved state of each monitored ``ModelCheckpoint`` at the new folder, so
    Lightning's own ``load_state_dict`` takes the earlier best: a later epoch replaces it only when it scores
    better, and the earlier file is never deleted (Lightning removes only files in its own folder). When a
    file of the earlier best is gone, nothing is carried (the best is tracked afresh from the new epochs).
    """

    def __init__(self) -> None:
        self.carried: dict[str, tuple[str, float]] = {}  # monitor -> (earlier best file, its score)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("callbacks") or {}
        for callback in trainer.callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.monitor:
                continue
            # the key holds the monitor and the mode: a run that changed either finds nothing to carry
            state = states.get(callback.state_key)
            if not state or state.get("dirpath") == callback.dirpath or state.get("best_model_score") is None:
                continue
            kept = list(state.get("best_k_models") or {}) or [state.get("best_model_path")]
            if all(path and Path(path).is_file() for path in kept):
                state["dirpath"] = callback.dirpath
                best, score = state["best_model_path"], float(state["best_model_score"])
                self.carried[callback.monitor] = (best, score)
                rank_zero_info(
                    f"Resume: the best {callback.monitor} so far, {score:.4g} ({best}), carries over from the "
                    "resumed run; an epoch here replaces it only if it scores better."
                )
            else:  # Lightning would still reload the missing file's path as the best
                state["best_model_path"] = ""
