"""Files that are never half-written, and values that JSON can hold.

Every artefact the project writes (checkpoints, ONNX graphs, engines, reports, run metadata) goes through
:func:`replacing`: the content is written to a temporary file beside the target and renamed over it, so a
reader — or a run killed mid-write — sees either the previous complete file or the new one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The parent folder is created. On an exception the temporary file is removed and ``path`` is left as
    it was. ``suffix`` matters for writers that look at the name (``.onnx``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically, flushed to disk before the rename."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """Write ``payload`` as JSON atomically (see :func:`to_jsonable`; anything else becomes ``str``)."""
    return write_text(path, json.dumps(to_jsonable(payload), indent=indent, default=str) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically, flushed to disk before the rename."""
    import torch

    with replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: dataclasses (with an ``ok`` property kept), paths, numpy scalars and arrays.

    JSON has no inf/nan, so non-finite floats become ``null`` (a failed estimate reads as missing).
    """
    if is_dataclass(value) and not isinstance(value, type):
        d = asdict(value)
        if hasattr(value, "ok"):
            d["ok"] = value.ok
        return to_jsonable(d)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
