"""What the benchmarks call: a *matcher* is any callable ``(image0, image1) -> {"keypoints0",
"keypoints1", "confidence"}`` on NumPy images (:class:`loftr_kd.matcher.Matcher`, ``OpenCVMatcher``,
:class:`loftr_kd.registration.GuidedMatcher`, or a test's oracle)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np

__all__ = ["MatcherFn", "progress", "timed_matches"]

log = logging.getLogger("loftr_kd.evaluation")
Item = TypeVar("Item")
PROGRESS_SECONDS = 10.0  # a benchmark says how far it is at most this often

MatcherFn = Callable[[np.ndarray, np.ndarray], dict]


def timed_matches(matcher: MatcherFn, image0: np.ndarray, image1: np.ndarray) -> tuple[dict, float]:
    """One matcher call: its outputs as float64 ``(N, 2)`` keypoints (and ``coarse_keypoints0/1`` where the
    matcher gives them) and ``(N,)`` confidence, and its wall time in milliseconds."""
    start = time.perf_counter()
    result = matcher(image0, image1)
    elapsed = (time.perf_counter() - start) * 1000.0
    k0 = np.asarray(result["keypoints0"], np.float64).reshape(-1, 2)
    k1 = np.asarray(result["keypoints1"], np.float64).reshape(-1, 2)
    out = {"keypoints0": k0, "keypoints1": k1, "confidence": np.asarray(result["confidence"]).ravel()}
    for key in ("coarse_keypoints0", "coarse_keypoints1"):  # a student's matched cell centres
        if key in result:
            out[key] = np.asarray(result[key], np.float64).reshape(-1, 2)
    return out, elapsed


def progress(items: Sequence[Item], what: str) -> Iterator[Item]:
    """``items`` one by one, logging ``what: i/N pairs`` every :data:`PROGRESS_SECONDS` and at the end."""
    start = last = time.perf_counter()
    for index, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= PROGRESS_SECONDS or index == len(items):
            log.info("%s: %d/%d pairs (%.0f s)", what, index, len(items), now - start)
            last = now
