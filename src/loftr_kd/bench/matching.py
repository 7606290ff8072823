"""The benchmark's Matcher rows: whole calls of the user-facing API, timed side by side (issue 24).

Where the other rows time a backend's model call on a fed pair, these time what a user's program waits for
(resizing, the model, mapping matches back; guided: the search's RANSAC and warps too), on the same pairs,
**interleaved** in one process: each round calls every row once on the same pair, so machine load hits
them alike, and each row's time is compared with the full pair's of the same round.

- ``pair``: ``matcher(image0, image1)``, one whole-graph call.
- ``cached``: ``matcher(features0, image1)`` with ``features0 = matcher.encode(image0)`` made before timing:
  a video frame against a cached reference (the frame is encoded, then matched).
- ``guided``: ``GuidedMatcher(matcher)(image0, image1)`` at its defaults (image0 encoded once per size, the
  hypotheses matched in batched waves).
- ``guided_all``: the same with every hypothesis searched (no early stop): what a hard pair costs.
- ``guided_sequential``: the guided default on the whole graph alone (a copy without its split export
  beside it): one whole-pair call per hypothesis, as before the split existed.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MATCHER_ROWS = ("pair", "cached", "guided", "guided_all", "guided_sequential")
ROW_LABELS = {
    "pair": "Matcher: full pair",
    "cached": "Matcher: frame vs cached reference",
    "guided": "Matcher: guided registration",
    "guided_all": "Matcher: guided, all hypotheses",
    "guided_sequential": "Matcher: guided, one call per hypothesis",
}


def matcher_runners(
    rows: tuple[str, ...], pairs: list, weights: str | None, threads: int, size: int, workdir: Path
) -> tuple[dict[str, Callable[[int], Any]], str]:
    """Round ``i`` of each row (``run(i)`` matches pair ``i``), built before timing; and the matcher's repr."""
    from loftr_kd.matcher import Matcher
    from loftr_kd.registration import GuidedMatcher, GuidedSettings

    matcher = Matcher(weights, backend="onnx", threads=threads, size=size)
    images = [(a, b) for a, b, _ in pairs]
    runners: dict[str, Callable[[int], Any]] = {}
    for row in rows:
        if row == "pair":
            runners[row] = lambda i: matcher(*images[i % len(images)])
        elif row == "cached":
            references = [matcher.encode(a) for a, _ in images]  # encoded once, before timing
            runners[row] = _against(matcher, references, [b for _, b in images])
        elif row in ("guided", "guided_all"):
            settings = GuidedSettings(stop_inliers=10**9) if row == "guided_all" else GuidedSettings()
            runners[row] = _guided(GuidedMatcher(matcher, settings), images)
        elif row == "guided_sequential":
            whole = workdir / "whole" / Path(matcher.runner.path).name  # no split export beside it
            whole.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(matcher.runner.path, whole)
            runners[row] = _guided(GuidedMatcher(Matcher(whole, threads=threads, size=size)), images)
        else:
            raise ValueError(f"unknown matcher row {row!r}; choose from {', '.join(MATCHER_ROWS)}")
    return runners, repr(matcher)


def _counted(run: Callable[[int], Any]) -> Callable[[], Any]:
    """``run`` called with 0, 1, 2, ... (its own count of calls)."""
    calls = itertools.count()
    return lambda: run(next(calls))


def _against(matcher: Any, references: list, frames: list) -> Callable[[int], Any]:
    """Round ``i`` of the cached row: frame ``i`` against its encoded reference."""
    return lambda i: matcher(references[i % len(frames)], frames[i % len(frames)])


def _guided(guided: Any, images: list) -> Callable[[int], Any]:
    """Round ``i`` of a guided row."""
    return lambda i: guided(*images[i % len(images)])


def measure_matcher_rows(spec: dict[str, Any], settings: Any, pairs: list) -> list[dict[str, Any]]:
    """The Matcher rows of one size, interleaved in this process; each row's ``vs_pair`` is the median of its
    per-round time over the same round's full pair (``vs_pair_p10`` / ``vs_pair_p90``: their spread)."""
    import cv2

    from loftr_kd.runtime import time_interleaved, timing_summary

    threads = spec["threads"]
    cv2.setNumThreads(threads)
    rows = tuple(settings.matcher_rows)
    base = {"model": spec["model"], "height": spec["height"], "width": spec["width"], "threads": threads}
    try:
        with tempfile.TemporaryDirectory(prefix="loftr_kd_bench_") as tmp:
            size = max(spec["height"], spec["width"])
            runners, described = matcher_runners(
                rows, pairs, settings.matcher_weights, threads, size, Path(tmp)
            )
            # a round calls every row once, in order, so each row's k-th call matches the same pair
            counted = {row: _counted(runners[row]) for row in rows}
            timed = time_interleaved(counted, settings.iters, settings.warmup)
    except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, not fatal
        return [
            {
                **base,
                "kind": "matcher",
                "backend": ROW_LABELS.get(row, row),
                "median_ms": None,
                "p90_ms": None,
                "pairs_per_s": None,
                "peak_mem_mb": None,
                "error": f"{type(e).__name__}: {e}",
            }
            for row in rows
        ]
    out = []
    pair = np.asarray(timed["pair"]["wall_ms"]) if "pair" in timed else None
    for row in rows:
        wall = np.asarray(timed[row]["wall_ms"])
        summary = timing_summary(wall)
        entry = {
            **base,
            "kind": "matcher",
            "backend": ROW_LABELS[row],
            "row": row,
            "median_ms": summary["median_ms"],
            "p90_ms": summary["p90_ms"],
            "min_ms": summary["min_ms"],
            "pairs_per_s": 1000.0 / summary["median_ms"],
            "peak_mem_mb": None,
            "iterations": settings.iters,
            "warmup": settings.warmup,
            "notes": f"{described}; interleaved with the other Matcher rows, round by round",
        }
        if pair is not None:
            ratio = wall / pair
            entry.update(
                vs_pair=float(np.median(ratio)),
                vs_pair_p10=float(np.percentile(ratio, 10)),
                vs_pair_p90=float(np.percentile(ratio, 90)),
            )
        out.append(entry)
    return out
