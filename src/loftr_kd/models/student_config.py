"""The student's sizes: ``StudentConfig``, the single source of truth, validated once here.

Its ``asdict`` travels in every checkpoint and exported graph, so ``load_student(path)`` and a runtime rebuild
the model without Hydra. Re-exported by :mod:`loftr_kd.models.student`, where it has always been imported from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loftr_kd.geometry import CoarseGrid, RefineWindow
from loftr_kd.models.backbone import check_backbone_config
from loftr_kd.models.refinement import REFINE_KINDS, REFINE_QUERIES

__all__ = ["LOAD_TIME_SETTINGS", "SUPPORTED_STRIDES", "StudentConfig"]

SUPPORTED_STRIDES = (8, 16)


@dataclass(frozen=True)
class StudentConfig:
    """Sizes of the coarse student (defaults: the published Coarse_LoFTR_TRT student's sizes).

    Attributes:
        input_height: default image height ``H`` (export size, the Matcher's default long side); the model
            takes any size that is a multiple of ``coarse_stride`` up to ``max_height x max_width``.
        input_width: default image width ``W``.
        backbone: backbone type (``'resnet_fpn'``: LoFTR's ResNet-FPN trimmed to the coarse output).
        coarse_stride: coarse grid stride ``s`` (8 or 16); grid is ``H/s x W/s``.
        initial_dim: backbone stem channels.
        block_dims: backbone stage channels; ``len == log2(s)`` and the last equals ``d_model``.
        block_depths: ``fast`` backbone only: stride-1 RepVGG blocks after each stage's stride-2 conv
            (one count per ``block_dims`` entry); ``None`` is the backbone's default
            (:func:`loftr_kd.models.fast_backbone.stage_depths`).
        d_model: coarse feature / transformer size ``C``.
        d_ffn: transformer MLP width is ``2 * d_ffn`` (LoFTR: ``d_ffn == d_model``).
        nhead: attention heads; ``d_model % nhead == 0``.
        layer_names: transformer layers, each ``'self'`` or ``'cross'``.
        temperature: dual-softmax temperature.
        match_threshold: minimum dual-softmax confidence of a match.
        border_removal: coarse cells removed on each image border before matching.
        pe_temp_bug_fix: ``False`` uses LoFTR's original (buggy) position-encoding frequencies, as the
            published student (copied from the outdoor teacher config) does.
        keep_unused_fpn: create the published model's top-down FPN layers that only feed LoFTR's fine
            stage (33,920 parameters at paper sizes). Never run, frozen; only for parameter-count and
            state-dict parity with Coarse_LoFTR_TRT.
        refine: sub-pixel refinement stage: ``'none'`` (coarse only, the published student), ``'corr'``
            (window correlation + expectation) or ``'mlp'`` (offset classification); see
            :mod:`loftr_kd.models.refinement` and docs/refinement.md.
        refine_fine_stride: stride of the backbone map the refinement reads (2 or 4, < coarse stride).
        refine_margin: fine pixels added on each side of the matched cell's block (window size is
            ``coarse_stride / refine_fine_stride + 2 * refine_margin`` fine pixels).
        refine_dim: fine descriptor size.
        refine_hidden: ``mlp`` hidden width.
        refine_local: side of the neighbourhood of the heatmap's peak whose expectation is the refined
            position (odd; ``0`` = the whole window, LoFTR's expectation).
        refine_head: fine descriptor head, ``'conv'`` (full 3x3) or ``'separable'`` (depthwise 3x3 + 1x1).
        refine_query: where image0's point of a match sits: ``'centre'`` (its cell centre, LoFTR's) or
            ``'corner'`` (the most corner-like fine pixel of the cell, from the image; ``corr`` refinement
            only, docs/refinement.md). The same weights run with either; training supervises the refinement
            at the queries it is built with (the truth of each query pixel).
        refine_points: points per matched cell (corner queries only): its ``refine_points`` most corner-like
            fine pixels, each refined (the first is the query above; the others share its window). The
            outputs then hold ``refine_points`` entries per cell (:func:`~loftr_kd.models.matching.match_entries`);
            an inference setting, training supervises the first (docs/refinement.md, "More points per cell").
        max_height: largest image height the model takes (its position encoding is precomputed for the
            grid ``max_height/s x max_width/s`` once and sliced to each input's grid, as LoFTR does);
            larger images are an error. Not stored in the weights: load with another value freely.
        max_width: largest image width.
    """

    input_height: int = 480
    input_width: int = 640
    backbone: str = "resnet_fpn"
    coarse_stride: int = 16
    initial_dim: int = 8
    block_dims: tuple[int, ...] = (8, 16, 32, 32)
    block_depths: tuple[int, ...] | None = None
    d_model: int = 32
    d_ffn: int = 32
    nhead: int = 1
    layer_names: tuple[str, ...] = ("self", "cross", "self", "cross")
    temperature: float = 0.1
    match_threshold: float = 0.2
    border_removal: int = 2
    pe_temp_bug_fix: bool = True
    keep_unused_fpn: bool = False
    refine: str = "none"
    refine_fine_stride: int = 4
    refine_margin: int = 2
    refine_dim: int = 16
    refine_hidden: int = 64
    refine_local: int = 3
    refine_head: str = "conv"
    refine_query: str = "centre"
    refine_points: int = 1
    max_height: int = 2048
    max_width: int = 2048

    def __post_init__(self) -> None:
        for name in ("block_dims", "block_depths", "layer_names"):  # frozen: tuples keep it hashable
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.coarse_stride not in SUPPORTED_STRIDES:
            raise ValueError(f"coarse_stride must be one of {SUPPORTED_STRIDES}, got {self.coarse_stride}")
        for name in ("input_height", "input_width"):
            size = getattr(self, name)
            if size < self.coarse_stride or size % self.coarse_stride != 0:
                raise ValueError(
                    f"{name}={size} must be a positive multiple of coarse_stride={self.coarse_stride}"
                )
        for name, size in (("max_height", self.input_height), ("max_width", self.input_width)):
            limit = getattr(self, name)
            if limit % self.coarse_stride or limit < size:
                raise ValueError(
                    f"{name}={limit} must be a multiple of coarse_stride={self.coarse_stride} and at least "
                    f"the input size {size}"
                )
        if self.d_model < 4 or self.d_model % 4 != 0:
            raise ValueError(f"d_model must be a positive multiple of 4 (sine encoding), got {self.d_model}")
        if self.nhead < 1 or self.d_model % self.nhead != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by nhead ({self.nhead})")
        if self.d_ffn < 1:
            raise ValueError(f"d_ffn must be positive, got {self.d_ffn}")
        if not self.layer_names or any(n not in ("self", "cross") for n in self.layer_names):
            raise ValueError(
                f"layer_names must be a non-empty list of 'self'/'cross', got {list(self.layer_names)}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.match_threshold < 1.0:
            raise ValueError(f"match_threshold must be in [0, 1), got {self.match_threshold}")
        if self.border_removal < 0:
            raise ValueError(f"border_removal must be >= 0, got {self.border_removal}")
        check_backbone_config(
            self.backbone,
            self.coarse_stride,
            self.initial_dim,
            self.block_dims,
            self.d_model,
            block_depths=self.block_depths,
        )
        if self.refine not in REFINE_KINDS:
            raise ValueError(f"refine must be one of {REFINE_KINDS}, got {self.refine!r}")
        if self.refine_query not in REFINE_QUERIES:
            raise ValueError(f"refine_query must be one of {REFINE_QUERIES}, got {self.refine_query!r}")
        if self.refine_query != "centre" and self.refine != "corr":
            raise ValueError(f"refine_query={self.refine_query!r} needs refine='corr', got {self.refine!r}")
        if self.refine_points != 1 and (self.refine_query != "corner" or self.refine_points < 1):
            raise ValueError(
                f"refine_points must be 1, or more with refine_query='corner'; got {self.refine_points} with "
                f"refine_query={self.refine_query!r}"
            )
        if self.refine != "none":
            _ = self.refine_window  # validates strides and margin
            if self.refine_dim < 1 or self.refine_hidden < 1:
                raise ValueError(
                    f"refine_dim and refine_hidden must be positive, got {self.refine_dim}, {self.refine_hidden}"
                )

    @property
    def grid(self) -> tuple[int, int]:
        """Coarse grid ``(h, w)`` of the configured input."""
        return self.coarse_grid.shape

    @property
    def coarse_grid(self) -> CoarseGrid:
        """The :class:`~loftr_kd.geometry.CoarseGrid` of the configured input."""
        return CoarseGrid.for_image(self.input_height, self.input_width, self.coarse_stride)

    @property
    def refine_window(self) -> RefineWindow | None:
        """The refinement window, ``None`` without refinement."""
        if self.refine == "none":
            return None
        return RefineWindow(self.coarse_stride, self.refine_fine_stride, self.refine_margin)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StudentConfig:
        """Build from a plain mapping (checkpoint ``student_config``, Hydra kwargs); lists become tuples."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown StudentConfig field(s) {unknown}; known: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()})


# StudentConfig fields a file's weights do not depend on: input sizes and inference settings
LOAD_TIME_SETTINGS = frozenset(
    {
        "input_height",
        "input_width",
        "max_height",
        "max_width",
        "temperature",
        "match_threshold",
        "border_removal",
        "refine_query",
        "refine_points",
    }
)
