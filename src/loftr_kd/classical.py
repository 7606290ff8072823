"""The classical reference matcher: OpenCV's ORB or SIFT with brute-force matching, behind the call interface of
:class:`loftr_kd.matcher.Matcher` (two images in, matched keypoints in their own pixels out), for the evaluation,
the benchmark and the apps. Importable from :mod:`loftr_kd.matcher` too, where it lived first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2
import numpy as np

from loftr_kd.images import to_gray_float

__all__ = ["CLASSICAL_METHODS", "OpenCVMatcher", "opencv_threads"]

CLASSICAL_METHODS = ("orb", "sift")


@contextmanager
def opencv_threads(threads: int | None) -> Iterator[None]:
    """Run a block with OpenCV's own thread pool at ``threads`` (ORB, SIFT and the robust estimators use it;
    it ignores ``OMP_NUM_THREADS``) and restore the caller's setting afterwards (``None``: leave it)."""
    previous = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(int(threads))
    try:
        yield
    finally:
        if threads is not None:
            cv2.setNumThreads(previous)


def _empty_result() -> dict[str, np.ndarray]:
    return {
        "keypoints0": np.zeros((0, 2), np.float32),
        "keypoints1": np.zeros((0, 2), np.float32),
        "confidence": np.zeros((0,), np.float32),
        "coarse_keypoints0": np.zeros((0, 2), np.float32),
        "coarse_keypoints1": np.zeros((0, 2), np.float32),
    }


class OpenCVMatcher:
    """Classical reference matcher (ORB or SIFT + brute-force matching) with the ``Matcher`` interface.

    ORB uses Hamming distance with a cross check (confidence = 1 - distance / 256); SIFT uses Lowe's
    ratio test (confidence = 1 - ratio). Images are matched at their own size unless ``max_side``
    limits it (keypoints are scaled back to the pixels as given).
    """

    def __init__(self, method: str = "orb", max_features: int = 2000, ratio: float = 0.8, max_side: int = 0):
        if method not in CLASSICAL_METHODS:
            raise ValueError(f"unknown classical method {method!r}; choose one of {CLASSICAL_METHODS}")
        self.method, self.name, self.ratio, self.max_side = method, method, ratio, max_side
        self.threshold = None
        if method == "orb":
            self._detector = cv2.ORB_create(nfeatures=max_features)
            self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        else:
            self._detector = cv2.SIFT_create(nfeatures=max_features)
            self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, Any]:
        gray = (to_gray_float(image) * 255.0).round().astype(np.uint8)
        scale = 1.0
        if self.max_side and max(gray.shape) > self.max_side:
            scale = self.max_side / max(gray.shape)
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        keypoints, descriptors = self._detector.detectAndCompute(gray, None)
        points = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2)
        return (points + 0.5) / scale - 0.5, descriptors

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
        points0, desc0 = self._detect(image0)
        points1, desc1 = self._detect(image1)
        if desc0 is None or desc1 is None or len(points0) < 2 or len(points1) < 2:
            return _empty_result()
        if self.method == "orb":
            matches = self._matcher.match(desc0, desc1)
            pairs = [(m.queryIdx, m.trainIdx, 1.0 - m.distance / 256.0) for m in matches]
        else:
            pairs = []
            for candidates in self._matcher.knnMatch(desc0, desc1, k=2):
                if len(candidates) == 2 and candidates[0].distance < self.ratio * candidates[1].distance:
                    best, second = candidates
                    pairs.append(
                        (best.queryIdx, best.trainIdx, 1.0 - best.distance / max(second.distance, 1e-9))
                    )
        if not pairs:
            return _empty_result()
        i0, i1, conf = (np.array(v) for v in zip(*pairs))
        return {
            "keypoints0": points0[i0.astype(int)].astype(np.float32),
            "keypoints1": points1[i1.astype(int)].astype(np.float32),
            "confidence": conf.astype(np.float32),
        }

    def __repr__(self) -> str:
        return f"OpenCVMatcher({self.method!r})"
