"""The one door through which the project reads torch checkpoints: weights only, never code.

A ``.pt`` / ``.ckpt`` file is a pickle, and unpickling an arbitrary pickle runs whatever callable it
names. Every checkpoint the project reads (resume, ``init_weights=``, teachers, student weights, export,
evaluation, the ``Matcher``, the kornia drop-in, recipes) goes through :func:`load_checkpoint`, which runs
``torch.load(weights_only=True)``: tensors, plain containers and numbers, plus the explicit allow-list
:data:`SAFE_GLOBALS` (what Lightning and the known checkpoint layouts hold). A file that needs anything
else is refused with one line naming the file and saying that it may carry code; nothing from it runs.

Before the file is opened it must be a regular, non-empty file: a named pipe or ``/dev/zero`` would hang
or fill the memory.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from loftr_kd.files import check_input_file

__all__ = ["CheckpointError", "SAFE_GLOBALS", "UnsafeCheckpointError", "load_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file cannot be read (empty, truncated, corrupt, not a torch file); names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds Python objects beyond weights; loading them could run code from the file."""


def _safe_globals() -> list[Any]:
    """Classes allowed besides torch's own weights-only set: inert values seen in real checkpoints."""
    import pathlib

    return [pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath]


SAFE_GLOBALS = tuple(f"{c.__module__}.{c.__qualname__}" for c in _safe_globals())

_REFUSED = re.compile(r"(?:Unsupported global: GLOBAL|Unsupported class|Trying to call reduce for) ?(\S+)")


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """Read a torch checkpoint's weights and plain values, never running code from it.

    Args:
        path: the file.
        what: what the file is for, for messages (``"student checkpoint"``, ``"teacher.weights"`` ...).
        map_location: passed to ``torch.load``.

    Returns:
        The unpickled object (dicts, lists, tensors, numbers, strings).

    Raises:
        FileNotFoundError / IsADirectoryError: no such file, or a folder.
        CheckpointError: not a regular file, empty, truncated or not a torch checkpoint.
        UnsafeCheckpointError: the file needs classes outside the allow-list (it may carry code).
    """
    import torch

    path = Path(path)
    try:
        check_input_file(path, what)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _REFUSED.search(str(error))
        if refused is not None:
            name = refused.group(1).rstrip(".,;:")
            raise UnsafeCheckpointError(
                f"{what} {path}: refused: it holds Python objects beyond weights ({name}), and loading "
                "them could run code carried by the file; only tensors, plain values and the objects "
                "Lightning writes are read. Use a checkpoint written by loftr-kd, Lightning or the "
                "model's authors, or keep only its state_dict with the program that wrote it"
            ) from None
        raise CheckpointError(
            f"{what} {path}: truncated, corrupt or not a torch checkpoint ({_first_line(error)})"
        ) from None
    except (OSError, MemoryError) as error:
        raise CheckpointError(f"{what} {path}: cannot read it ({_first_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ValueError ...
        raise CheckpointError(
            f"{what} {path}: truncated, corrupt or not a torch checkpoint ({_first_line(error)})"
        ) from None


def _first_line(error: BaseException) -> str:
    """The telling line of a torch loading error (the line after an ``... error:`` heading, else the first)."""
    context = error.__context__
    if isinstance(error, pickle.UnpicklingError) and context is not None and str(context).strip():
        error = context  # torch wraps the unpickler's own, more telling error
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("error:")]
    text = after[0] if after else lines[0] if lines else ""
    text = text.split(". ")[0]  # torch's first sentence; the rest is advice for its own internals
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
