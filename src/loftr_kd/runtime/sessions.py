"""onnxruntime for every caller: one way to open a session, read and count a graph, and time sessions.

The onnxruntime backend (:mod:`loftr_kd.runtime.onnx_backend`), the export checks, the INT8 report, the
benchmark, the student profiler and the latency search all open their sessions here, so thread settings
(``intra_op_num_threads``, one inter-op thread) and providers mean the same thing everywhere. Nothing
here imports torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The intra-op threads of sessions opened with ``threads=None`` inside :func:`default_threads`.
_DEFAULT_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("ort_threads", default=None)


@contextlib.contextmanager
def default_threads(threads: int | None) -> Iterator[None]:
    """Within the block, sessions opened without their own ``threads`` take ``threads`` intra-op threads.

    A command's ``threads`` setting (export, training's end-of-run export) reaches every onnxruntime
    session its checks open, however deep; ``None`` leaves onnxruntime's default (all cores).
    """
    token = _DEFAULT_THREADS.set(threads)
    try:
        yield
    finally:
        _DEFAULT_THREADS.reset(token)


def session_threads() -> int | None:
    """The intra-op threads a session opened here without its own takes (``None``: onnxruntime's default)."""
    return _DEFAULT_THREADS.get()


def ort_session(
    path: str | Path,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    profile_prefix: str | None = None,
    spinning: bool = True,
):
    """An onnxruntime session over ``path``.

    Args:
        threads: intra-op threads (one inter-op thread); ``None``: those of the enclosing
            :func:`default_threads`, else onnxruntime's default (all cores), as is 0.
        providers: execution providers in order of preference; default CPU only.
        profile_prefix: turn on onnxruntime's per-node profiling, writing ``<prefix>_<time>.json``.
        spinning: ``False`` stops the intra-op threads from busy-waiting after a run (onnxruntime's
            ``session.intra_op.allow_spinning``): needed when several sessions are timed in turn on few
            cores, where an idle session's spinning threads would steal the next one's.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is None:
        threads = session_threads()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def load_model(model: Any):
    """An ONNX ModelProto as given, or loaded from a path."""
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def read_metadata(model: Any) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model or file as a dict (a file's external weights are not read)."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _all_nodes(graph) -> Iterator[Any]:
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def op_histogram(model: Any) -> dict[str, int]:
    """Count of each op type of an ONNX model or file (``domain::Op`` outside the default domain),
    subgraphs included."""
    counts: Counter[str] = Counter()
    for node in _all_nodes(load_model(model).graph):
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[name] += 1
    return dict(sorted(counts.items()))


def time_interleaved(
    runners: Mapping[Any, Callable[[], Any]], repeats: int, warmup: int = 3
) -> dict[Any, dict[str, list[float]]]:
    """Round-robin timing: each repeat calls every runner once, so a change of machine load hits all alike.

    Returns per key the ``wall_ms`` and ``cpu_ms`` (process CPU time) lists of the timed repeats; the
    ``warmup`` rounds before them are not timed.
    """
    for _ in range(warmup):
        for run in runners.values():
            run()
    out = {key: {"wall_ms": [], "cpu_ms": []} for key in runners}
    for _ in range(repeats):
        for key, run in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            out[key]["wall_ms"].append((time.perf_counter() - t0) * 1e3)
            out[key]["cpu_ms"].append((time.process_time() - c0) * 1e3)
    return out


def time_sessions(
    sessions: dict[Any, tuple[Any, dict[str, np.ndarray]]], repeats: int, warmup: int = 3
) -> dict[Any, dict[str, float]]:
    """Interleaved timing of ``(session, feeds)`` pairs: median / min / p90 wall and median CPU ms."""
    runs = {key: functools.partial(session.run, None, feeds) for key, (session, feeds) in sessions.items()}
    return {
        key: {**timing_summary(t["wall_ms"]), "cpu_median_ms": float(np.median(t["cpu_ms"]))}
        for key, t in time_interleaved(runs, repeats, warmup).items()
    }


def timing_summary(wall_ms: Sequence[float]) -> dict[str, float]:
    """Median, minimum and 90th percentile of a list of latencies (ms)."""
    values = np.asarray(wall_ms, dtype=float)
    return {
        "median_ms": float(np.median(values)),
        "min_ms": float(values.min()),
        "p90_ms": float(np.percentile(values, 90)),
    }


def time_onnx(
    graphs: Mapping[Any, str | Path],
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int | None,
    repeats: int,
    warmup: int = 3,
    spinning: bool = False,
) -> dict[Any, dict[str, float]]:
    """Time ONNX files on the same inputs, each in its own CPU session, round-robin (:func:`time_sessions`).

    Args:
        graphs: key -> ``.onnx`` path; every graph takes ``feeds``.
        feeds: input name -> array (e.g. ``image0``/``image1`` ``(1, 1, H, W)`` float32).
        threads: intra-op threads per session (``None``: onnxruntime's default).
        repeats, warmup: timed rounds and untimed rounds before them.
        spinning: off by default: with several sessions on few cores, an idle session's spinning threads
            steal the cores of the one being timed (on 2 cores, 20 % either way on the same graph).

    Returns:
        Per key ``median_ms``, ``min_ms``, ``p90_ms`` and ``cpu_median_ms``.
    """
    sessions = {
        key: (ort_session(path, threads=threads, spinning=spinning), dict(feeds))
        for key, path in graphs.items()
    }
    return time_sessions(sessions, repeats, warmup)
