"""LightGlue over DISK / ALIKED / XFeat keypoints as a sparse teacher (``teacher=lightglue``).

The teacher provides ``matches`` (:class:`loftr_kd.teachers.TeacherMatches`): for each pair, the matches of
the pretrained extractor and LightGlue (:mod:`loftr_kd.teachers.sparse`, the published settings), in
decreasing LightGlue score, cut to the ``max_matches`` best and padded to that count, with the score as the
confidence. Keypoints are in the pixels of the training images (integer pixel centres). No similarity: it
is pseudo ground truth for pairs without geometry, not a KL target.

Speed per pair on one CPU thread (the whole call, both images; median of 5 after a warm-up on a shared
2-core machine, two runs at load average 2.6-5.3; docs/teachers.md):

============  ==============  ==============
features      320x240         640x480
============  ==============  ==============
``xfeat``     0.25-0.35 s     3.2-3.3 s
``aliked``    0.67-0.91 s     2.4-2.5 s
``disk``      1.85-1.88 s     8.2-8.8 s
============  ==============  ==============
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from loftr_kd.teachers.base import (
    MATCHES,
    FrozenTeacher,
    TeacherMatches,
    TeacherOutput,
    check_image_batch,
    no_grad_float32,
)
from loftr_kd.teachers.sparse import SparsePairMatcher, SparseSettings
from loftr_kd.teachers.weights import LIGHTGLUE_WEIGHTS, weight_file

__all__ = ["LightGlueTeacher", "build_lightglue_teacher"]

_NAMES = {"disk": "DISK + LightGlue", "aliked": "ALIKED + LightGlue", "xfeat": "XFeat + LighterGlue"}


class LightGlueTeacher(FrozenTeacher):
    """Frozen DISK / ALIKED / XFeat keypoints matched by LightGlue, as fixed-size sparse matches.

    Args:
        settings: extractor and LightGlue settings (``matcher`` must be ``lightglue``).
        max_matches: matches kept per pair (the best by score), and the padded size; ``None``: the keypoint
            budget (:attr:`SparseSettings.keypoint_budget`), which no pair can exceed.
        search_path: folders searched for the weight packages instead of the Python path.
    """

    provides = frozenset({MATCHES})

    def __init__(
        self,
        settings: SparseSettings,
        max_matches: int | None = None,
        search_path: Sequence[str | Path] | None = None,
    ) -> None:
        super().__init__()
        if settings.matcher != "lightglue":
            raise ValueError(f"teacher=lightglue matches with LightGlue, got matcher={settings.matcher!r}")
        if max_matches is None:
            max_matches = settings.keypoint_budget
        if not isinstance(max_matches, int) or max_matches < 1:
            raise ValueError(f"teacher.max_matches must be a positive integer or null, got {max_matches!r}")
        self.max_matches = max_matches
        self.name = _NAMES[settings.features]
        self.pipeline = SparsePairMatcher(settings, search_path)
        self.settings = settings
        self.checkpoint_path = weight_file(LIGHTGLUE_WEIGHTS[settings.features], search_path)  # for logs
        extractor = {"xfeat": "xfeat.pt", "disk": "disk-depth-save.pth"}.get(
            settings.features, f"{settings.aliked_model}.pth"
        )
        # What its matches depend on (the label cache's key): the extractor's and LightGlue's files.
        self.weight_files = (weight_file(extractor, search_path), self.checkpoint_path)
        self.freeze()

    def forward(self, image0: Tensor, image1: Tensor) -> TeacherOutput:
        """Sparse matches of each pair.

        Args:
            image0: ``(B, 1, H0, W0)`` grayscale in [0, 1], any float dtype (computed in float32; DISK and
                ALIKED get it repeated to RGB).
            image1: ``(B, 1, H1, W1)``.

        Returns:
            TeacherOutput with ``matches``: ``(B, max_matches, ...)`` float32, padding at the end
            (keypoints ``-1``, confidence 0, ``valid`` False).
        """
        image0 = check_image_batch(image0, "image0", 1)
        image1 = check_image_batch(image1, "image1", 1)
        batch, size, device = image0.shape[0], self.max_matches, image0.device
        keypoints0 = torch.full((batch, size, 2), -1.0, device=device)
        keypoints1 = torch.full((batch, size, 2), -1.0, device=device)
        confidence = torch.zeros((batch, size), device=device)
        valid = torch.zeros((batch, size), dtype=torch.bool, device=device)
        with no_grad_float32(device.type):
            for b, found in enumerate(self.pipeline(image0.float(), image1.float())):
                count = min(len(found.confidence), size)  # already in decreasing score
                keypoints0[b, :count] = found.keypoints0[:count]
                keypoints1[b, :count] = found.keypoints1[:count]
                confidence[b, :count] = found.confidence[:count]
                valid[b, :count] = True
        return TeacherOutput(matches=TeacherMatches(keypoints0, keypoints1, confidence, valid))


def build_lightglue_teacher(
    features: str = "disk",
    max_keypoints: int | None = None,
    detection_threshold: float | None = None,
    filter_threshold: float = 0.1,
    depth_confidence: float | None = None,
    width_confidence: float | None = None,
    max_matches: int | None = None,
    search_path: Sequence[str | Path] | None = None,
) -> LightGlueTeacher:
    """Hydra entry point of ``conf/teacher/lightglue.yaml`` (settings as :class:`SparseSettings`; ``None``
    takes the published value for the features)."""
    settings = SparseSettings(
        features=features,
        max_keypoints=max_keypoints,
        detection_threshold=detection_threshold,
        filter_threshold=filter_threshold,
        depth_confidence=depth_confidence,
        width_confidence=width_confidence,
    )
    return LightGlueTeacher(settings, max_matches=max_matches, search_path=search_path)
