"""The LightningModule: wires data → ground truth → student/teacher → losses. Nothing else.

Lightning owns AMP, gradient accumulation, clipping, checkpointing and DDP; this module only says what a
step computes and what gets logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from loftr_kd.losses import LossConfig, LossOutput, total_loss
from loftr_kd.models.matching import border_mask, mutual_nearest_matches
from loftr_kd.models.student import CoarseLoFTRStudent
from loftr_kd.supervision import CoarseGroundTruth, cell_centers, coarse_ground_truth

TEACHER_STRIDE = 8


@dataclass(frozen=True)
class MonitoringConfig:
    """What the module logs besides scalars."""

    histogram_every_n_steps: int = 100
    log_match_images: bool = True


def match_metrics(
    match_ids: torch.Tensor, gt: CoarseGroundTruth, stride: int, image_width: int
) -> dict[str, torch.Tensor]:
    """Coarse match quality of fixed-shape predictions against ground truth.

    Args:
        match_ids: (B, L0) predicted image1 cell per image0 cell, −1 = none.
        gt: ground truth at the same stride.
        stride: coarse stride in pixels.
        image_width: input width in pixels (to recover the cell grid).

    Returns:
        counts (as float tensors, summed over the batch) from which precision/recall follow:
        ``predicted`` (predictions at cells whose true position is known), ``correct`` (the predicted cell
        centre lies within one cell, L∞ < stride, of the true position), ``exact`` (predicted cell ==
        ground-truth cell), ``gt`` (ground-truth matches), ``recalled`` (ground-truth matches whose cell
        has a correct prediction, same criterion as ``correct``), ``pairs`` (image pairs).
    """
    w = image_width // stride
    predicted = match_ids >= 0  # (B, L0)
    judged = predicted & gt.valid
    ids = match_ids.clamp(min=0)
    pred_xy = torch.stack(((ids % w).float(), torch.div(ids, w, rounding_mode="floor").float()), -1)
    pred_xy = (pred_xy + 0.5) * stride - 0.5  # (B, L0, 2) cell centres in pixels
    error = (pred_xy - gt.points1.float()).abs().amax(-1)  # (B, L0) L∞ pixel error
    has_gt = gt.match_ids >= 0
    correct = judged & (error < stride)
    exact = predicted & has_gt & (match_ids == gt.match_ids)
    return {
        "predicted": judged.sum().float(),
        "correct": correct.sum().float(),
        "exact": exact.sum().float(),
        "gt": has_gt.sum().float(),
        "recalled": (correct & has_gt).sum().float(),
        "pairs": torch.tensor(float(match_ids.shape[0]), device=match_ids.device),
    }


def confidence_mae(confidence: torch.Tensor, gt_match_ids: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the confidence matrix and the binary ground-truth matrix (paper's MAE)."""
    b, l0, l1 = confidence.shape
    target = torch.zeros_like(confidence, dtype=torch.float32)
    rows = gt_match_ids >= 0
    target[rows] = target[rows].scatter(-1, gt_match_ids[rows].unsqueeze(-1), 1.0)
    return (confidence.float() - target).abs().mean()


class DistillationModule(pl.LightningModule):
    """Student trained on depth-derived ground truth plus distillation from a frozen teacher.

    Args:
        student: the coarse student (trained).
        teacher: frozen LoFTR teacher, or ``None`` to train on ground truth alone.
        loss: loss weights and ground-truth settings.
        optimizer: partial optimizer (``hydra`` ``_partial_: true``), finished with the parameters here.
        scheduler: partial LR scheduler or ``None``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        monitoring: histogram period and match images.
    """

    def __init__(
        self,
        student: CoarseLoFTRStudent,
        teacher: nn.Module | None,
        loss: LossConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        monitoring: MonitoringConfig | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.loss_weights = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitoring = monitoring or MonitoringConfig()
        self.save_hyperparameters(
            {"student_config": asdict(student.config), "loss": asdict(loss), "teacher": teacher is not None}
        )
        self._val_counts: dict[str, dict[str, torch.Tensor]] = {}
        self._teacher_validated = False
        self._vis_batch: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- steps
    def _ground_truth(self, batch: dict[str, Any], stride: int) -> CoarseGroundTruth:
        return coarse_ground_truth(batch, stride=stride, depth_tolerance=self.loss_weights.depth_tolerance)

    def _losses(self, batch: dict[str, Any]) -> tuple[LossOutput, Any, CoarseGroundTruth]:
        stride = self.student.config.coarse_stride
        height, width = batch["image0"].shape[-2:]
        out = self.student(batch["image0"], batch["image1"])
        gt = self._ground_truth(batch, stride)
        teacher_similarity = None
        if self.teacher is not None:
            teacher_similarity = self.teacher(batch["image0"], batch["image1"]).similarity
        terms = total_loss(
            out.confidence,
            gt.match_ids,
            out.similarity,
            teacher_similarity,
            student_hw=(height // stride, width // stride),
            teacher_hw=(height // TEACHER_STRIDE, width // TEACHER_STRIDE),
            **self.loss_weights.loss_kwargs(),
        )
        return terms, out, gt

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms, _, gt = self._losses(batch)
        batch_size = batch["image0"].shape[0]
        self.log("train/loss", terms.total, prog_bar=True, batch_size=batch_size)
        self.log("train/loss_gt", terms.gt, batch_size=batch_size)
        if self.teacher is not None:
            self.log("train/loss_kd", terms.kd, batch_size=batch_size)
        self.log("train/gt_matches_per_pair", (gt.match_ids >= 0).sum() / batch_size, batch_size=batch_size)
        return terms.total

    def on_after_backward(self) -> None:
        period = self.monitoring.histogram_every_n_steps
        tensorboard = self._tensorboard()
        if tensorboard is None or period <= 0 or self.global_step % period:
            return
        for name, param in self.student.named_parameters():
            tensorboard.add_histogram(f"params/{name}", param.detach().float().cpu(), self.global_step)
            if param.grad is not None:
                tensorboard.add_histogram(
                    f"grads/{name}", param.grad.detach().float().cpu(), self.global_step
                )

    def on_validation_epoch_start(self) -> None:
        self._val_counts = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms, out, gt = self._losses(batch)
        batch_size = batch["image0"].shape[0]
        width = batch["image0"].shape[-1]
        stride = self.student.config.coarse_stride
        self.log("val/loss", terms.total, batch_size=batch_size, sync_dist=True)
        self.log(
            "val/student/mae",
            confidence_mae(out.confidence, gt.match_ids),
            batch_size=batch_size,
            sync_dist=True,
        )
        self._accumulate("student", match_metrics(out.match_ids, gt, stride, width))
        if self.teacher is not None and not self._teacher_validated:
            teacher_gt = self._ground_truth(batch, TEACHER_STRIDE)
            teacher_out = self.teacher(batch["image0"], batch["image1"])
            teacher_ids = self._teacher_matches(teacher_out.confidence, batch["image0"].shape[-2:])
            self._accumulate("teacher", match_metrics(teacher_ids, teacher_gt, TEACHER_STRIDE, width))
            self.log(
                "val/teacher/mae",
                confidence_mae(teacher_out.confidence, teacher_gt.match_ids),
                batch_size=batch_size,
                sync_dist=True,
            )
        if batch_idx == 0:
            self._vis_batch = {k: v[:1] if torch.is_tensor(v) else v[:1] for k, v in batch.items()}

    def _accumulate(self, who: str, counts: dict[str, torch.Tensor]) -> None:
        acc = self._val_counts.setdefault(who, {k: torch.zeros((), device=self.device) for k in counts})
        for key, value in counts.items():
            acc[key] = acc[key] + value

    def on_validation_epoch_end(self) -> None:
        for who, counts in self._val_counts.items():
            if self.trainer.world_size > 1:
                counts = {k: self.all_gather(v).sum() for k, v in counts.items()}
            precision = counts["correct"] / counts["predicted"].clamp(min=1)
            recall = counts["recalled"] / counts["gt"].clamp(min=1)
            # The counts are already summed over ranks, so every rank logs the same values.
            metrics = {
                "precision": precision,
                "exact_precision": counts["exact"] / counts["predicted"].clamp(min=1),
                "recall": recall,
                # F1 picks the best checkpoint: precision alone rewards a student that matches almost nothing.
                "f1": 2 * precision * recall / (precision + recall).clamp(min=1e-9),
                "matches_per_pair": counts["predicted"] / counts["pairs"].clamp(min=1),
            }
            for name, value in metrics.items():
                show = who == "student" and name in ("precision", "f1")
                self.log(f"val/{who}/{name}", value, prog_bar=show, sync_dist=True)
        if "teacher" in self._val_counts:
            self._teacher_validated = True
        if self.monitoring.log_match_images and self._vis_batch is not None:
            self._log_match_images(self._vis_batch)

    # ------------------------------------------------------------------------------------ monitoring
    def _tensorboard(self) -> Any | None:
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "add_histogram"):
                return experiment
        return None

    @torch.no_grad()
    def _log_match_images(self, batch: dict[str, Any]) -> None:
        from loftr_kd.visualization import draw_matches

        tensorboard = self._tensorboard()
        if tensorboard is None or self.trainer.global_rank != 0:
            return
        image0 = (batch["image0"][0, 0].float().cpu().numpy() * 255).astype(np.uint8)
        image1 = (batch["image1"][0, 0].float().cpu().numpy() * 255).astype(np.uint8)
        runs = [
            ("student", self.student.config.coarse_stride, self.student(batch["image0"], batch["image1"]))
        ]
        if self.teacher is not None:
            teacher_out = self.teacher(batch["image0"], batch["image1"])
            ids = self._teacher_matches(teacher_out.confidence, batch["image0"].shape[-2:])
            runs.append(("teacher", TEACHER_STRIDE, (None, teacher_out.confidence, ids, None)))
        for who, stride, out in runs:
            match_ids = out[2][0]
            gt = self._ground_truth(batch, stride)
            h, w = image0.shape[0] // stride, image0.shape[1] // stride
            centres = cell_centers(h, w, stride).cpu().numpy()
            keep = (match_ids >= 0).cpu().numpy()
            idx0 = np.nonzero(keep)[0]
            idx1 = match_ids.cpu().numpy()[keep]
            truth = gt.points1[0].cpu().numpy()[idx0]
            error = np.abs(centres[idx1] - truth).max(-1)
            correct = gt.valid[0].cpu().numpy()[idx0] & (error < stride)
            canvas = draw_matches(
                image0,
                image1,
                centres[idx0],
                centres[idx1],
                correct=correct,
                title=f"{who}: {len(idx0)} matches",
            )
            tensorboard.add_image(
                f"matches/{who}", canvas[..., ::-1].copy(), self.global_step, dataformats="HWC"
            )

    def _teacher_matches(self, confidence: torch.Tensor, image_hw: Any) -> torch.Tensor:
        """The teacher's matches under the student's rule (threshold, border removal) on its 8-px grid."""
        h, w = int(image_hw[0]) // TEACHER_STRIDE, int(image_hw[1]) // TEACHER_STRIDE
        border = self.student.config.border_removal * self.student.config.coarse_stride // TEACHER_STRIDE
        valid = border_mask(h, w, border).to(confidence.device)
        return mutual_nearest_matches(confidence, self.student.config.match_threshold, valid, valid)[0]

    # ------------------------------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.student.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen teacher is not part of the trained model: keep checkpoints small and teacher-free.
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")
        }
        checkpoint["student_config"] = asdict(self.student.config)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        # Checkpoints carry no teacher weights; take them from the teacher this run was built with.
        if self.teacher is not None:
            state_dict = dict(state_dict)
            for key, value in self.teacher.state_dict(prefix="teacher.").items():
                state_dict.setdefault(key, value)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
