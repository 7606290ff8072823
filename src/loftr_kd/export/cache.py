"""The ONNX export cache: a student checkpoint exported once to a dynamic-shape ``.onnx`` for onnxruntime
(and its split export beside it, on first use: :func:`cached_split_export`).

The onnxruntime backend runs checkpoints through this cache (``Matcher(weights.pt, backend="onnx")``). A
cached file is keyed by the checkpoint's resolved path, size, modification time and the student config it
was loaded with (input size and threshold overrides included), so changed weights or settings export anew.
It is written atomically (concurrent readers never see half a file) and never silently replaced: a corrupt
one is an error saying how to remove it. It lives in the user's cache folder (``~/.cache/loftr-kd/onnx``,
:func:`loftr_kd.paths.cache_dir`), never in the user's weights folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from loftr_kd.files import replacing
from loftr_kd.runtime.backend import MatcherError

log = logging.getLogger(__name__)

CACHE_FOLDER = "onnx"  # in the user's cache folder of loftr-kd


def cache_candidates(weights: Path, cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders tried in order: ``cache_dir``, ``onnx/`` in the user's cache folder, a temporary folder."""
    from loftr_kd.paths import cache_dir as user_cache

    candidates = [Path(cache_dir)] if cache_dir is not None else []
    return candidates + [user_cache() / CACHE_FOLDER, Path(tempfile.gettempdir()) / "loftr_kd_onnx_cache"]


def cached_onnx_export(
    weights: str | os.PathLike, model: Any, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The dynamic-shape ONNX export of ``model`` (loaded from ``weights``), exported on first use.

    Args:
        weights: the checkpoint the model was loaded from (its path, size and time key the cache).
        model: the student as loaded (its ``config`` keys the cache too).
        cache_dir: preferred cache folder (see :func:`cache_candidates`).

    Raises:
        MatcherError: a cached file is corrupt, or no folder could take the export.
    """
    from loftr_kd.export.onnx import export_onnx

    weights = Path(weights)
    stat = weights.stat()
    config = dataclasses.asdict(model.config)
    key = json.dumps(
        [str(weights.resolve()), stat.st_size, stat.st_mtime_ns, config, "dynamic"], sort_keys=True
    )
    name = f"{weights.stem}-dynamic-{hashlib.sha1(key.encode()).hexdigest()[:12]}.onnx"
    candidates = cache_candidates(weights, cache_dir)
    for directory in candidates:
        path = directory / name
        if path.is_file():
            _check_cached_onnx(path, weights)
            return path
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with replacing(path, suffix=".tmp.onnx") as tmp:  # concurrent readers never see half a file
                export_onnx(model.cpu(), tmp, batch=1, dynamic=True)
            log.info("exported %s to %s", weights, path)
            return path
        except PermissionError:
            continue
        except OSError as err:
            log.warning("cannot write the ONNX cache in %s (%s)", directory, err)
            continue
    raise MatcherError(f"could not export {weights} to ONNX in any of {candidates}")


def cached_split_export(path: Path, weights: Path, model: Any) -> tuple[Path, Path]:
    """The split export (encoder and matcher graphs) beside a cached export ``path`` of ``weights``,
    written on first use (:func:`loftr_kd.export.split.export_split`); cached exports never change, so
    files already there are kept.

    Raises:
        MatcherError: the cache folder cannot take them.
    """
    from loftr_kd.export.split import export_split, split_paths

    paths = split_paths(path)
    if all(p.is_file() for p in paths):
        for part in paths:
            _check_cached_onnx(part, weights)
        return paths
    try:
        export_split(model.cpu(), path, dynamic=True)
    except OSError as err:
        raise MatcherError(f"cannot write the split export of {weights} beside {path}: {err}") from err
    log.info("exported the encoder and matcher of %s beside %s", weights, path)
    return paths


def _check_cached_onnx(path: Path, weights: Path) -> None:
    """A cached export must parse; a corrupt one is never silently reused (nor deleted: it says how)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf/onnx raise several types
        raise MatcherError(
            f"the cached ONNX export {path} of {weights} is corrupt ({type(err).__name__}); delete it "
            f"(rm '{path}') and run again to export it anew"
        ) from err
