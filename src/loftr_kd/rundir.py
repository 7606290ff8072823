"""Run folders that belong to one run: claimed before anything is written, marked when a run fails.

A Hydra command writes ``.hydra/`` and its log into the run folder before the job starts. So that a run
refused because the folder already holds another one touches nothing of it, the folder is *claimed*
first, by the Hydra callback :class:`ClaimRunDir` (``conf/hydra/default.yaml``) in ``on_run_start``:
the claim file ``.loftr-kd-run.json`` is created with ``O_EXCL``, so of two runs started into the same
folder at once exactly one wins and the other stops without writing a byte. Claiming also finds a
read-only or full output location before any work (one line, exit status 2).

A run that fails is marked in its claim (by ``train()`` and the Hydra commands' wrapper):
``failed`` when it never wrote a checkpoint (a later run may reuse the folder; the failed run's own files
are cleared first), ``interrupted`` when it did (resume it with ``ckpt_path=<folder>``). A finished run is
``finished``. A ``running`` claim whose process no longer exists on this host counts as ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from loftr_kd.distributed import is_rank_zero_process
from loftr_kd.paths import REPO_ROOT

__all__ = [
    "CLAIM_NAME",
    "ClaimRunDir",
    "RunDirError",
    "check_sweep_dir",
    "claim_run_dir",
    "discard_if_empty",
    "holds_a_run",
    "mark_run",
    "read_claim",
    "run_metadata",
]

CLAIM_NAME = ".loftr-kd-run.json"
# What a run writes into its folder (loftr_kd.train and Hydra): cleared when a failed run's folder is reused.
RUN_FILES = (
    ".hydra",
    "run_info.json",
    "summary.json",
    "config_resolved.yaml",
    "checkpoints",
    "export",
    "tensorboard",
    "search_trial.json",
)
_CLAIMED_ENV = "LOFTR_KD_RUN_CLAIM"  # "<folder>:<pid>" of the folder this process claimed
# The .hydra/ files of each folder this process claimed, as they were at the claim (see _restore_hydra_files).
_HYDRA_FILES: dict[str, dict[str, bytes]] = {}
# A run needs room for its config, logs, checkpoints and exports: less free space than this is "full".
MIN_FREE_BYTES = 64 * 2**20


class RunDirError(ValueError):
    """The run folder is taken, unwritable or full; the message names it and what to do."""


def read_claim(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The claim of a run folder (``None``: none, or unreadable)."""
    try:
        return json.loads((Path(folder) / CLAIM_NAME).read_text())
    except (OSError, ValueError):
        return None


def holds_a_run(folder: str | os.PathLike) -> list[str]:
    """What in ``folder`` shows a run (claimed, or written by a version that did not claim)."""
    folder = Path(folder)
    return [name for name in (CLAIM_NAME, *RUN_FILES[1:]) if (folder / name).exists()]


def _claimed_here(folder: Path) -> bool:
    """This process claimed ``folder`` and its run has not ended: the Hydra callback's claim, taken again by
    ``train()``. A Hydra multirun runs its jobs in one process: a job whose folder holds an earlier job's
    ended run (a ``hydra.sweep.subdir`` shared by jobs) is refused like any other reuse."""
    if os.environ.get(_CLAIMED_ENV) != f"{folder.resolve()}:{os.getpid()}":
        return False
    claim = read_claim(folder)
    return claim is not None and claim.get("pid") == os.getpid() and claim.get("state") == "running"


def _keep_hydra_files(folder: Path) -> None:
    """Remember the ``.hydra/`` files of a folder this process claims (in a multirun Hydra wrote them before)."""
    hydra_dir = folder / ".hydra"
    files = sorted(hydra_dir.glob("*.yaml")) if hydra_dir.is_dir() else []
    _HYDRA_FILES[str(folder.resolve())] = {path.name: path.read_bytes() for path in files}


def _restore_hydra_files(folder: Path, claim: dict[str, Any] | None) -> None:
    """Put back the ``.hydra/`` files of an earlier job of this process that a later job refused here had
    overwritten: Hydra writes a multirun job's config into its folder before the job can claim it."""
    kept = _HYDRA_FILES.get(str(folder.resolve()))
    if not kept or claim is None or claim.get("pid") != os.getpid():
        return
    for name, content in kept.items():
        with contextlib.suppress(OSError):  # best effort: the run's config_resolved.yaml holds its config too
            (folder / ".hydra" / name).write_bytes(content)


def _write_error(folder: Path, error: OSError) -> RunDirError:
    where = error.filename or folder
    return RunDirError(
        f"cannot write the run folder {folder} ({where}: {error.strerror}); the location is read-only, "
        "full or not allowed: choose another one (hydra.run.dir=...)"
    )


def claim_run_dir(folder: str | os.PathLike, task: str = "train") -> Path:
    """Claim ``folder`` for this process before anything is written into it.

    A folder claimed by this process for a run still running (the Hydra callback's claim) is returned as
    is. A folder whose earlier run ``failed``
    before writing a checkpoint is taken over: that run's own files are removed first.

    Raises:
        RunDirError: the folder holds another run (running, finished or interrupted, or written by an
            older version), or it cannot be written (read-only, full, a file in the way).
    """
    folder = Path(folder)
    if _claimed_here(folder):
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"run folder {folder} is a file; choose another hydra.run.dir") from None
    except OSError as error:
        raise _write_error(folder, error) from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise RunDirError(
            f"cannot write the run folder {folder}: only {free / 2**20:.1f} MiB free there (the disk is "
            f"nearly full; a run needs at least {MIN_FREE_BYTES // 2**20} MiB): free space or choose another "
            "location (hydra.run.dir=...)"
        )
    claim = folder / CLAIM_NAME
    existing = read_claim(folder)
    if existing is not None and _state(folder, existing) == "failed":
        _take_over_failed(folder, existing)
    elif existing is None:
        found = [name for name in holds_a_run(folder) if name != CLAIM_NAME]
        if found:
            raise RunDirError(_taken_message(folder, None, found, task))
    record = {
        "task": task,
        "state": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        existing = read_claim(folder)
        _restore_hydra_files(folder, existing)
        raise RunDirError(_taken_message(folder, existing, [CLAIM_NAME], task)) from None
    except OSError as error:
        raise _write_error(folder, error) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        claim.unlink(missing_ok=True)
        raise _write_error(folder, error) from None
    os.environ[_CLAIMED_ENV] = f"{folder.resolve()}:{os.getpid()}"
    _keep_hydra_files(folder)
    return folder


def _state(folder: Path, claim: dict[str, Any]) -> str | None:
    """The claim's state; a ``running`` claim whose process is gone (killed) ended as :func:`end_state`."""
    state = claim.get("state")
    if state == "running" and claim.get("host") == socket.gethostname() and not _alive(claim.get("pid")):
        return end_state(folder)
    return state


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _take_over_failed(folder: Path, existing: dict[str, Any]) -> None:
    """Clear a failed run's own files so that a new run starts in a clean folder."""
    claim = folder / CLAIM_NAME
    taken = folder / f"{CLAIM_NAME}.{os.getpid()}.taken"
    try:
        os.rename(claim, taken)  # of two runs taking over at once, one rename wins
    except FileNotFoundError:
        return  # another run took it first; the O_EXCL create decides
    except OSError as error:
        raise _write_error(folder, error) from None
    for name in RUN_FILES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    log = folder / f"{existing.get('task', 'train')}.log"  # Hydra's job log (conf/hydra/default.yaml)
    if log.is_file():
        log.unlink()
    taken.unlink(missing_ok=True)


def _taken_message(folder: Path, claim: dict[str, Any] | None, found: list[str], task: str) -> str:
    state = _state(folder, claim) if claim else None
    has_checkpoint = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").glob("*.ckpt"))
    if state == "running":
        what = f"a running {claim.get('task', task)} run started {claim.get('started')} by pid {claim.get('pid')} on {claim.get('host')}"
    elif state is not None:
        article = "an" if state[:1] in "aeiou" else "a"
        what = f"{article} {state} {(claim or {}).get('task', task)} run"
    else:
        what = f"a run ({', '.join(found)})"
    advice = "give a new hydra.run.dir (or leave it to the default)"
    if task == "train" and has_checkpoint:
        advice += f", or resume that run into a new folder with ckpt_path={folder}"
    return f"run folder {folder} already holds {what}; a run never overwrites one and nothing in it was touched: {advice}"


def mark_run(folder: str | os.PathLike, state: str, **details: Any) -> None:
    """Record the run's end in its claim (``finished``, ``failed``, ``interrupted``); best effort."""
    folder = Path(folder)
    claim = read_claim(folder)
    if claim is None or claim.get("pid") != os.getpid():
        return
    claim.update(state=state, ended=time.strftime("%Y-%m-%d %H:%M:%S"), **details)
    try:
        from loftr_kd.files import write_json

        write_json(folder / CLAIM_NAME, claim)
    except OSError:
        pass


def discard_if_empty(folder: str | os.PathLike, also: tuple[str, ...] = ()) -> bool:
    """Remove the folder of a run of this process that failed before it wrote anything of its own: it holds
    only its claim, Hydra's ``.hydra/`` and the names in ``also`` (the run's log). Returns whether it did.

    A run that got further (a checkpoint, an export, results) keeps its folder, and so does one that recorded
    its own end with :func:`mark_run` (a training: its claim says why it failed and the folder is reusable).
    """
    folder = Path(folder)
    claim = read_claim(folder)
    if claim is None or claim.get("pid") != os.getpid() or "ended" in claim or not folder.is_dir():
        return False
    own = {CLAIM_NAME, ".hydra", *also}
    if any(child.name not in own for child in folder.iterdir()):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def end_state(folder: str | os.PathLike) -> str:
    """``interrupted`` when the folder holds a checkpoint to resume from, else ``failed``."""
    checkpoints = Path(folder) / "checkpoints"
    return "interrupted" if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")) else "failed"


try:  # Hydra >= 1.1
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


class ClaimRunDir(_HydraCallback):
    """Hydra callback: check the config, then claim the run folder, before Hydra writes into it.

    Args:
        check: dotted path of a function ``check(cfg)`` that raises ``ValueError`` on a bad config
            (``loftr_kd.config_check.check_train_config``); it runs first, so a bad config creates nothing.
        program: the command's name for error lines (default ``loftr-kd-<task_name>``).
        claim: ``False`` for a folder that runs reuse on purpose (``loftr-kd-recipe``'s, resumable): it is
            only checked to be a folder or able to become one.

    A bad config, or a taken, read-only or full folder, is one line on stderr and exit status 2
    (``LOFTR_KD_DEBUG=1`` raises instead). In a multirun only the check runs here and each job's folder is
    claimed by the job itself (``train()``); the end of a run is recorded by the code that runs it
    (:func:`mark_run`), which also sees ``SystemExit``.
    """

    def __init__(self, check: str | None = None, program: str | None = None, claim: bool = True) -> None:
        self.check = check
        self.program = program
        self.claim = claim  # False: a folder that runs reuse (a recipe's): only checked to be one

    def _program(self, config: Any) -> str:
        from omegaconf import OmegaConf

        return self.program or f"loftr-kd-{OmegaConf.select(config, 'task_name', default='run')}"

    def _guarded(self, config: Any, work: Any) -> None:
        from loftr_kd.errors import EXIT_USAGE, debug_enabled, is_user_error, report

        try:
            if self.check:
                from hydra.utils import get_method

                get_method(self.check)(config)
            work()
        except Exception as error:
            if not is_user_error(error):
                raise  # Hydra turns a callback's exception into a warning; the job then fails on its own
            if debug_enabled():  # the traceback, then stop: an exception would only become a warning
                import traceback

                traceback.print_exc()
                raise SystemExit(EXIT_USAGE) from None
            raise SystemExit(report(self._program(config), error)) from None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        def claim() -> None:
            folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            if not self.claim:
                from loftr_kd.files import check_folder_path

                check_folder_path(folder, "the run folder")  # a file there stopped Hydra with a traceback
            elif is_rank_zero_process():  # DDP ranks > 0 share rank 0's run folder
                claim_run_dir(folder, str(OmegaConf.select(config, "task_name", default="run")))

        self._guarded(config, claim)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        def check_sweep_folder() -> None:
            if self.claim and is_rank_zero_process():
                check_sweep_dir(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))))

        self._guarded(config, check_sweep_folder)


def check_sweep_dir(folder: Path) -> None:
    """Refuse a sweep folder that holds runs already, before Hydra writes a job's ``.hydra/`` and log over
    one of them (each job claims its own folder only once it starts, after Hydra wrote those).

    Raises:
        RunDirError: ``folder``, or a folder in it, holds a run (a failed one too).
    """
    if not folder.is_dir():
        return
    taken = []
    for job in sorted([folder, *(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())]):
        found = holds_a_run(job)
        if found:  # a failed job too: taking it over would clear the .hydra/ Hydra just wrote for the new job
            claim = read_claim(job)
            state = _state(job, claim) if claim else None
            taken.append(f"{job.name if job != folder else '.'} ({state or ', '.join(found)})")
    if taken:
        raise RunDirError(
            f"sweep folder {folder} already holds runs: {', '.join(taken[:5])}"
            f"{f' ... ({len(taken)} runs)' if len(taken) > 5 else ''}; a sweep never writes into a folder with "
            "runs and nothing in it was touched: give a new hydra.sweep.dir (or leave it to the default)"
        )


# Recorded with every run (run_info.json) and evaluation (results.json): what a result was computed with.
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
        "cuda": _gpu_name(),
        "packages": versions,
    }


def _gpu_name() -> str | None:
    """The first CUDA GPU's name, when torch is imported already and sees one (never imports torch)."""
    torch = sys.modules.get("torch")
    return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
