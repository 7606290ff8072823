"""What the benchmarks call: a *matcher* is any callable ``(image0, image1) -> {"keypoints0",
"keypoints1", "confidence"}`` on NumPy images (:class:`loftr_kd.matcher.Matcher`, ``OpenCVMatcher``,
:class:`loftr_kd.registration.GuidedMatcher`, or a test's oracle)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

__all__ = ["MatcherFn", "timed_matches"]

MatcherFn = Callable[[np.ndarray, np.ndarray], dict]


def timed_matches(matcher: MatcherFn, image0: np.ndarray, image1: np.ndarray) -> tuple[dict, float]:
    """One matcher call: its outputs as float64 ``(N, 2)`` keypoints (and ``coarse_keypoints1`` where the
    matcher gives them) and ``(N,)`` confidence, and its wall time in milliseconds."""
    start = time.perf_counter()
    result = matcher(image0, image1)
    elapsed = (time.perf_counter() - start) * 1000.0
    k0 = np.asarray(result["keypoints0"], np.float64).reshape(-1, 2)
    k1 = np.asarray(result["keypoints1"], np.float64).reshape(-1, 2)
    out = {"keypoints0": k0, "keypoints1": k1, "confidence": np.asarray(result["confidence"]).ravel()}
    if "coarse_keypoints1" in result:  # a student's matched cell centres (what refinement started from)
        out["coarse_keypoints1"] = np.asarray(result["coarse_keypoints1"], np.float64).reshape(-1, 2)
    return out, elapsed
