"""Training: ``train(cfg)`` does the work on a composed ``conf/train.yaml`` (tests call it with
``hydra.compose``); the command ``loftr-kd-train`` / ``make train`` (``loftr_kd.cli.train``) only wraps it
as a Hydra app so overrides, multirun sweeps and the saved ``.hydra/`` config work the same everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from loftr_kd.config import register_resolvers
from loftr_kd.config_check import check_train_config, trial_hook_config
from loftr_kd.distributed import is_rank_zero_process
from loftr_kd.errors import EXIT_SIGINT, EXIT_SIGTERM, one_line
from loftr_kd.files import torch_save, write_json, write_text
from loftr_kd.lightning_module import DistillationModule, MonitoringConfig
from loftr_kd.models.student import count_parameters, init_student_weights
from loftr_kd.resume import (  # noqa: F401 - public here since before they moved
    RESUMABLE_NAMES,
    ResumeError,
    check_init_weights,
    check_resume_has_work,
    check_resumed_student,
    resolve_resume_checkpoint,
)
from loftr_kd.rundir import RunDirError, claim_run_dir, end_state, mark_run, run_metadata
from loftr_kd.runtime.sessions import default_threads
from loftr_kd.runtime.torch_backend import torch_threads
from loftr_kd.supervision import SupervisionConfig
from loftr_kd.validation import FitValidationConfig

log = logging.getLogger("loftr_kd.train")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside its target, then rename it into place.

    A run killed while saving never leaves a truncated ``last.ckpt`` or ``best-*.ckpt`` behind: readers see
    either the previous complete file or the new one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        torch_save(checkpoint, path)


def _say(message: str) -> None:
    """One clear line on the console and in the run log."""
    log.info(message)
    if not logging.getLogger().handlers:
        print(message, flush=True)


# The teachers' module before they became the ``loftr_kd.teachers`` package: configs saved by earlier runs
# (``make rerun``) name their builders there.
_FORMER_TEACHER_MODULE = "loftr_kd.models.teacher."


def teacher_from_config(cfg: DictConfig) -> torch.nn.Module | None:
    """Instantiate the teacher, or ``None`` for ``teacher=none``.

    With ``teacher.weights=auto`` (the default) and no LoFTR checkpoint in ``weights/``, training goes on
    with ground truth alone and says so; an explicit path that does not exist is an error.
    """
    if not cfg.get("teacher"):
        _say("Teacher: none (teacher=none) — loss = ground truth only.")
        return None
    from hydra.errors import InstantiationException

    from loftr_kd.teachers import TeacherCheckpointNotFound

    teacher_cfg = cfg.teacher
    target = str(teacher_cfg.get("_target_", ""))
    if target.startswith(_FORMER_TEACHER_MODULE):  # a run saved before the teachers became a package
        teacher_cfg = OmegaConf.merge(
            teacher_cfg, {"_target_": "loftr_kd.teachers." + target.rpartition(".")[2]}
        )
    try:
        teacher = hydra.utils.instantiate(teacher_cfg)
    except InstantiationException as error:
        # Hydra wraps the target's exception; only a missing *optional* default checkpoint is tolerated.
        missing = error.__cause__
        if not isinstance(missing, TeacherCheckpointNotFound) or str(cfg.teacher.get("weights")) != "auto":
            raise (missing or error) from None  # the teacher's own one-line message, not Hydra's wrapper
        _say(f"Teacher: none — {missing} Training on ground truth only.")
        return None
    source = getattr(teacher, "checkpoint_path", cfg.teacher.get("weights"))
    provides = ", ".join(sorted(teacher.provides))
    grid = f", stride {teacher.stride}" if teacher.stride else ""
    _say(
        f"Teacher: {teacher.name} from {source} ({count_parameters(teacher) / 1e6:.2f} M parameters, frozen{grid}; "
        f"provides {provides})."
    )
    return teacher


def build_loss_and_supervision(cfg: DictConfig) -> tuple[Any, SupervisionConfig]:
    """``LossConfig`` and ``SupervisionConfig`` of a run; ``loss.depth_tolerance`` (the setting's older
    name) still sets ``supervision.depth_tolerance``."""
    loss = hydra.utils.instantiate(cfg.loss, _convert_="all")
    supervision = hydra.utils.instantiate(cfg.supervision)
    if loss.depth_tolerance is not None:
        supervision = SupervisionConfig(depth_tolerance=loss.depth_tolerance)
        _say(f"loss.depth_tolerance={loss.depth_tolerance} sets supervision.depth_tolerance (its new name).")
    return loss, supervision


def _check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer (``trainer=gpu``, ``experiment=paper``) on a machine without CUDA is one line before any
    work (Lightning's own error comes after the data are set up, in several lines)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    mps = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's "gpu" is Apple's GPU too
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not mps:
        raise ValueError(
            f"trainer.accelerator={accelerator}, but torch sees no CUDA GPU on this machine: add trainer=cpu "
            "(experiment=paper and trainer=gpu/ddp choose the GPU), or install torch's CUDA build"
        )


def _resolve_precision(cfg: DictConfig) -> str:
    """``16-mixed`` needs CUDA; on CPU fall back to full precision and say so."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if precision in ("16", "16-mixed", "bf16-mixed", "bf16") and not on_gpu:
        _say(f"Precision: {precision} needs a CUDA GPU; none in use, so training runs in 32-true on the CPU.")
        return "32-true"
    return precision


def _amp_plugins(precision: str, cfg: DictConfig) -> list[Any]:
    """Lightning's own AMP, with the GradScaler's initial scale from config (the paper used 2⁸)."""
    if precision not in ("16", "16-mixed"):
        return []
    from pytorch_lightning.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cuda", init_scale=float(cfg.get("amp_init_scale", 256.0)))
    return [MixedPrecision("16-mixed", "cuda", scaler=scaler)]


def build_trainer(cfg: DictConfig, output_dir: Path) -> pl.Trainer:
    """The Lightning trainer with callbacks, loggers and atomic checkpoint IO from config."""
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers:
        from pytorch_lightning.callbacks import LearningRateMonitor

        dropped = [type(c).__name__ for c in callbacks if isinstance(c, LearningRateMonitor)]
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        if dropped:
            _say(f"Logger: none (logger=none); {', '.join(dropped)} needs a logger and is left out.")
    from loftr_kd.callbacks import CarryBestCheckpoint, InterruptCheckpoint

    callbacks.append(InterruptCheckpoint(output_dir / "checkpoints"))
    callbacks.append(CarryBestCheckpoint())  # a run resumed into a new folder keeps the earlier best
    precision = _resolve_precision(cfg)
    plugins: list[Any] = [AtomicCheckpointIO(), *_amp_plugins(precision, cfg)]
    overrides: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False, "plugins": plugins}
    if plugins[1:]:
        overrides["precision"] = None  # given by the MixedPrecision plugin
    else:
        overrides["precision"] = precision
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("precision", None)
    trainer_cfg["default_root_dir"] = str(output_dir)
    return hydra.utils.instantiate(trainer_cfg, **{k: v for k, v in overrides.items() if v is not None})


def _monitor_checkpoint(trainer: pl.Trainer) -> Any | None:
    """The ModelCheckpoint that tracks the optimised metric (``best_checkpoint`` in conf/callbacks)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)


def _best_score(trainer: pl.Trainer) -> float | None:
    """The best value of the monitored metric (what sweepers optimise)."""
    callback = _monitor_checkpoint(trainer)
    if callback is None or callback.best_model_score is None:
        return None
    return float(callback.best_model_score)


def _best_checkpoint(trainer: pl.Trainer, output_dir: Path) -> Path | None:
    """The best checkpoint, else ``last.ckpt`` (a run without the monitored metric)."""
    callback = _monitor_checkpoint(trainer)
    if callback is not None and callback.best_model_path:
        return Path(callback.best_model_path)
    last = output_dir / "checkpoints" / "last.ckpt"
    return last if last.exists() else None


def export_at_end(cfg: DictConfig, checkpoint: Path, output_dir: Path, datamodule: Any) -> dict[str, Any]:
    """The export pipeline (``loftr_kd.export.pipeline``) on the best student, with ``deploy.*`` settings.

    Parity is checked on real validation pairs. Failures are reported and returned; they never touch the
    checkpoints and never end the run.
    """
    from loftr_kd.export.pipeline import ExportSettings, run_pipeline

    result: dict[str, Any] = {"checkpoint": str(checkpoint)}
    settings = ExportSettings.from_mapping(OmegaConf.to_container(cfg.deploy, resolve=True))
    if not settings.enabled:
        _say("Export: disabled (deploy.enabled=false).")
        return result
    try:
        parity = _parity_pairs(datamodule, settings.parity_pairs)
        result.update(
            run_pipeline(checkpoint, output_dir / "export", settings, parity_pairs=parity, say=_say)
        )
    except Exception as error:  # noqa: BLE001 - ExportError or anything else: it must not end the run
        _say(
            f"Export: FAILED ({type(error).__name__}: {error}); checkpoints are untouched in {checkpoint.parent}."
        )
        result["onnx_error"] = f"{type(error).__name__}: {error}"
    except KeyboardInterrupt:
        # Training is done and its checkpoints are whole; what the export wrote so far is unchecked (an
        # .onnx without its parity report): removed, so the run ends finished and the export can be redone.
        import shutil

        shutil.rmtree(output_dir / "export", ignore_errors=True)
        _say(
            f"Export: interrupted (Ctrl-C); its partial files were removed and the checkpoints are untouched. "
            f"Export later with: loftr-kd-export ckpt_path={output_dir}"
        )
        result["onnx_error"] = "interrupted (Ctrl-C)"
    return result


def _parity_pairs(datamodule: Any, count: int) -> list[tuple[Any, Any]]:
    """A few real validation image pairs (numpy, float32 [0, 1], (H, W)) for ONNX parity checks."""
    if count <= 0:
        return []
    dataset = datamodule.val_dataset if hasattr(datamodule, "val_dataset") else None
    if dataset is None:
        return []
    pairs = []
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        pairs.append((item["image0"][0].numpy(), item["image1"][0].numpy()))
    return pairs


def _how_to_use(best: Path, onnx: str | None) -> str:
    """The run's last line: the commands that use its student."""
    deploy = f"; for deployment: {onnx} (static shapes, one pass)" if onnx else ""
    return (
        f"Use the student: loftr-kd-match a.jpg b.jpg --weights {best} (guided registration; Python: "
        f"Matcher('{best}')); loftr-kd-evaluate methods.student.weights={best} "
        f"methods.student_one_pass.weights={best}{deploy}."
    )


def _preset_name(cfg: DictConfig) -> str:
    """The student preset this run chose (``student=...``), for messages."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get("student"))
    except Exception:  # noqa: BLE001 - train(cfg) outside a Hydra run
        return "<this config>"


def _sweep_job() -> dict[str, Any] | None:
    """This job's number, overrides and student choice in a Hydra sweep (a trial hook records them)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        return {
            "num": int(hydra_cfg.job.num),
            "overrides": list(hydra_cfg.overrides.task),
            "student_choice": hydra_cfg.runtime.choices.get("student"),
        }
    except Exception:  # noqa: BLE001 - train(cfg) outside a Hydra sweep
        return None


def _may_prune(output_dir: Path) -> bool:
    """Whether a trial hook may end a run before training: in an Optuna sweep, whose study takes the
    penalty, or when ``train(cfg)`` is called without Hydra (the caller's config decides). A single Hydra
    run or a sweep by another sweeper (``-m seed=1,2`` over a trial's config) trains."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except ValueError:  # train(cfg) outside a Hydra app
        return True
    here = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None)
    if here is None or Path(str(here)).resolve() != output_dir.resolve():
        return True  # Hydra's config of an earlier app in this process, not this run's: called without Hydra
    sweeper = str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or "")
    return hydra_cfg.mode == RunMode.MULTIRUN and "optuna" in sweeper.lower()


class SweepTrial(Protocol):
    """One run of a sweep as its trial hook sees it (:class:`TrialHook`)."""

    student: torch.nn.Module | None  # the student to train
    done: Any  # not None: the value to return at once, without loading data or training

    def fail(self, error: BaseException) -> None:
        """Training raised ``error`` (it is raised on)."""

    def finish(self, best_score: float | None, summary: dict[str, Any]) -> float | list[float]:
        """The run ended with ``best_score``: what ``train()`` returns to the sweeper."""


class TrialHook(Protocol):
    """What a ``search:`` block builds (its ``_target_``, e.g. :class:`loftr_kd.search.StudentSearch`):
    ``train()`` asks it before any data is loaded and hands it the end of the run."""

    def begin(
        self,
        output_dir: Path,
        config: dict[str, Any],
        build_student: Callable[[], torch.nn.Module],
        job: dict[str, Any] | None,
    ) -> SweepTrial:
        """Start the trial of a run: ``config`` is its resolved config (plain), ``job`` its sweep job
        (``None`` outside a Hydra sweep)."""


def _stopped_by_sigterm(trainer: pl.Trainer, output_dir: Path) -> None:
    """SIGTERM (batch systems, ``timeout``): say where the resumable checkpoint is, exit 143."""
    from loftr_kd.callbacks import InterruptCheckpoint

    saved = next((c.saved for c in trainer.callbacks if isinstance(c, InterruptCheckpoint)), None)
    if trainer.is_global_zero:
        where = (
            f"resumable checkpoint {saved} (global step {trainer.global_step})"
            if saved
            else "no checkpoint could be written"
        )
        _say(
            f"Stopped by SIGTERM at global step {trainer.global_step}: {where}. Resume with the same "
            f'settings and ckpt_path={output_dir} (or make rerun RUN={output_dir} ARGS="ckpt_path={output_dir}").'
        )
    mark_run(output_dir, end_state(output_dir), error="SIGTERM")
    raise SystemExit(EXIT_SIGTERM)


def _stopped_by_ctrl_c(trainer: pl.Trainer, output_dir: Path) -> None:
    """Ctrl-C: Lightning said "attempting graceful shutdown" and exits with status 1; say what is there to
    resume from (no checkpoint is written now: the interrupt may have come mid-step) and exit 130."""
    checkpoints = sorted((output_dir / "checkpoints").glob("*.ckpt")) if is_rank_zero_process() else []
    if trainer.is_global_zero:
        where = (
            f"resume from its newest checkpoint with the same settings and ckpt_path={output_dir} (step.ckpt "
            "lags by at most callbacks.step_checkpoint.every_n_train_steps steps)"
            if checkpoints
            else "no checkpoint was written yet"
        )
        _say(f"Stopped by Ctrl-C at global step {trainer.global_step}: {where}.")
    mark_run(output_dir, end_state(output_dir), error="SIGINT (Ctrl-C)")
    raise SystemExit(EXIT_SIGINT)


def check_output_dir(output_dir: Path) -> None:
    """Claim the run directory (:func:`loftr_kd.rundir.claim_run_dir`): one that holds another run is
    refused and left untouched. Under ``loftr-kd-train`` the Hydra callback claimed it already, before
    Hydra wrote ``.hydra/`` into it.

    Raises:
        RunDirError: taken by another run, read-only or full.
    """
    if not is_rank_zero_process():
        return  # DDP ranks > 0 share rank 0's run directory
    claim_run_dir(output_dir, "train")


def train(cfg: DictConfig) -> float | list[float] | None:
    """Train a student as configured; return the optimised metric (for sweepers).

    Args:
        cfg: composed ``conf/train.yaml``.

    Returns:
        The best value of ``cfg.optimized_metric`` (``None`` if it was never logged); in a sweep with a
        trial hook (``cfg.search``, e.g. the student search) the trial's objective
        (:meth:`SweepTrial.finish`).
    """
    register_resolvers()
    # Every input is checked before any work: config types and ranges, the checkpoint to resume from,
    # the run directory.
    check_train_config(cfg)
    _check_accelerator(cfg)
    output_dir = Path(cfg.paths.output_dir)
    try:
        # a sweep's trial hook builds its own student (the student search): only readability is checked then
        check_init_weights(
            cfg.get("init_weights"), cfg.get("student") if trial_hook_config(cfg) is None else None
        )
        ckpt_path = resolve_resume_checkpoint(cfg.get("ckpt_path"))
        check_resume_has_work(ckpt_path, cfg.trainer.get("max_epochs"))
        check_output_dir(output_dir)
    except RunDirError:
        raise
    except BaseException as error:
        mark_run(output_dir, end_state(output_dir), error=one_line(error))  # the callback's claim
        raise
    try:
        # the thread policy of conf/train.yaml (torch, and the end-of-run export's onnxruntime checks)
        with torch_threads(cfg.get("threads")), default_threads(cfg.get("threads")):
            score = _train(cfg, output_dir, ckpt_path)
    except BaseException as error:
        mark_run(output_dir, end_state(output_dir), error=one_line(error))
        raise
    mark_run(output_dir, "finished")
    return score


def _train(cfg: DictConfig, output_dir: Path, ckpt_path: str | None) -> float | list[float] | None:
    """:func:`train` once its inputs are checked and its run directory is claimed."""
    pl.seed_everything(int(cfg.seed), workers=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "run_info.json", run_metadata())
    # .hydra/config.yaml keeps the interpolations (it is what `make rerun` composes); this one is resolved.
    resolved = {k: v for k, v in cfg.items() if k != "hydra"}
    write_text(
        output_dir / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved), resolve=True)
    )

    trial = None
    hook_config = trial_hook_config(cfg)
    if hook_config is not None and hook_config.get("prune") and not _may_prune(output_dir):
        # A trial run again on its own (make rerun of a trial, its saved .hydra config): nothing optimises its
        # objective, and its latency is as noisy as in the sweep, so a prune would end the run "finished" with
        # nothing trained. The latency is still measured and recorded (search_trial.json); the run trains.
        hook_config = {**hook_config, "prune": False}
        _say(
            "Search: not in an Optuna sweep (a trial run again on its own): the latency gate reports and "
            "never prunes; training."
        )
    if hook_config is not None:
        # A sweep's trial (the student search: the untrained student's latency is measured first) may end
        # here, before any data is loaded.
        hook: TrialHook = hydra.utils.instantiate(hook_config, _convert_="all")
        run_config = OmegaConf.to_container(OmegaConf.create(resolved), resolve=True)
        trial = hook.begin(output_dir, run_config, lambda: hydra.utils.instantiate(cfg.student), _sweep_job())
        if trial.done is not None:
            return trial.done
    student = trial.student if trial is not None else hydra.utils.instantiate(cfg.student)
    check_resumed_student(ckpt_path, student, _preset_name(cfg))
    teacher = teacher_from_config(cfg)  # before the data: a bad teacher file stops the run at once
    datamodule = hydra.utils.instantiate(cfg.data)
    _say(f"Student: {count_parameters(student):,} parameters — {student.config}")
    if cfg.get("init_weights"):
        # Fine-tuning: start from trained weights (a fresh run: new optimizer, epochs from 0).
        fresh = init_student_weights(student, cfg.init_weights)
        _say(
            f"Student: initialised from {cfg.init_weights}"
            + (f" ({len(fresh)} refinement weights start fresh)." if fresh else ".")
        )
    loss, supervision = build_loss_and_supervision(cfg)
    model = DistillationModule(
        student=student,
        teacher=teacher,
        loss=loss,
        supervision=supervision,
        optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
        scheduler=hydra.utils.instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        scheduler_interval=str(cfg.optim.get("scheduler_interval", "epoch")),
        monitoring=MonitoringConfig(**OmegaConf.to_container(cfg.monitoring, resolve=True)),
        freeze_batchnorm=bool(cfg.get("freeze_batchnorm", False)),
        train_only=list(cfg.get("train_only") or ()),
        max_nonfinite_steps=int(cfg.get("max_nonfinite_steps", 10)),
        # absent from configs saved before it existed (a rerun of an older run): the defaults
        fit_validation=FitValidationConfig(
            **(OmegaConf.to_container(cfg.fit_validation, resolve=True) if cfg.get("fit_validation") else {})
        ),
    )
    if model.train_only:
        _say(
            f"Student: training only {', '.join(model.train_only)} ({model.trainable_count:,} parameters); "
            "the rest is frozen."
        )
    trainer = build_trainer(cfg, output_dir)
    start: dict[str, float] = {}
    try:
        if cfg.get("validate_before_training") and not ckpt_path:
            results = trainer.validate(model, datamodule=datamodule, verbose=False)
            start = results[0] if results else {}  # no validation batches (e.g. limit_val_batches=0)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        _stopped_by_sigterm(trainer, output_dir)
    except SystemExit:
        if trainer.interrupted:  # Lightning's own exit after a KeyboardInterrupt
            _stopped_by_ctrl_c(trainer, output_dir)
        raise
    except Exception as error:
        if trial is not None:
            trial.fail(error)  # the search's report lists it with the reason
        raise

    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    best = _best_checkpoint(trainer, output_dir)
    best_score = _best_score(trainer)
    metric_name = str(cfg.get("optimized_metric"))
    summary: dict[str, Any] = {
        "output_dir": str(output_dir),
        "optimized_metric": {
            "name": metric_name,
            "before_training": start.get(metric_name),
            "best": best_score,
        },
        "student_parameters": count_parameters(student),
        "teacher": teacher is not None,
        "final_metrics": metrics,
        # every validation figure of the starting weights (validate_before_training), e.g. to score a
        # checkpoint without training: init_weights=<ckpt> trainer.max_epochs=0
        "before_training": {k: float(v) for k, v in start.items()},
        "best_checkpoint": str(best) if best else None,
    }
    if trainer.is_global_zero:
        if best is not None:
            summary["export"] = export_at_end(cfg, best, output_dir, datamodule)
        else:
            _say("Export: skipped — no checkpoint was written.")
        write_json(output_dir / "summary.json", summary)
        if metric_name in start and best_score is not None:
            _say(
                f"Learning: {metric_name} {start[metric_name]:.3f} before training -> {best_score:.3f} best ({best})."
            )
        written = ["summary.json"] + [
            f"{d}/" for d in ("checkpoints", "tensorboard", "export") if (output_dir / d).is_dir()
        ]
        _say(f"Run finished: {output_dir} ({', '.join(written)}).")
        if best is not None:
            _say(_how_to_use(best, summary.get("export", {}).get("onnx")))
    score = best_score if best_score is not None else metrics.get(metric_name)
    if trial is not None:
        return trial.finish(score, summary)
    return score
