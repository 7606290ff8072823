"""Training entry point: ``loftr-kd-train`` / ``make train``.

``train(cfg)`` does the work on a composed config (tests call it with ``hydra.compose``); ``main`` only
wraps it with ``@hydra.main`` so overrides, multirun sweeps and the saved ``.hydra/`` config work the same
everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO

from loftr_kd.config import CONFIG_DIR, register_resolvers
from loftr_kd.config_check import check_train_config
from loftr_kd.errors import debug_enabled, is_user_error, one_line, report, root_cause
from loftr_kd.lightning_module import DistillationModule, MonitoringConfig
from loftr_kd.models.student import count_parameters, init_student_weights
from loftr_kd.paths import REPO_ROOT

log = logging.getLogger("loftr_kd.train")

_PACKAGES = (
    "torch",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "kornia",
    "numpy",
    "opencv-python",
    "onnx",
    "onnxruntime",
    "tensorboard",
    "loftr-kd",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside its target, then rename it into place.

    A run killed while saving never leaves a truncated ``last.ckpt`` or ``best-*.ckpt`` behind: readers see
    either the previous complete file or the new one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _say(message: str) -> None:
    """One clear line on the console and in the run log."""
    log.info(message)
    if not logging.getLogger().handlers:
        print(message, flush=True)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def run_metadata() -> dict[str, Any]:
    """Git commit, package versions and machine of this run (stored in the run directory)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }


def build_teacher(cfg: DictConfig) -> torch.nn.Module | None:
    """Instantiate the teacher, or ``None`` for ``teacher=none``.

    With ``teacher.weights=auto`` (the default) and no LoFTR checkpoint in ``weights/``, training goes on
    with ground truth alone and says so; an explicit path that does not exist is an error.
    """
    if not cfg.get("teacher"):
        _say("Teacher: none (teacher=none) — loss = ground truth only.")
        return None
    from hydra.errors import InstantiationException

    from loftr_kd.models.teacher import TeacherCheckpointNotFound

    try:
        teacher = hydra.utils.instantiate(cfg.teacher)
    except InstantiationException as error:
        # Hydra wraps the target's exception; only a missing *optional* default checkpoint is tolerated.
        missing = error.__cause__
        if not isinstance(missing, TeacherCheckpointNotFound) or str(cfg.teacher.get("weights")) != "auto":
            raise
        _say(f"Teacher: none — {missing} Training on ground truth only.")
        return None
    source = getattr(teacher, "checkpoint_path", cfg.teacher.get("weights"))
    _say(
        f"Teacher: LoFTR outdoor from {source} ({count_parameters(teacher) / 1e6:.2f} M parameters, frozen)."
    )
    return teacher


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
    """Export the best student to ONNX (verified in onnxruntime) and, where possible, a TensorRT engine.

    Failures are reported and returned; they never touch the checkpoints.
    """
    deploy = cfg.deploy
    result: dict[str, Any] = {"checkpoint": str(checkpoint)}
    if not deploy.enabled:
        _say("Export: disabled (deploy.enabled=false).")
        return result
    export_dir = output_dir / "export"
    try:
        from loftr_kd.export.onnx import export_student

        parity = _parity_pairs(datamodule, int(deploy.parity_pairs))
        exported = export_student(
            checkpoint,
            export_dir,
            height=int(deploy.height),
            width=int(deploy.width),
            batch=int(deploy.batch),
            dynamic=bool(deploy.dynamic),
            opset=int(deploy.opset),
            parity_pairs=parity,
        )
    except Exception as error:  # noqa: BLE001 - ExportError or anything else: it must not end the run
        _say(
            f"Export: FAILED ({type(error).__name__}: {error}); checkpoints are untouched in {checkpoint.parent}."
        )
        result["onnx_error"] = f"{type(error).__name__}: {error}"
        return result
    onnx_path = Path(getattr(exported, "onnx_path", exported))
    result["onnx"] = str(onnx_path)
    result["onnx_report"] = str(getattr(exported, "report_path", ""))
    _say(f"Export: ONNX written to {onnx_path} and verified in onnxruntime.")
    if not deploy.tensorrt.enabled:
        _say("TensorRT: skipped (deploy.tensorrt.enabled=false).")
        return result
    from loftr_kd.export.tensorrt import TensorRTUnavailable, build_engine

    engine_path = onnx_path.with_suffix(".fp16.engine" if deploy.tensorrt.fp16 else ".fp32.engine")
    try:
        build_engine(
            onnx_path,
            engine_path,
            fp16=bool(deploy.tensorrt.fp16),
            workspace_mb=int(deploy.tensorrt.workspace_mb),
        )
        result["engine"] = str(engine_path)
        _say(f"TensorRT: engine written to {engine_path}.")
    except TensorRTUnavailable as why:
        _say(f"TensorRT: engine build skipped — {why}")
        result["engine_skipped"] = str(why)
    except Exception as error:  # noqa: BLE001
        _say(f"TensorRT: engine build FAILED ({type(error).__name__}: {error}); the ONNX model is kept.")
        result["engine_error"] = f"{type(error).__name__}: {error}"
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


class ResumeError(ValueError):
    """``ckpt_path`` names no readable checkpoint; the message names the files and what to do."""


def _read_global_step(path: Path) -> tuple[int | None, str | None]:
    """``(global_step, None)`` of a readable Lightning checkpoint, else ``(None, why)``."""
    try:
        if path.stat().st_size == 0:
            return None, "the file is empty (0 bytes)"
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"unreadable, probably truncated ({type(error).__name__}: {reason})"
    if not isinstance(state, dict) or "global_step" not in state or "state_dict" not in state:
        return None, "not a Lightning checkpoint of this project (no global_step/state_dict)"
    return int(state["global_step"]), None


def resolve_resume_checkpoint(ckpt_path: str | None) -> str | None:
    """The checkpoint to resume from, checked to be readable before any work.

    ``ckpt_path`` is a checkpoint file, or a run directory: then its newest *intact* checkpoint among
    ``checkpoints/last.ckpt`` and ``checkpoints/step.ckpt`` (highest global step; the later file on a tie).
    An unreadable one is named and passed over, and the choice is said in one line.

    Raises:
        ResumeError: no such file, or no intact checkpoint; the message names each file and why.
    """
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    if path.is_dir():
        folder = path / "checkpoints"
        candidates = [folder / name for name in ("last.ckpt", "step.ckpt") if (folder / name).is_file()]
        if not candidates:
            raise ResumeError(f"ckpt_path={ckpt_path}: no last.ckpt or step.ckpt in {folder}")
        steps, broken = {}, {}
        for candidate in candidates:
            step, why = _read_global_step(candidate)
            if why is None:
                steps[candidate] = step
            else:
                broken[candidate] = why
        if not steps:
            listed = "; ".join(f"{p}: {why}" for p, why in broken.items())
            raise ResumeError(f"ckpt_path={ckpt_path}: no intact checkpoint to resume from ({listed})")
        chosen = max(steps, key=lambda p: (steps[p], p.stat().st_mtime))
        passed = "".join(f"; {p.name} passed over: {why}" for p, why in broken.items())
        _say(
            f"Resume: taking {chosen} (global step {steps[chosen]}), the newest intact checkpoint of "
            f"{ckpt_path}{passed}."
        )
        return str(chosen)
    if path.is_dir() or not path.is_file():
        raise ResumeError(f"ckpt_path={ckpt_path}: no such checkpoint file to resume from")
    step, why = _read_global_step(path)
    if why is not None:
        others = [
            (p, s)
            for p in sorted(path.parent.glob("*.ckpt"))
            if p != path
            for s, bad in [_read_global_step(p)]
            if bad is None
        ]
        advice = (
            "; intact checkpoints beside it: "
            + ", ".join(f"{p.name} (global step {s})" for p, s in others)
            + f" — pass one of them, or ckpt_path={path.parent.parent} to take the newest"
            if others
            else ""
        )
        raise ResumeError(f"ckpt_path={path}: {why}{advice}")
    return str(path)


def check_init_weights(path: str | None) -> None:
    """``init_weights`` must be a readable student checkpoint (checked before any work)."""
    if not path:
        return
    from loftr_kd.models.student import load_student

    try:
        load_student(path)
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"init_weights={path}: {one_line(error)}") from error


def is_rank_zero_process() -> bool:
    """Rank 0 of a (possibly distributed) job, before Lightning has set anything up.

    Lightning's own DDP launcher starts ranks > 0 with ``LOCAL_RANK`` / ``NODE_RANK``; ``torchrun`` sets
    ``RANK``; SLURM (``srun``, one task per GPU, e.g. through the submitit launcher) sets ``SLURM_PROCID``.
    """
    names = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")
    return all(int(os.environ.get(name, 0) or 0) == 0 for name in names)


def check_output_dir(output_dir: Path) -> None:
    """Refuse a run directory that already holds another run: a run never overwrites one.

    Hydra's own ``.hydra/`` and ``<task>.log`` are written before ``train`` runs and are not looked at.
    """
    if not is_rank_zero_process():
        return  # DDP ranks > 0 share rank 0's run directory
    previous = [
        name
        for name in ("run_info.json", "summary.json", "config_resolved.yaml", "checkpoints", "export")
        if (output_dir / name).exists()
    ]
    if previous:
        raise ValueError(
            f"run directory {output_dir} already holds a run ({', '.join(previous)}); training never "
            "overwrites one: give a new hydra.run.dir (or leave it to the default), or resume that run "
            f"into a new directory with ckpt_path={output_dir}"
        )


def train(cfg: DictConfig) -> float | list[float] | None:
    """Train a student as configured; return the optimised metric (for sweepers).

    Args:
        cfg: composed ``conf/train.yaml``.

    Returns:
        The best value of ``cfg.optimized_metric`` (``None`` if it was never logged); in a student search
        (``cfg.search``) the trial's objective (:func:`loftr_kd.search.finish_trial`).
    """
    register_resolvers()
    # Every input is checked before any work: config types and ranges, the checkpoint to resume from,
    # the run directory.
    check_train_config(cfg)
    check_init_weights(cfg.get("init_weights"))
    ckpt_path = resolve_resume_checkpoint(cfg.get("ckpt_path"))
    output_dir = Path(cfg.paths.output_dir)
    check_output_dir(output_dir)
    pl.seed_everything(int(cfg.seed), workers=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(output_dir / "run_info.json", run_metadata())
    # .hydra/config.yaml keeps the interpolations (it is what `make rerun` composes); this one is resolved.
    resolved = {k: v for k, v in cfg.items() if k != "hydra"}
    (output_dir / "config_resolved.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.create(resolved), resolve=True)
    )

    trial = None
    if cfg.get("search"):
        # Student search (hparams_search=student_latency): measure the untrained student's latency first
        # and stop here, before any data is loaded, when it is over the budget (loftr_kd.search).
        from loftr_kd.search import begin_trial

        trial = begin_trial(cfg, output_dir)
        if trial.done is not None:
            return trial.done
    datamodule = hydra.utils.instantiate(cfg.data)
    student = trial.student if trial is not None else hydra.utils.instantiate(cfg.student)
    _say(f"Student: {count_parameters(student):,} parameters — {student.config}")
    if cfg.get("init_weights"):
        # Fine-tuning: start from trained weights (a fresh run: new optimizer, epochs from 0).
        fresh = init_student_weights(student, cfg.init_weights)
        _say(
            f"Student: initialised from {cfg.init_weights}"
            + (f" ({len(fresh)} refinement weights start fresh)." if fresh else ".")
        )
    teacher = build_teacher(cfg)
    model = DistillationModule(
        student=student,
        teacher=teacher,
        loss=hydra.utils.instantiate(cfg.loss, _convert_="all"),
        optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
        scheduler=hydra.utils.instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        scheduler_interval=str(cfg.optim.get("scheduler_interval", "epoch")),
        monitoring=MonitoringConfig(**OmegaConf.to_container(cfg.monitoring, resolve=True)),
    )
    trainer = build_trainer(cfg, output_dir)
    start: dict[str, float] = {}
    try:
        if cfg.get("validate_before_training") and not ckpt_path:
            results = trainer.validate(model, datamodule=datamodule, verbose=False)
            start = results[0] if results else {}  # no validation batches (e.g. limit_val_batches=0)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
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
        "best_checkpoint": str(best) if best else None,
    }
    if trainer.is_global_zero:
        if best is not None:
            summary["export"] = export_at_end(cfg, best, output_dir, datamodule)
        else:
            _say("Export: skipped — no checkpoint was written.")
        _write_json_atomic(output_dir / "summary.json", summary)
        if metric_name in start and best_score is not None:
            _say(
                f"Learning: {metric_name} {start[metric_name]:.3f} before training -> {best_score:.3f} best ({best})."
            )
        _say(f"Run finished: {output_dir} (summary.json, checkpoints/, tensorboard/, export/).")
    score = best_score if best_score is not None else metrics.get(metric_name)
    if trial is not None:
        from loftr_kd.search import finish_trial

        return finish_trial(trial, score, summary)
    return score


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | list[float] | None:
    """Hydra wrapper around :func:`train`: a bad input ends in one line and exit status 2.

    ``LOFTR_KD_DEBUG=1`` (or ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.
    """
    try:
        return train(cfg)
    except Exception as error:
        if debug_enabled() or not is_user_error(error):
            raise
        status = report("loftr-kd-train", error)  # stderr
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, one_line(root_cause(error)), None, None)
        for handler in logging.getLogger().handlers:  # and the run's log file, not the console again
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        raise SystemExit(status) from None


if __name__ == "__main__":
    main()
