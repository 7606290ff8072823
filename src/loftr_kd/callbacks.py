"""Lightning callbacks of the project (everything else comes from Lightning itself)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info


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
