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

from loftr_kd.geometry import CoarseGrid, RefineWindow
from loftr_kd.losses import (
    LossConfig,
    LossOutput,
    refinement_loss,
    teacher_fine_cells,
    teacher_refine_targets,
    total_loss,
)
from loftr_kd.metrics import MatchStats, student_match_stats
from loftr_kd.models.matching import CoarseMatchOutput, mutual_nearest_matches
from loftr_kd.models.student import CoarseLoFTRStudent
from loftr_kd.models.teacher import LoFTRTeacher
from loftr_kd.supervision import CoarseGroundTruth, SupervisionConfig, coarse_ground_truth


@dataclass(frozen=True)
class MonitoringConfig:
    """What the module logs besides scalars."""

    histogram_every_n_steps: int = 100
    log_match_images: bool = True


def confidence_mae(confidence: torch.Tensor, gt_match_ids: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the confidence matrix and the binary ground-truth matrix (paper's MAE)."""
    target = torch.zeros_like(confidence, dtype=torch.float32)
    rows = gt_match_ids >= 0
    target[rows] = target[rows].scatter(-1, gt_match_ids[rows].unsqueeze(-1), 1.0)
    return (confidence.float() - target).abs().mean()


class DistillationModule(pl.LightningModule):
    """Student trained on depth-derived ground truth plus distillation from a frozen teacher.

    Args:
        student: the coarse student (trained).
        teacher: frozen LoFTR teacher, or ``None`` to train on ground truth alone.
        loss: loss settings.
        supervision: ground-truth settings (default: :class:`SupervisionConfig` defaults).
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
        supervision: SupervisionConfig | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.loss_config = loss
        self.supervision = supervision or SupervisionConfig()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitoring = monitoring or MonitoringConfig()
        self.save_hyperparameters(
            {
                "student_config": asdict(student.config),
                "loss": asdict(loss),
                "supervision": asdict(self.supervision),
                "teacher": teacher is not None,
            }
        )
        self._val_stats: dict[str, MatchStats] = {}
        self._vis_batch: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- steps
    def _grids(self, batch: dict[str, Any]) -> tuple[CoarseGrid, CoarseGrid | None]:
        """Student and teacher grids of the batch's image0 (the one geometry owner)."""
        height, width = (int(v) for v in batch["image0"].shape[-2:])
        student = CoarseGrid.for_image(height, width, self.student.config.coarse_stride)
        teacher = None
        if self.teacher is not None:
            teacher = CoarseGrid.for_image(height, width, int(self.teacher.stride), exact=False)
        return student, teacher

    def _ground_truth(self, batch: dict[str, Any], grid: CoarseGrid) -> CoarseGroundTruth:
        return coarse_ground_truth(
            batch, stride=grid.stride, depth_tolerance=self.supervision.depth_tolerance
        )

    def _forward(
        self, batch: dict[str, Any]
    ) -> tuple[LossOutput, CoarseMatchOutput, CoarseGroundTruth, Any, CoarseGrid, CoarseGrid | None]:
        """Student (and teacher, once) on a batch, ground truth, every loss term, and the two grids."""
        grid, teacher_grid = self._grids(batch)
        out = self.student(batch["image0"], batch["image1"])
        gt = self._ground_truth(batch, grid)
        teacher_out = None
        if self.teacher is not None:
            fine = {}  # only a LoFTR teacher has a fine stage (StudentTeacher takes no fine_cells)
            if self._distils_refinement:
                cells = teacher_fine_cells(grid, teacher_grid).reshape(-1)
                fine["fine_cells"] = cells.to(batch["image0"].device)
            teacher_out = self.teacher(batch["image0"], batch["image1"], **fine)
        terms = total_loss(
            out.confidence,
            gt.match_ids,
            out.similarity,
            None if teacher_out is None else teacher_out.similarity,
            student_hw=grid.shape,
            teacher_hw=None if teacher_grid is None else teacher_grid.shape,
            **self.loss_config.loss_kwargs(),
        )
        window = self.student.config.refine_window
        if window is not None:
            fine = None if teacher_out is None else teacher_out.fine
            refine, refine_kd = self._refinement_loss(out, gt, grid, window, fine)
            total = terms.total + self.loss_config.w_refine * refine
            if refine_kd is not None:
                total = total + self.loss_config.w_refine_kd * refine_kd
            terms = terms._replace(total=total, refine=refine, refine_kd=refine_kd)
        return terms, out, gt, teacher_out, grid, teacher_grid

    @property
    def _distils_refinement(self) -> bool:
        """The refinement learns from the teacher's fine matches too (a LoFTR teacher, a refining student,
        ``loss.w_refine_kd > 0``)."""
        return (
            self.loss_config.w_refine_kd > 0
            and self.student.config.refine_window is not None
            and isinstance(self.teacher, LoFTRTeacher)
        )

    def _refinement_loss(
        self,
        out: CoarseMatchOutput,
        gt: CoarseGroundTruth,
        grid: CoarseGrid,
        window: RefineWindow,
        teacher_fine: Any | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Refinement loss on every row it can learn from, and its distillation term (or ``None``).

        A row's own candidate is used when the window around it reaches the truth (what inference will
        see); otherwise, where the ground truth has a match, the refinement is run again around the true
        cell, so rows whose coarse match is still wrong teach the refinement too (LoFTR pads ground-truth
        matches into the fine stage the same way, but inside its model). With the teacher's fine matches,
        the same windows are also scored against them, moved to the student's cell centres
        (:func:`~loftr_kd.losses.teacher_refine_targets`), wherever the window reaches them.
        """
        centres = grid.ids_to_pixels(out.candidate_ids)
        reachable = gt.valid & ((gt.points1 - centres).abs().amax(-1) <= window.reach)
        forced = ~reachable & (gt.match_ids >= 0)
        ids = torch.where(forced, gt.match_ids, out.candidate_ids)
        refined = self.student.refinement(*out.fine_maps, ids, grid)
        settings = {
            "inverse_std": self.loss_config.refine_inverse_std,
            "ce_weight": self.loss_config.refine_ce_weight,
        }
        loss = refinement_loss(
            refined.points1,
            refined.uncertainty,
            refined.logits,
            grid.ids_to_pixels(ids),
            gt.points1,
            gt.valid,
            window,
            **settings,
        )
        if teacher_fine is None:
            return loss, None
        targets, valid = teacher_refine_targets(
            teacher_fine.points0, teacher_fine.points1, teacher_fine.valid, grid
        )
        distilled = refinement_loss(
            refined.points1,
            refined.uncertainty,
            refined.logits,
            grid.ids_to_pixels(ids),
            targets,
            valid,
            window,
            **settings,
        )
        return loss, distilled

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms, _, gt, *_ = self._forward(batch)
        batch_size = batch["image0"].shape[0]
        self.log("train/loss", terms.total, prog_bar=True, batch_size=batch_size)
        self.log("train/loss_gt", terms.gt, batch_size=batch_size)
        if self.teacher is not None:
            self.log("train/loss_kd", terms.kd, batch_size=batch_size)
        if terms.refine is not None:
            self.log("train/loss_refine", terms.refine, batch_size=batch_size)
        if terms.refine_kd is not None:
            self.log("train/loss_refine_kd", terms.refine_kd, batch_size=batch_size)
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
        self._val_stats = {}
        self._vis_batch = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms, out, gt, teacher_out, grid, teacher_grid = self._forward(batch)
        batch_size = batch["image0"].shape[0]
        self.log("val/loss", terms.total, batch_size=batch_size, sync_dist=True)
        if terms.refine is not None:
            self.log("val/loss_refine", terms.refine, batch_size=batch_size, sync_dist=True)
        if terms.refine_kd is not None:
            self.log("val/loss_refine_kd", terms.refine_kd, batch_size=batch_size, sync_dist=True)
        self.log(
            "val/student/mae",
            confidence_mae(out.confidence, gt.match_ids),
            batch_size=batch_size,
            sync_dist=True,
        )
        self._accumulate(
            "student", student_match_stats(out.points1, out.match_ids, gt.points1, gt.valid, gt.match_ids)
        )
        if self.student.refinement is not None:
            # what refinement adds: the same matches (coarse cell right) at the cell centre and refined
            exact = torch.where(
                out.match_ids == gt.match_ids, out.match_ids, torch.full_like(out.match_ids, -1)
            )
            for who, points in (("refined", out.points1), ("cell_centre", grid.ids_to_pixels(exact))):
                stats = student_match_stats(points, exact, gt.points1, gt.valid, gt.match_ids)
                self._accumulate(f"correct_cells_{who}", stats)
        vis: dict[str, Any] = {
            "student": (out.points0[0], out.points1[0], out.match_ids[0] >= 0, gt.points1[0], gt.valid[0])
        }
        if teacher_out is not None:
            teacher_gt = self._ground_truth(batch, teacher_grid)
            teacher_ids = self._teacher_matches(teacher_out.confidence, teacher_grid)
            teacher_points1 = teacher_grid.ids_to_pixels(teacher_ids)
            self._accumulate(
                "teacher",
                student_match_stats(
                    teacher_points1, teacher_ids, teacher_gt.points1, teacher_gt.valid, teacher_gt.match_ids
                ),
            )
            self.log(
                "val/teacher/mae",
                confidence_mae(teacher_out.confidence, teacher_gt.match_ids),
                batch_size=batch_size,
                sync_dist=True,
            )
            vis["teacher"] = (
                teacher_grid.centers(device=teacher_ids.device),
                teacher_points1[0],
                teacher_ids[0] >= 0,
                teacher_gt.points1[0],
                teacher_gt.valid[0],
            )
        if batch_idx == 0:
            self._vis_batch = {
                "image0": batch["image0"][0, 0].detach().float().cpu(),
                "image1": batch["image1"][0, 0].detach().float().cpu(),
                "runs": {k: tuple(t.detach().cpu() for t in v) for k, v in vis.items()},
            }

    def _accumulate(self, who: str, stats: MatchStats) -> None:
        self._val_stats[who] = self._val_stats[who] + stats if who in self._val_stats else stats

    def on_validation_epoch_end(self) -> None:
        for who, stats in self._val_stats.items():
            if self.trainer.world_size > 1:
                # Each rank validated its own disjoint share (PairDataModule.val_sampler): the additive
                # counts summed over ranks (float64: exact) are those of one pass over the whole set.
                total = self.trainer.strategy.reduce(
                    stats.as_tensor().to(self.device, torch.float64), reduce_op="sum"
                )
                stats = MatchStats.from_tensor(total)
            if who == "student":
                self.log("val/pairs", stats.count("pairs"), sync_dist=False, rank_zero_only=False)
            # The statistics are already summed over ranks, so every rank logs the same values.
            for name, value in stats.summary().items():
                if name == "num_pairs" or not np.isfinite(value):
                    continue
                if who.startswith("correct_cells") and not name.startswith("epe"):
                    continue
                show = who == "student" and name in ("precision@3px", "f1")
                self.log(
                    f"val/{who}/{name}", float(value), prog_bar=show, sync_dist=False, rank_zero_only=False
                )
        if self.monitoring.log_match_images and self._vis_batch is not None:
            self._log_match_images(self._vis_batch)

    # ------------------------------------------------------------------------------------ monitoring
    def _tensorboard(self) -> Any | None:
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "add_histogram"):
                return experiment
        return None

    def _log_match_images(self, vis: dict[str, Any]) -> None:
        from loftr_kd.visualization import draw_matches_with_truth

        tensorboard = self._tensorboard()
        if tensorboard is None or self.trainer.global_rank != 0:
            return
        image0 = (vis["image0"].numpy() * 255).clip(0, 255).astype(np.uint8)
        image1 = (vis["image1"].numpy() * 255).clip(0, 255).astype(np.uint8)
        for who, (points0, points1, matched, truth1, valid) in vis["runs"].items():
            keep = matched.numpy()
            canvas = draw_matches_with_truth(
                image0,
                image1,
                points0.numpy()[keep],
                points1.numpy()[keep],
                truth1.numpy()[keep],
                valid.numpy()[keep],
                who,
            )
            tensorboard.add_image(
                f"matches/{who}", canvas[..., ::-1].copy(), self.global_step, dataformats="HWC"
            )

    def _teacher_matches(self, confidence: torch.Tensor, grid: CoarseGrid) -> torch.Tensor:
        """The teacher's matches under the student's rule (threshold, border removal) on its own grid."""
        cfg = self.student.config
        border = cfg.border_removal * cfg.coarse_stride // grid.stride
        valid = grid.border_mask(border, device=confidence.device)
        return mutual_nearest_matches(confidence, cfg.match_threshold, valid, valid)[0]

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
