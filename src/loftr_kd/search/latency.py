"""A trial's latency: the untrained student exported to ONNX and timed in onnxruntime, interleaved with
the reference preset whose multiple is the budget (docs/search.md, "One trial")."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loftr_kd.search.space import SearchSettings

if TYPE_CHECKING:
    pass


def _export_for_timing(config: Any, height: int, width: int, path: Path) -> Path:
    """The student of ``config``, untrained, as a fixed-shape ONNX file at ``height`` x ``width``."""
    from loftr_kd.export.onnx import export_onnx
    from loftr_kd.models.student import build_student

    values = {**asdict(config), "input_height": height, "input_width": width}
    model = build_student(**values).eval()
    return export_onnx(model, path, height=height, width=width)


def measure_latency(config: Any, settings: SearchSettings) -> dict[str, Any]:
    """Export the (untrained: speed does not depend on weights) student and time it in onnxruntime.

    The candidate and, with ``budget_reference``, that preset are timed round-robin in one process
    (:func:`loftr_kd.runtime.time_sessions`) on one real image pair
    (:func:`loftr_kd.data.homography.real_image_pairs`, as ``loftr-kd-bench``), batch 1, with
    onnxruntime's thread spinning off in both sessions: a spinning idle session steals the cores of the
    one being timed (on 2 cores it made the same graph look 20 % slower or faster than itself).

    Args:
        config: the candidate's ``StudentConfig`` (its input size is replaced by the settings').
        settings: size, threads, repeats and budget of the measurement.

    Returns:
        ``median_ms``, ``p90_ms`` of the candidate; ``reference``, ``reference_median_ms`` and ``ratio``
        when a reference is timed; ``budget_ms`` (``None`` without a budget); ``over_budget``.
    """
    import torch

    from loftr_kd.config import preset_values
    from loftr_kd.data.homography import real_image_pairs
    from loftr_kd.models.student import StudentConfig
    from loftr_kd.runtime.sessions import time_onnx

    height, width = settings.height, settings.width
    image0, image1, _ = real_image_pairs(height, width, 1, seed=7)[0]
    feeds = {"image0": image0[None, None], "image1": image1[None, None]}  # (1, 1, H, W)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # tracing only; the CPU is onnxruntime's while timing
    try:
        with tempfile.TemporaryDirectory(prefix="loftr_kd_search_") as tmp:
            graphs = {"candidate": _export_for_timing(config, height, width, Path(tmp) / "candidate.onnx")}
            if settings.budget_reference:
                reference = StudentConfig.from_dict(
                    {**preset_values(settings.budget_reference), "input_height": height, "input_width": width}
                )
                graphs["reference"] = _export_for_timing(
                    reference, height, width, Path(tmp) / "reference.onnx"
                )
            timings = time_onnx(
                graphs, feeds, threads=settings.threads, repeats=settings.repeats, warmup=settings.warmup
            )
    finally:
        torch.set_num_threads(threads_before)
    result: dict[str, Any] = {
        "height": height,
        "width": width,
        "threads": settings.threads,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "median_ms": timings["candidate"]["median_ms"],
        "p90_ms": timings["candidate"]["p90_ms"],
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    budget = settings.budget_ms
    if "reference" in timings:
        result["reference"] = settings.budget_reference
        result["reference_median_ms"] = timings["reference"]["median_ms"]
        result["ratio"] = result["median_ms"] / result["reference_median_ms"]
        budget = settings.budget_factor * result["reference_median_ms"]
    result["budget_ms"] = budget
    if budget is None:
        result["over_budget"] = False
    elif "ratio" in result:
        result["over_budget"] = result["ratio"] > settings.budget_factor
    else:
        result["over_budget"] = result["median_ms"] > budget
    return result
