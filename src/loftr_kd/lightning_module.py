"""The LightningModule: wires data → ground truth → student/teacher → losses, and logs. Nothing else.

Lightning owns AMP, gradient accumulation, clipping, checkpointing and DDP; the loss terms and weights
live in :class:`loftr_kd.losses.DistillationLoss`, the match statistics (summed over DDP ranks) in
:class:`loftr_kd.metrics.MatchStatsMetric`; this module only says what a step calls and what gets logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from loftr_kd.geometry import CoarseGrid
from loftr_kd.losses import DistillationLoss, LossConfig, LossOutput
from loftr_kd.metrics import MatchStatsMetric, confidence_mae
from loftr_kd.models.matching import CoarseMatchOutput
from loftr_kd.models.student import CoarseLoFTRStudent
from loftr_kd.supervision import (
    CoarseGroundTruth,
    SupervisionConfig,
    coarse_ground_truth,
    has_ground_truth,
    point_ground_truth,
)
from loftr_kd.teachers.base import SIMILARITY, TeacherMatches, TeacherOutput, teacher_coarse_matches
from loftr_kd.validation import (
    FitValidationConfig,
    RobustFitMetric,
    fit_kind,
    one_pass_matches,
    pair_fit_errors,
)

# Validation statistics: the student's matches, and (refining students) its matches whose coarse cell is
# right, at the cell centre and refined, to show what the refinement adds; the teacher's under the
# student's match rule.
_STATS = ("student", "correct_cells_refined", "correct_cells_cell_centre", "teacher")


def _under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether the module or parameter ``name`` is one of ``prefixes`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_except(student: nn.Module, train_only: Sequence[str]) -> int:
    """Freeze every parameter of ``student`` outside the submodules named in ``train_only``.

    Returns:
        the number of parameters left trainable (those already frozen, such as the published layout's
        unused FPN layers, stay frozen).

    Raises:
        ValueError: a name that is not a submodule of the student (the error lists the top-level ones),
            or nothing left to train.
    """
    names = {name for name, _ in student.named_modules() if name}
    unknown = [p for p in train_only if p not in names]
    if unknown:
        top = sorted(name for name in names if "." not in name)
        raise ValueError(
            f"train_only: {unknown[0]!r} is not a module of the student; its modules: {', '.join(top)}"
        )
    trainable = 0
    for name, param in student.named_parameters():
        if not _under(name, train_only):
            param.requires_grad_(False)
        elif param.requires_grad:
            trainable += param.numel()
    if not trainable:
        raise ValueError(f"train_only={list(train_only)}: these modules have no trainable parameters")
    return trainable


# torch.utils.tensorboard's default histogram bins end at +-1e20 (TensorFlow's); values beyond are not counted
_HISTOGRAM_LIMIT = 1e20


def verified(matches: TeacherMatches, settings: Any = None) -> TeacherMatches:
    """A sparse teacher's matches with only those that pass the label cache's RANSAC check valid
    (:func:`loftr_kd.data.labels.checked_matches`, default :class:`~loftr_kd.data.labels.VerifySettings`):
    pseudo ground truth made online is checked as labels made offline are."""
    from loftr_kd.data.labels import VerifySettings, checked_matches

    valid = torch.zeros_like(matches.valid)
    for b, kept in enumerate(checked_matches(matches, settings or VerifySettings())):
        valid[b, torch.as_tensor(kept, dtype=torch.long, device=valid.device)] = True
    return matches._replace(valid=valid)


def _scalar_terms(terms: LossOutput) -> dict[str, torch.Tensor]:
    """The loss terms that are single numbers, by name, detached (for a warning; no device sync)."""
    return {
        name: value.detach()
        for name, value in terms._asdict().items()
        if torch.is_tensor(value) and value.numel() == 1
    }


def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimizer would apply is finite (one device sync)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


@dataclass(frozen=True)
class MonitoringConfig:
    """What the module logs besides scalars."""

    histogram_every_n_steps: int = 100
    log_match_images: bool = True


class Step(NamedTuple):
    """Everything one step computed (for logging)."""

    terms: LossOutput
    out: CoarseMatchOutput
    gt: CoarseGroundTruth
    grid: CoarseGrid
    teacher_out: TeacherOutput | None
    teacher_grid: CoarseGrid | None
    # the truth of the student's image0 points (B, L0, 2) and its validity (B, L0): the cell centres' (gt's)
    # or, for corner queries, each cell's query's
    truth1: torch.Tensor
    truth_valid: torch.Tensor


class DistillationModule(pl.LightningModule):
    """Student trained on depth-derived ground truth plus distillation from a frozen teacher.

    Args:
        student: the coarse student (trained).
        teacher: a frozen teacher (:mod:`loftr_kd.teachers`), or ``None`` to train on ground truth alone.
        loss: loss settings.
        supervision: ground-truth settings (default: :class:`SupervisionConfig` defaults).
        optimizer: partial optimizer (``hydra`` ``_partial_: true``), finished with the parameters here.
        scheduler: partial LR scheduler or ``None``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        monitoring: histogram period and match images.
        freeze_batchnorm: keep the student's BatchNorm layers in eval mode while training: their running
            statistics stay those of the initial weights (a fine-tune on another mix of data re-estimates
            them otherwise, docs/distillation.md); their affine weights still train.
        fit_validation: the robust-fit validation (:mod:`loftr_kd.validation`: homography and pose AUC of the
            one-pass matches); default: :class:`FitValidationConfig` defaults.
        train_only: train only the student's submodules with these names (e.g. ``("refinement",)``: a
            refinement-only fine-tune); every other parameter is frozen (``requires_grad=False``, left out of
            the optimizer) and every other BatchNorm holds its statistics. Empty: train everything.
        max_nonfinite_steps: a training batch whose loss is NaN or infinite (on any DDP rank) contributes
            nothing on every rank (a zero loss: DDP still reduces a gradient, as it must), the BatchNorm
            running statistics its forward pass moved are put back, and the optimizer step it belongs to
            updates nothing (its gradients are dropped before the update). A finite loss whose gradients are
            not (a backward pass that overflows, e.g. under an absurd loss weight) skips its optimizer step
            the same way (the BatchNorm statistics of its finite forward pass are kept); under 16-mixed the
            GradScaler does that itself, and its skips are counted in ``train/amp_skipped_steps`` instead.
            Each skipped optimizer step is warned about (naming its first bad batch) and counted once in
            ``train/nonfinite_steps``, however many of its ``accumulate_grad_batches`` micro-batches were
            bad, so the limit means the same with and without accumulation: after this many skipped
            optimizer steps in a row (no update in between) the run stops with
            :class:`~loftr_kd.errors.NonFiniteLossError` (its checkpoints are the last finite step's).
    """

    # Lightning's ThroughputMonitor reports FLOP/s where a module states its FLOPs per batch; not counted here
    flops_per_batch: int | None = None

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
        freeze_batchnorm: bool = False,
        fit_validation: FitValidationConfig | None = None,
        train_only: Sequence[str] = (),
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0  # skipped optimizer steps of this process since it started
        self.amp_skipped_steps = 0  # optimizer steps the 16-mixed GradScaler skipped (overflowing gradients)
        self._amp_scale: float | None = None
        self._nonfinite_in_a_row = 0
        # why the next optimizer step updates nothing: its first non-finite loss (what, terms, batch), if any
        self._skip: tuple[str, dict[str, torch.Tensor], int] | None = None
        self._loss_terms: dict[str, torch.Tensor] = {}  # the last finite training loss's terms, and its batch
        self._batch_idx = 0
        self.student = student
        self.train_only = tuple(train_only)
        # parameters left to train under train_only (None: all of them)
        self.trainable_count = freeze_except(student, self.train_only) if self.train_only else None
        self.teacher = teacher
        self.loss_config = loss
        self.criterion = DistillationLoss(loss, student.config.refine_window)
        self.supervision = supervision or SupervisionConfig()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitoring = monitoring or MonitoringConfig()
        self.freeze_batchnorm = freeze_batchnorm
        self.fit_validation = fit_validation or FitValidationConfig()
        self.save_hyperparameters(
            {
                "freeze_batchnorm": freeze_batchnorm,
                "train_only": list(self.train_only),
                "student_config": asdict(student.config),
                "loss": asdict(loss),
                "supervision": asdict(self.supervision),
                "teacher": teacher is not None,
            }
        )
        self.val_stats = nn.ModuleDict({who: MatchStatsMetric() for who in _STATS})
        self.val_fit = RobustFitMetric()
        self._vis_batch: dict[str, Any] | None = None

    def _hold_batchnorm_statistics(self) -> None:
        for name, module in self.student.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                self.freeze_batchnorm or (self.train_only and not _under(name, self.train_only))
            ):
                module.eval()

    def on_train_start(self) -> None:
        # Lightning (2.2+) keeps each submodule's mode across validation, so once is enough in fit.
        self._hold_batchnorm_statistics()

    def _amp_scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler of a 16-mixed run (Lightning's MixedPrecision plugin), else ``None``."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        scaler = self._amp_scaler()
        self._amp_scale = None if scaler is None else scaler.get_scale()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the optimizer step: a step skipped for its gradients is counted by now
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)
        # Under 16-mixed the GradScaler skips an optimizer step whose gradients overflow and halves its
        # scale: a lower scale after the batch is such a step, counted in train/amp_skipped_steps.
        scaler = self._amp_scaler()
        if scaler is None or self._amp_scale is None:
            return
        if scaler.get_scale() < self._amp_scale:
            self.amp_skipped_steps += 1
        self.log("train/amp_skipped_steps", float(self.amp_skipped_steps), batch_size=1)

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        if mode:
            self._hold_batchnorm_statistics()
        return self

    # ----------------------------------------------------------------------------------------- steps
    def _step(self, batch: dict[str, Any]) -> Step:
        """Student, ground truth, teacher and every loss term of a batch."""
        image0, image1 = batch["image0"], batch["image1"]
        height, width = (int(v) for v in image0.shape[-2:])
        grid = CoarseGrid.for_image(height, width, self.student.config.coarse_stride)
        teacher_grid = None
        if self.teacher is not None and SIMILARITY in self.teacher.provides:
            teacher_grid = CoarseGrid.for_image(height, width, int(self.teacher.stride), exact=False)
        out = self.student(image0, image1)
        teacher_out = None
        if self.teacher is not None:
            request = self.criterion.teacher_request(self.teacher, grid, teacher_grid, image0.device)
            teacher_out = self.teacher(image0, image1, **request)
            if not has_ground_truth(batch) and teacher_out.matches is not None:
                # a sparse teacher labels online, checked as the label cache checks its labels
                batch = {**batch, **verified(teacher_out.matches).as_batch()}
        gt = coarse_ground_truth(batch, stride=grid.stride, depth_tolerance=self.supervision.depth_tolerance)
        refine_ids = self.criterion.refinement_ids(out, gt, grid)
        refined = None if refine_ids is None else self.student.refine(out, refine_ids, image0)
        truth1, truth_valid = gt.points1, gt.valid
        if refined is not None and refined.points0 is not None:  # corner queries: the truth at the queries
            truth1, truth_valid = point_ground_truth(
                batch, refined.points0, grid.stride, self.supervision.depth_tolerance
            )
        terms = self.criterion(
            out,
            gt,
            grid,
            teacher_out,
            teacher_grid,
            refine_ids,
            refined,
            (truth1, truth_valid),
            teacher_origin=getattr(self.teacher, "cell_origin", None),
        )
        return Step(terms, out, gt, grid, teacher_out, teacher_grid, truth1, truth_valid)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # the forward pass moves the training BatchNorm layers' running statistics: kept to undo a bad step's
        statistics = [
            (buffer, buffer.clone())
            for module in self.student.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
            for buffer in module.buffers()
        ]
        step = self._step(batch)
        size = batch["image0"].shape[0]
        finite = self.trainer.strategy.reduce_boolean_decision(
            bool(torch.isfinite(step.terms.total.detach())), all=True
        )  # every rank skips together, so DDP's gradient reduction stays in step
        if not finite:
            with torch.no_grad():
                for buffer, before in statistics:
                    buffer.copy_(before)
            if self._skip is None:  # the optimizer step's first bad micro-batch is the one its warning names
                self._skip = ("loss", _scalar_terms(step.terms), batch_idx)
            # Lightning refuses a skipped (None) step under DDP, whose reduction needs a backward on every
            # rank: a zero loss over the trained parameters gives one; on_before_optimizer_step drops it all.
            return sum(
                (p.sum() * 0.0 for p in self.student.parameters() if p.requires_grad),
                start=step.terms.total.new_zeros(()),
            )
        self._loss_terms, self._batch_idx = _scalar_terms(step.terms), batch_idx  # for a gradient warning
        self._log_terms("train", step.terms, size, prog_bar=True)
        self.log("train/gt_matches_per_pair", (step.gt.match_ids >= 0).sum() / size, batch_size=size)
        return step.terms.total

    def _skip_nonfinite(self, what: str, terms: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Count a skipped optimizer step (its ``what``, a micro-batch's loss or the step's gradients, is
        NaN/inf somewhere), say so, stop after too many in a row."""
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        listed = ", ".join(f"{name} {float(value):.4g}" for name, value in terms.items())
        where = f"epoch {self.current_epoch}, batch {batch_idx}"
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            from loftr_kd.errors import NonFiniteLossError

            raise NonFiniteLossError(
                f"{self._nonfinite_in_a_row} training steps in a row had a non-finite {what} (the last at {where}: "
                f"{listed} on this rank); they were skipped, so the weights and checkpoints are the last "
                f"finite step's. Check the learning rate (optim.optimizer.lr), the loss weights (loss.*), "
                f"init_weights, and the data (data/ counters in TensorBoard); "
                f"max_nonfinite_steps={self.max_nonfinite_steps} sets the limit"
            )
        rank_zero_warn(
            f"non-finite training {what} at {where} ({listed} on this rank): optimizer step skipped, weights unchanged "
            f"({self.nonfinite_steps} so far, {self._nonfinite_in_a_row} in a row; the run stops at "
            f"{self.max_nonfinite_steps} in a row)"
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this once per optimizer step, after the (DDP-reduced, AMP-unscaled) gradients of
        # every accumulated micro-batch exist and before clipping. Under 16-mixed the GradScaler skips
        # overflowing gradients itself; elsewhere a finite loss with NaN/inf gradients is skipped here.
        if self._skip is None and self._amp_scaler() is None and not _finite_gradients(optimizer):
            self._skip = ("gradient", self._loss_terms, self._batch_idx)
        self._log_histograms(gradients=self._skip is None)
        if self._skip is None:
            self._nonfinite_in_a_row = 0  # an update happens: the count of skipped steps in a row restarts
            return
        skip, self._skip = self._skip, None
        self._skip_nonfinite(*skip)
        # a parameter without a gradient is left alone by the optimizer: no step, no decay, no moment update
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        step = self._step(batch)
        out, gt = step.out, step.gt
        size = batch["image0"].shape[0]
        self._log_terms("val", step.terms, size, sync_dist=True)
        self.log(
            "val/student/mae", confidence_mae(out.confidence, gt.match_ids), batch_size=size, sync_dist=True
        )
        self.val_stats["student"].update(
            out.points1, out.match_ids, step.truth1, step.truth_valid, gt.match_ids
        )
        if self.student.refines:
            exact = torch.where(
                out.match_ids == gt.match_ids, out.match_ids, torch.full_like(out.match_ids, -1)
            )
            # refined: the student's points against their own truth; cell centre: image1's centre of the
            # right cell against the truth of image0's centre
            for who, points, truth, valid in (
                ("refined", out.points1, step.truth1, step.truth_valid),
                ("cell_centre", step.grid.ids_to_pixels(exact), gt.points1, gt.valid),
            ):
                self.val_stats[f"correct_cells_{who}"].update(points, exact, truth, valid, gt.match_ids)
        if self.fit_validation.enabled and fit_kind(batch) is not None:
            cfg = self.fit_validation
            matches = one_pass_matches(
                out, step.grid, cfg.match_threshold, self.student.config.border_removal
            )
            self.val_fit.update(pair_fit_errors(batch, matches, cfg))
        vis = {
            "student": (
                out.points0[0],
                out.points1[0],
                out.match_ids[0] >= 0,
                step.truth1[0],
                step.truth_valid[0],
            )
        }
        if step.teacher_out is not None and step.teacher_out.confidence is not None:
            vis["teacher"] = self._validate_teacher(batch, step, size)
        if batch_idx == 0:
            self._vis_batch = {
                "image0": batch["image0"][0, 0].detach().float().cpu(),
                "image1": batch["image1"][0, 0].detach().float().cpu(),
                "runs": {k: tuple(t.detach().cpu() for t in v) for k, v in vis.items()},
            }

    def _validate_teacher(self, batch: dict[str, Any], step: Step, size: int) -> tuple[torch.Tensor, ...]:
        """The teacher's figures on its own grid, under the student's match rule; its match picture."""
        grid, confidence = step.teacher_grid, step.teacher_out.confidence
        gt = coarse_ground_truth(batch, stride=grid.stride, depth_tolerance=self.supervision.depth_tolerance)
        cfg = self.student.config
        ids = teacher_coarse_matches(
            confidence, grid, cfg.match_threshold, cfg.border_removal, cfg.coarse_stride
        )
        points1 = grid.ids_to_pixels(ids)
        self.val_stats["teacher"].update(points1, ids, gt.points1, gt.valid, gt.match_ids)
        self.log("val/teacher/mae", confidence_mae(confidence, gt.match_ids), batch_size=size, sync_dist=True)
        return grid.centers(device=ids.device), points1[0], ids[0] >= 0, gt.points1[0], gt.valid[0]

    def _log_terms(self, stage: str, terms: LossOutput, size: int, **options: Any) -> None:
        """Every loss term that this run has (``kd`` with a teacher, refinement terms when refining)."""
        self.log(f"{stage}/loss", terms.total, batch_size=size, **options)
        options.pop("prog_bar", None)
        named = {"loss_gt": terms.gt, "loss_refine": terms.refine, "loss_refine_kd": terms.refine_kd}
        if stage == "train" and self.teacher is not None:
            named["loss_kd"] = terms.kd
        for name, value in named.items():
            if value is not None and (stage == "train" or name != "loss_gt"):
                self.log(f"{stage}/{name}", value, batch_size=size, **options)

    def on_validation_epoch_start(self) -> None:
        self._vis_batch = None

    def on_validation_epoch_end(self) -> None:
        for who, metric in self.val_stats.items():
            if not metric.update_called:
                continue
            summary = metric.compute()  # summed over the DDP ranks by torchmetrics
            metric.reset()
            if who == "student":
                self.log("val/pairs", summary["num_pairs"], sync_dist=False, rank_zero_only=False)
            for name, value in summary.items():
                if name == "num_pairs" or not np.isfinite(value):
                    continue
                if who.startswith("correct_cells") and not name.startswith("epe"):
                    continue
                show = who == "student" and name in ("precision@3px", "f1")
                self.log(
                    f"val/{who}/{name}", float(value), prog_bar=show, sync_dist=False, rank_zero_only=False
                )
        if self.val_fit.update_called:
            fit = self.val_fit.compute()  # errors of every DDP rank's pairs, concatenated
            self.val_fit.reset()
            for name, value in fit.items():
                show = name.startswith("auc@")
                self.log(f"val/student/{name}", value, prog_bar=show, sync_dist=False, rank_zero_only=False)
        if self.monitoring.log_match_images and self._vis_batch is not None:
            self._log_match_images(self._vis_batch)

    # ------------------------------------------------------------------------------------ monitoring
    def _log_histograms(self, gradients: bool) -> None:
        """Parameter (and gradient) histograms every ``histogram_every_n_steps`` optimizer steps, from
        :meth:`on_before_optimizer_step`: the gradients are the whole accumulated step's, unscaled under
        16-mixed; a skipped step's gradients are not logged. A tensor with values beyond TensorBoard's
        bins (|x| > 1e20, or NaN/inf: its histogram would be empty or wrong, and TensorBoard raises on an
        empty one) is left out with a warning: monitoring never stops a run."""
        period = self.monitoring.histogram_every_n_steps
        tensorboard = self._tensorboard()
        if tensorboard is None or period <= 0 or self.global_step % period:
            return
        left_out = {}
        for name, param in self.student.named_parameters():
            tensors = {"params": param, "grads": param.grad if gradients else None}
            for kind, tensor in tensors.items():
                if tensor is None:
                    continue
                values = tensor.detach().float().flatten().cpu()
                largest = float(values.abs().max()) if values.numel() else 0.0
                if largest <= _HISTOGRAM_LIMIT:  # False for NaN
                    tensorboard.add_histogram(f"{kind}/{name}", values, self.global_step)
                else:
                    left_out[f"{kind}/{name}"] = largest
        if left_out:
            worst = max(left_out, key=lambda tag: left_out[tag])  # NaN sorts anywhere: named as found
            rank_zero_warn(
                f"{len(left_out)} histograms left out at step {self.global_step}: values beyond TensorBoard's "
                f"bins (|x| > 1e20 or NaN/inf; {worst}: {left_out[worst]:.3g})"
            )

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

    # ------------------------------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> Any:
        params = self.student.parameters()
        if self.train_only:  # (only then: an older run's optimizer state holds every parameter)
            params = [p for p in params if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
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
