"""What a training run starts from, checked before any work: the checkpoint it resumes (``ckpt_path``: a file,
or a run folder's newest intact checkpoint; one that holds this run's student; one with epochs left to train)
and the weights it starts from (``init_weights``). Each problem is one line naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from loftr_kd.checkpoints import CheckpointError, UnsafeCheckpointError, load_checkpoint
from loftr_kd.errors import one_line

log = logging.getLogger("loftr_kd.train")


def _say(message: str) -> None:
    """One clear line on the console and in the run log (as the training's own)."""
    log.info(message)
    if not logging.getLogger().handlers:
        print(message, flush=True)


class ResumeError(ValueError):
    """``ckpt_path`` names no readable checkpoint; the message names the files and what to do."""


# Checkpoints a run folder can be resumed from (conf/callbacks/default.yaml, callbacks.InterruptCheckpoint).
RESUMABLE_NAMES = ("last.ckpt", "step.ckpt", "interrupted.ckpt")


def check_resume_has_work(ckpt_path: str | None, max_epochs: Any) -> None:
    """Refuse to resume a run whose checkpoint has done every epoch asked for: it would train nothing and
    end "finished", its summary pointing at the old run.

    Raises:
        ResumeError: the checkpoint's finished epochs reach ``max_epochs``.
    """
    if ckpt_path is None or not isinstance(max_epochs, int) or max_epochs < 0:
        return
    state = load_checkpoint(Path(ckpt_path), "checkpoint")
    progress = (state.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    done = progress.get("processed")
    if isinstance(done, int) and done >= max_epochs:
        raise ResumeError(
            f"ckpt_path={ckpt_path}: that run has done {done} epoch(s), trainer.max_epochs={max_epochs}: resuming "
            f"trains nothing. Raise trainer.max_epochs to continue it, or start a new run from its weights with "
            f"init_weights={ckpt_path}"
        )


def _read_global_step(path: Path) -> tuple[int | None, str | None]:
    """``(global_step, None)`` of a readable Lightning checkpoint, else ``(None, why)``.

    Raises:
        UnsafeCheckpointError: the file holds objects beyond weights (it may carry code): never passed over.
    """
    try:
        state = load_checkpoint(path, "checkpoint")
    except UnsafeCheckpointError:
        raise
    except (CheckpointError, OSError) as error:
        reason = str(error).removeprefix(f"checkpoint {path}: ").removeprefix(f"checkpoint {path} ")
        return None, reason if reason.startswith("the file is empty") else f"unreadable: {reason}"
    if not isinstance(state, dict) or "global_step" not in state or "state_dict" not in state:
        return None, "not a Lightning checkpoint of this project (no global_step/state_dict)"
    return int(state["global_step"]), None


def resolve_resume_checkpoint(ckpt_path: str | None) -> str | None:
    """The checkpoint to resume from, checked to be readable before any work.

    ``ckpt_path`` is a checkpoint file, or a run directory: then its newest *intact* checkpoint among
    ``checkpoints/last.ckpt``, ``step.ckpt`` and ``interrupted.ckpt`` (highest global step; the later file
    on a tie).
    An unreadable one is named and passed over, and the choice is said in one line.

    Raises:
        ResumeError: no such file, or no intact checkpoint; the message names each file and why.
    """
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    if path.is_dir():
        folder = path / "checkpoints"
        candidates = [folder / name for name in RESUMABLE_NAMES if (folder / name).is_file()]
        if not candidates:
            raise ResumeError(f"ckpt_path={ckpt_path}: no {', '.join(RESUMABLE_NAMES)} in {folder}")
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
    if not path.exists():
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


def check_init_weights(path: str | None, student_config: DictConfig | None = None) -> None:
    """``init_weights`` must be a readable student checkpoint whose weights fit the run's student
    (``student_config``, built here for the check: a few milliseconds), before any work.

    Raises:
        ValueError: one line, ``init_weights=<path>: <what is wrong>``.
    """
    if not path:
        return
    from loftr_kd.models.student import init_student_weights, load_student

    try:
        if not student_config:
            load_student(path)
        else:
            init_student_weights(hydra.utils.instantiate(student_config), path)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(f"init_weights={path}: {one_line(error).removeprefix(f'{path}: ')}") from error


def check_resumed_student(ckpt_path: str | None, student: torch.nn.Module, preset: str) -> None:
    """The checkpoint to resume must hold this run's student: another preset is one line, not a
    state-dict mismatch inside Lightning.

    Raises:
        ResumeError: the checkpoint's weights do not fit ``student``; names the differing settings.
    """
    if not ckpt_path:
        return
    from dataclasses import asdict

    checkpoint = load_checkpoint(ckpt_path, "checkpoint")
    stored = checkpoint.get("student_config") if isinstance(checkpoint, dict) else None
    weights = {
        k.removeprefix("student."): v.shape
        for k, v in (checkpoint.get("state_dict") or {}).items()
        if k.startswith("student.")
    }
    own = {k: v.shape for k, v in student.state_dict().items()}
    if weights == own:
        return
    current = asdict(student.config)
    differ = sorted(
        k for k in current if isinstance(stored, dict) and k in stored and stored[k] != current[k]
    )
    listed = ", ".join(f"{k}: {stored[k]!r} there, {current[k]!r} here" for k in differ[:6]) or (
        f"{len(set(weights) ^ set(own))} weights differ"
    )
    raise ResumeError(
        f"ckpt_path={ckpt_path}: the checkpoint holds another student than this run's (student={preset}): "
        f'{listed}. Resume with the run\'s own settings (make rerun RUN=<its folder> ARGS="ckpt_path=..."), or '
        "start a new run from its weights with init_weights=<checkpoint>"
    )


__all__ = [
    "RESUMABLE_NAMES",
    "ResumeError",
    "check_init_weights",
    "check_resume_has_work",
    "check_resumed_student",
    "resolve_resume_checkpoint",
]
