"""The coarse-only LoFTR student: model, save / load (its sizes, ``StudentConfig``, in ``student_config``).

``StudentConfig`` is the single source of truth for sizes; its ``asdict`` travels in every checkpoint so
``load_student(path)`` rebuilds the model without Hydra. The default sizes are the published
Coarse_LoFTR_TRT student; ``conf/student/paper.yaml`` additionally turns on its two compatibility
switches (``pe_temp_bug_fix: false``, ``keep_unused_fpn: true``) to reproduce it exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from loftr_kd.checkpoints import load_checkpoint
from loftr_kd.files import torch_save
from loftr_kd.geometry import CoarseGrid
from loftr_kd.models.backbone import build_backbone
from loftr_kd.models.fast_backbone import reparameterize_for_inference
from loftr_kd.models.matching import CoarseMatching, CoarseMatchOutput
from loftr_kd.models.position_encoding import PositionEncodingSine
from loftr_kd.models.refinement import RefineOutput, build_refinement
from loftr_kd.models.student_config import (  # noqa: F401 - SUPPORTED_STRIDES, StudentConfig re-exported
    LOAD_TIME_SETTINGS,
    SUPPORTED_STRIDES,
    StudentConfig,
)
from loftr_kd.models.transformer import LocalFeatureTransformer

__all__ = [
    "CoarseLoFTRStudent",
    "CoarseMatchOutput",
    "EncodedImages",
    "StudentConfig",
    "StudentMismatchError",
    "build_student",
    "count_parameters",
    "init_student_weights",
    "published_checkpoint",
    "load_student",
    "save_student",
]


class StudentMismatchError(ValueError, RuntimeError):
    """A student file whose weights do not fit its ``student_config`` (keys or shapes): the user's input, so a
    ``ValueError`` (one line from the entry points), and a ``RuntimeError`` as ``load_state_dict`` raises."""


class EncodedImages(NamedTuple):
    """The per-image part of a student (:meth:`CoarseLoFTRStudent.encode`): everything before the first
    cross layer lets one image see the other.

    Attributes:
        coarse: ``(B, C, h, w)`` coarse features: backbone map + position encoding, through the transformer's
            leading self layers (a map, so the grid ``h x w`` travels with it).
        fine: ``(B, refine_dim, H/f, W/f)`` unit fine descriptors of the refinement stage, ``None`` without one.
        queries: ``(B, h*w)`` int64 query pixel of each cell inside its block (``refine_query="corner"``;
            :func:`~loftr_kd.models.refinement.corner_queries`; ``(B, h*w, k)`` with ``refine_points=k > 1``),
            ``None`` for cell-centre queries.
    """

    coarse: torch.Tensor
    fine: torch.Tensor | None = None
    queries: torch.Tensor | None = None


class CoarseLoFTRStudent(nn.Module):
    """Coarse-only LoFTR: ResNet-FPN backbone, sine position encoding, linear transformer, dual softmax.

    Args:
        config: sizes; see :class:`StudentConfig`.
    """

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        self.inference_ready = False  # set by prepare_for_inference
        h, w = config.grid
        self.backbone = build_backbone(
            config.backbone,
            config.coarse_stride,
            config.initial_dim,
            config.block_dims,
            config.d_model,
            keep_unused_fpn=config.keep_unused_fpn,
            block_depths=config.block_depths,
        )
        max_grid = CoarseGrid.for_image(config.max_height, config.max_width, config.coarse_stride)
        self.pos_encoding = PositionEncodingSine(
            config.d_model, max_grid.height, max_grid.width, temp_bug_fix=config.pe_temp_bug_fix
        )
        self.loftr_coarse = LocalFeatureTransformer(
            config.d_model, config.nhead, config.layer_names, d_ffn=config.d_ffn
        )
        self.coarse_matching = CoarseMatching(
            h, w, config.temperature, config.match_threshold, config.border_removal
        )
        self.fine_stride = None if config.refine == "none" else config.refine_fine_stride
        self.refinement = (
            None
            if self.fine_stride is None
            else build_refinement(
                config.refine,
                self.backbone.fine_channels(self.fine_stride),
                config.coarse_stride,
                config.refine_fine_stride,
                config.refine_margin,
                config.refine_dim,
                config.refine_hidden,
                config.refine_local,
                config.refine_head,
                config.refine_query,
                config.refine_points,
            )
        )

    def _check_image(self, name: str, image: torch.Tensor) -> None:
        """Raise ``ValueError`` on an image the model cannot take (shapes only: static, export-safe)."""
        stride = self.config.coarse_stride
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(f"{name} must be (B, 1, H, W) grayscale, got shape {tuple(image.shape)}")
        if image.shape[2] % stride or image.shape[3] % stride:
            raise ValueError(
                f"{name} size {tuple(image.shape[2:])} must be divisible by coarse_stride {stride}"
            )
        if image.shape[2] > self.config.max_height or image.shape[3] > self.config.max_width:
            raise ValueError(
                f"{name} of {int(image.shape[3])}x{int(image.shape[2])} pixels is larger than the model's "
                f"maximum {self.config.max_width}x{self.config.max_height} (StudentConfig max_width/"
                f"max_height); resize it or load the student with larger max_height/max_width"
            )

    def _check_images(self, image0: torch.Tensor, image1: torch.Tensor) -> None:
        """Raise ``ValueError`` on a pair the model cannot take (shapes only: static, export-safe)."""
        self._check_image("image0", image0)
        self._check_image("image1", image1)
        if image0.shape[0] != image1.shape[0]:
            raise ValueError(f"batch sizes differ: {image0.shape[0]} vs {image1.shape[0]}")

    def _check_encoded(self, encoded0: EncodedImages, encoded1: EncodedImages) -> None:
        """Raise ``ValueError`` on encodings this model did not make (shapes only: export-safe)."""
        corner = self.refinement is not None and self.refinement.query == "corner"
        if corner and encoded0.queries is None:  # (image1's are not read)
            raise ValueError("encoded0.queries must be given for this student (refine_query='corner')")
        for name, encoded in (("encoded0", encoded0), ("encoded1", encoded1)):
            coarse, fine = encoded.coarse, encoded.fine
            if coarse.dim() != 4 or coarse.shape[1] != self.config.d_model:
                raise ValueError(
                    f"{name}.coarse must be (B, {self.config.d_model}, h, w), got {tuple(coarse.shape)}"
                )
            if (fine is None) != (self.refinement is None):
                raise ValueError(
                    f"{name}.fine must be {'None' if self.refinement is None else 'given'} for this student "
                    f"(refine={self.config.refine!r})"
                )
            ratio = self.config.coarse_stride // (self.fine_stride or 1)
            if fine is not None and (
                tuple(fine.shape[2:]) != (coarse.shape[2] * ratio, coarse.shape[3] * ratio)
                or fine.shape[:2] != (coarse.shape[0], self.config.refine_dim)
            ):
                raise ValueError(
                    f"{name}.fine of shape {tuple(fine.shape)} does not belong to coarse {tuple(coarse.shape)}"
                )
        if encoded0.coarse.shape[0] != encoded1.coarse.shape[0]:
            raise ValueError(f"batch sizes differ: {encoded0.coarse.shape[0]} vs {encoded1.coarse.shape[0]}")

    def prepare_for_inference(self, inplace: bool = False) -> CoarseLoFTRStudent:
        """The model as it is deployed: eval mode, re-parameterisable blocks (the fast backbone's RepVGG
        branches) fused into single convolutions. Outputs equal the eval-mode outputs (float rounding).

        Export, the Matcher, the benchmark and the profiler all call this one step. A prepared model is
        marked (``inference_ready``) and never prepared again.

        Args:
            inplace: fuse this model itself; by default a copy is fused and this model is untouched (a
                training run can export its student and keep training).
        """
        if self.inference_ready:
            return self.eval()
        model = reparameterize_for_inference(self, inplace=inplace)
        model.inference_ready = True
        return model

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> CoarseMatchOutput:
        """Coarse similarity, confidence, matches and (refined) match positions for a batch of pairs.

        Args:
            image0: ``(B, 1, H0, W0)`` float in [0, 1].
            image1: ``(B, 1, H1, W1)`` float in [0, 1]; any multiple of the stride up to the maximum, like
                ``image0`` (the two may differ).

        Returns:
            :class:`CoarseMatchOutput` with ``L0 = H0/s * W0/s`` and ``L1 = H1/s * W1/s``, every field set.
        """
        self._check_images(image0, image1)
        stride = self.config.coarse_stride
        grid0 = CoarseGrid.for_image(image0.shape[2], image0.shape[3], stride)
        grid1 = CoarseGrid.for_image(image1.shape[2], image1.shape[3], stride)
        if image0.shape == image1.shape:  # one backbone pass on the pair, as LoFTR (shared BN statistics)
            pair = torch.cat([image0, image1], dim=0)
            coarse, fine = self.backbone.forward_features(pair, self.fine_stride)
            feat_c0, feat_c1 = coarse.chunk(2, dim=0)  # (B, C, h, w)
            fine0, fine1 = fine.chunk(2, dim=0) if fine is not None else (None, None)
        else:
            feat_c0, fine0 = self.backbone.forward_features(image0, self.fine_stride)  # (B, C, h0, w0)
            feat_c1, fine1 = self.backbone.forward_features(image1, self.fine_stride)  # (B, C, h1, w1)
        feat0 = self.pos_encoding(feat_c0).flatten(2).transpose(1, 2)  # (B, L0, C), row-major cells
        feat1 = self.pos_encoding(feat_c1).flatten(2).transpose(1, 2)  # (B, L1, C)
        feat0, feat1 = self.loftr_coarse(feat0, feat1)  # (B, L0, C), (B, L1, C)
        coarse_out = self.coarse_matching(feat0, feat1, grid0, grid1)
        if self.refinement is None:
            return self._with_positions(coarse_out, grid0, grid1, None)
        queries0 = self.refinement.queries(image0)  # None for cell-centre queries
        refined = self.refinement(fine0, fine1, coarse_out.candidate_ids, grid1, queries0)
        out = self._with_positions(coarse_out, grid0, grid1, refined, (fine0, fine1))
        return out._replace(queries0=queries0)

    def encode(self, image: torch.Tensor) -> EncodedImages:
        """The per-image part of :meth:`forward`: backbone, position encoding, the transformer's leading self
        layers and the refinement's fine descriptors. :meth:`match` finishes a pair from two encodings with
        the result of ``forward`` (up to float rounding where a batch is stacked differently); an image
        encoded once can be matched against many others.

        Args:
            image: ``(B, 1, H, W)`` float in [0, 1], any multiple of the stride up to the maximum.

        Returns:
            :class:`EncodedImages`: ``coarse (B, C, H/s, W/s)``, ``fine (B, refine_dim, H/f, W/f)`` or ``None``.
        """
        self._check_image("image", image)
        coarse, fine = self.backbone.forward_features(image, self.fine_stride)  # (B, C, h, w)
        coarse = self.pos_encoding(coarse)
        batch, channels, height, width = coarse.shape
        feat = self.loftr_coarse.encode(coarse.flatten(2).transpose(1, 2))  # (B, L, C), row-major cells
        coarse = feat.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, h, w)
        if self.refinement is None:
            return EncodedImages(coarse)
        return EncodedImages(coarse, self.refinement.describe(fine), self.refinement.queries(image))

    def match(self, encoded0: EncodedImages, encoded1: EncodedImages) -> CoarseMatchOutput:
        """The pairwise part of :meth:`forward` on two :meth:`encode` results (same batch size ``B``).

        Returns:
            :class:`CoarseMatchOutput` as :meth:`forward`'s, without ``fine_maps`` (inference only).
        """
        self._check_encoded(encoded0, encoded1)
        stride = self.config.coarse_stride
        coarse0, coarse1 = encoded0.coarse, encoded1.coarse
        grid0 = CoarseGrid.for_image(coarse0.shape[2] * stride, coarse0.shape[3] * stride, stride)
        grid1 = CoarseGrid.for_image(coarse1.shape[2] * stride, coarse1.shape[3] * stride, stride)
        feat0 = coarse0.flatten(2).transpose(1, 2)  # (B, L0, C)
        feat1 = coarse1.flatten(2).transpose(1, 2)  # (B, L1, C)
        feat0, feat1 = self.loftr_coarse(feat0, feat1, start=self.loftr_coarse.leading_self_layers)
        coarse_out = self.coarse_matching(feat0, feat1, grid0, grid1)
        refined = (
            None
            if self.refinement is None
            else self.refinement.refine_described(
                encoded0.fine, encoded1.fine, coarse_out.candidate_ids, grid1, encoded0.queries
            )
        )
        return self._with_positions(coarse_out, grid0, grid1, refined)

    def _with_positions(
        self,
        coarse_out: CoarseMatchOutput,
        grid0: CoarseGrid,
        grid1: CoarseGrid,
        refined: RefineOutput | None,
        fine_maps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> CoarseMatchOutput:
        """The coarse matches completed with their positions (refined where the model refines)."""
        candidates = coarse_out.candidate_ids  # (B, L0)
        refine_logits = None
        if refined is None:
            candidate_points1 = grid1.ids_to_pixels(candidates)  # (B, L0, 2) cell centres
            uncertainty = torch.full(
                candidates.shape, self.config.coarse_stride / 6**0.5, device=candidates.device
            )
        else:
            candidate_points1, uncertainty, refine_logits = (
                refined.points1,
                refined.uncertainty,
                refined.logits,
            )
        matched = coarse_out.match_ids >= 0  # (B, L0)
        centres0 = grid0.centers(device=candidates.device).unsqueeze(0).expand(matched.shape[0], -1, -1)
        if refined is not None and refined.points0 is not None:  # corner queries: image0's own points
            centres0 = refined.points0
        points0 = torch.where(matched.unsqueeze(-1), centres0, torch.full_like(centres0, -1.0))
        points1 = torch.where(
            matched.unsqueeze(-1), candidate_points1, torch.full_like(candidate_points1, -1.0)
        )
        more = {}
        if refined is not None and refined.more_points0 is not None:  # refine_points > 1: masked alike
            hit = matched.unsqueeze(-1)  # (B, L0, 1)
            more = {
                "more_points0": torch.where(hit.unsqueeze(-1), refined.more_points0, -1.0),
                "more_points1": torch.where(hit.unsqueeze(-1), refined.more_points1, -1.0),
                "more_uncertainty": torch.where(hit, refined.more_uncertainty, 0.0),
            }
        return coarse_out._replace(
            **more,
            points0=points0,
            points1=points1,
            match_uncertainty=torch.where(matched, uncertainty, torch.zeros_like(uncertainty)),
            candidate_points1=candidate_points1,
            candidate_uncertainty=uncertainty,
            refine_logits=refine_logits,
            fine_maps=fine_maps,
            candidate_points0=centres0,
        )

    @property
    def refines(self) -> bool:
        """Whether the student has a sub-pixel refinement stage."""
        return self.refinement is not None

    def refine(
        self, out: CoarseMatchOutput, match_ids: torch.Tensor, image0: torch.Tensor | None = None
    ) -> RefineOutput:
        """The refinement of every image0 cell around a given image1 cell, from ``out``'s fine maps.

        Training scores the refinement around the true cell where a row's own candidate is still wrong
        (:func:`loftr_kd.losses.refinement_ids`; LoFTR pads ground-truth matches into its fine stage the
        same way, inside its model).

        Args:
            out: this student's output for the pair (``fine_maps`` set).
            match_ids: ``(B, L0)`` image1 cell around which each row is refined.
            image0: ``(B, 1, H, W)`` the pair's image0, which corner queries (``refine_query="corner"``) are
                found in where ``out`` does not carry them (``out.queries0``, set by ``forward``); not needed
                for cell-centre queries.

        Returns:
            ``RefineOutput``: ``points1 (B, L0, 2)``, ``uncertainty (B, L0)``, ``logits (B, L0, K)`` and, for
            corner queries, ``points0 (B, L0, 2)`` (the queries, where the truth is needed).
        """
        if self.refinement is None or out.fine_maps is None:
            raise ValueError("this student has no refinement stage (refine='none'): nothing to refine")
        queries0 = None
        if self.refinement.query == "corner":
            queries0 = out.queries0
            if queries0 is None:
                if image0 is None:
                    raise ValueError(
                        "refine() of a student with corner queries needs image0 (they are found in it) "
                        "or an output that carries them (out.queries0)"
                    )
                queries0 = self.refinement.queries(image0)
        fine0, fine1 = out.fine_maps
        ratio = self.fine_stride
        grid1 = CoarseGrid.for_image(
            fine1.shape[2] * ratio, fine1.shape[3] * ratio, self.config.coarse_stride
        )
        return self.refinement(fine0, fine1, match_ids, grid1, queries0)

    def summary(self) -> str:
        """Human-readable sizes and parameter counts."""
        cfg = self.config
        h, w = cfg.grid
        lines = [
            f"CoarseLoFTRStudent: input {cfg.input_height}x{cfg.input_width}, stride {cfg.coarse_stride} "
            f"-> grid {h}x{w} ({h * w} cells); any size up to {cfg.max_height}x{cfg.max_width}",
            f"  backbone     {cfg.backbone}: initial_dim {cfg.initial_dim}, block_dims {list(cfg.block_dims)}"
            + (" (+ unused published FPN layers, frozen)" if cfg.keep_unused_fpn else ""),
            f"  transformer  d_model {cfg.d_model}, d_ffn {cfg.d_ffn}, nhead {cfg.nhead}, "
            f"layers {list(cfg.layer_names)}",
            f"  matching     temperature {cfg.temperature}, threshold {cfg.match_threshold}, "
            f"border {cfg.border_removal}",
        ]
        if cfg.refine != "none":
            window = cfg.refine_window
            lines.append(
                f"  refinement   {cfg.refine}: 1/{cfg.refine_fine_stride} features, {window.size}x{window.size} "
                f"window (reach +-{window.reach:g} px), dim {cfg.refine_dim}"
            )
        for name in ("backbone", "loftr_coarse", "coarse_matching", "refinement"):
            if getattr(self, name) is None:
                continue
            lines.append(f"  params {name:<15} {count_parameters(getattr(self, name)):>12,}")
        total, trainable = count_parameters(self), count_parameters(self, trainable_only=True)
        lines.append(f"  params {'total':<15} {total:>12,} ({trainable:,} trainable)")
        return "\n".join(lines)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of a module.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        Total number of parameter elements.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_student(**kwargs: Any) -> CoarseLoFTRStudent:
    """Build a student from :class:`StudentConfig` fields (the Hydra ``_target_``).

    Lists become tuples; unknown keys raise ``ValueError``. The presets set ``_convert_: all`` so
    Hydra passes plain lists.

    Returns:
        A freshly initialised :class:`CoarseLoFTRStudent`.
    """
    return CoarseLoFTRStudent(StudentConfig.from_dict(kwargs))


def save_student(model: CoarseLoFTRStudent, path: str | os.PathLike) -> Path:
    """Write ``{"student_config": asdict(config), "state_dict": ...}`` atomically (temp file + replace).

    Args:
        model: the student.
        path: destination file; parent directories are created.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "student_config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return torch_save(payload, path)


def load_student(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    input_height: int | None = None,
    input_width: int | None = None,
    match_threshold: float | None = None,
    refine_query: str | None = None,
    refine_points: int | None = None,
    border_removal: int | None = None,
) -> CoarseLoFTRStudent:
    """Rebuild a student from a ``save_student`` file, a Lightning checkpoint or a published
    Coarse_LoFTR_TRT checkpoint (``model_state_dict``, recognised by its keys: :func:`published_checkpoint`).

    A Lightning checkpoint must hold a top-level ``student_config``; its ``state_dict`` keys
    ``student.*`` are used (prefix stripped) and all others (``teacher.*`` ...) ignored.

    Args:
        path: checkpoint file.
        map_location: passed to ``torch.load``.
        input_height: build for this input height instead of the stored one (weights are size-free).
        input_width: likewise for the width.
        match_threshold: build with this match-confidence threshold instead of the stored one.
        refine_query: build with these refinement queries (``"centre"`` / ``"corner"``) instead of the stored
            ones (an inference setting: the weights are the same).
        refine_points: build with this many points per matched cell (corner queries) instead of the stored
            number (an inference setting too).
        border_removal: build dropping matches in this many border cells on each side instead of the stored
            number (an inference setting too).

    Returns:
        The student in eval mode, on ``map_location``'s device.

    The file is read through :func:`loftr_kd.checkpoints.load_checkpoint`: weights only, never code.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a regular file, empty, truncated, corrupt or not a checkpoint.
        UnsafeCheckpointError: the file holds objects beyond weights (it may carry code); refused.
        KeyError: no ``student_config`` / ``state_dict`` in the file.
        StudentMismatchError: the weights' keys or shapes don't fit the config (a ``ValueError`` and a
            ``RuntimeError``, one line naming the first of each kind).
        ValueError: a weight tensor holds NaN or infinite values (a damaged file, a diverged run).
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, "student checkpoint", map_location=map_location)
    if (
        isinstance(checkpoint, Mapping)
        and "student_config" not in checkpoint
        and "model_state_dict" in checkpoint
    ):
        checkpoint = published_checkpoint(checkpoint, path)
    if not isinstance(checkpoint, Mapping) or "student_config" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise KeyError(
            f"{path} has no 'student_config': not a save_student file, a loftr-kd Lightning checkpoint nor a "
            f"published Coarse_LoFTR_TRT checkpoint ('model_state_dict'); it holds {keys}"
        )
    if "state_dict" not in checkpoint:
        raise KeyError(f"{path} has 'student_config' but no 'state_dict'")

    values = dict(checkpoint["student_config"])
    overrides = {  # the load-time settings given (the sizes as given: StudentConfig checks them)
        "input_height": (input_height, lambda size: size),
        "input_width": (input_width, lambda size: size),
        "match_threshold": (match_threshold, float),
        "refine_query": (refine_query, str),
        "refine_points": (refine_points, int),
        "border_removal": (border_removal, int),
    }
    values.update({key: kind(value) for key, (value, kind) in overrides.items() if value is not None})
    for side in ("height", "width"):  # an input size above the stored maximum raises the maximum
        default = StudentConfig.__dataclass_fields__[f"max_{side}"].default
        size = values.get(f"input_{side}", 0)
        values[f"max_{side}"] = max(int(values.get(f"max_{side}", default)), int(size or 0))
    config = StudentConfig.from_dict(values)

    state_dict = checkpoint["state_dict"]
    prefix = "student."
    if any(key.startswith(prefix) for key in state_dict):  # Lightning: module attribute `student`
        state_dict = {
            key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)
        }

    damaged = [k for k, v in state_dict.items() if torch.is_tensor(v) and not torch.isfinite(v).all()]
    if damaged:  # a diverged run's or a corrupted file's weights would match nothing, silently
        raise ValueError(
            f"{path}: {len(damaged)} of its {len(state_dict)} weight tensors hold NaN or infinite values "
            f"(first: {damaged[0]}); the file is damaged or was saved from a run whose training diverged: "
            f"use an earlier checkpoint"
        )
    model = CoarseLoFTRStudent(config)
    expected = model.state_dict()
    reshaped = [
        f"{k} {tuple(v.shape)} in the file, {tuple(expected[k].shape)} for the config"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if reshaped or missing or unexpected:
        raise StudentMismatchError(
            f"{path}: its weights do not fit its student_config ("
            + "; ".join(
                f"{label} {len(names)} (first: {names[0]})"
                for label, names in (
                    ("shapes differ in", reshaped),
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                )
                if names
            )
            + "); the file was edited or saved by other code"
        )
    model.load_state_dict(state_dict)
    if isinstance(map_location, (str, torch.device)):  # torch.load also takes dicts / callables
        model = model.to(map_location)
    return model.eval()


# The published Coarse_LoFTR_TRT student (utils.make_student_config): conf/student/paper.yaml's sizes
# with its two compatibility switches.
PUBLISHED_STUDENT_CONFIG = {"pe_temp_bug_fix": False, "keep_unused_fpn": True}


def published_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A published Coarse_LoFTR_TRT checkpoint (``LoFTR_teacher.pt``: ``epoch``, ``model_state_dict``,
    ``optimizer_state_dict``, ``scaler_state_dict``) as a ``save_student``-style mapping.

    Its ``model_state_dict`` is the `paper` preset's layout exactly (177 keys, no renaming); the sizes are
    the published ones (:class:`StudentConfig` defaults) with ``pe_temp_bug_fix=False`` and
    ``keep_unused_fpn=True``. Anything else under ``model_state_dict`` fails the strict load that follows,
    with the missing and unexpected keys listed.
    """
    state_dict = checkpoint["model_state_dict"]
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise KeyError(f"{path}: 'model_state_dict' is not a state dict of tensors")
    config = asdict(StudentConfig(**PUBLISHED_STUDENT_CONFIG))
    return {"student_config": config, "state_dict": dict(state_dict), "source": "Coarse_LoFTR_TRT"}


def _setting(value: Any) -> str:
    """A config value as a Hydra override writes it (lists in brackets, no spaces)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_setting(v) for v in value) + "]"
    return str(value)


def init_student_weights(model: CoarseLoFTRStudent, path: str | os.PathLike) -> list[str]:
    """Start ``model`` from the weights of another student file (fine-tuning, ``init_weights=``).

    Every weight of the source must fit ``model``. The one allowed difference: ``model`` has a
    refinement stage the source lacks (a coarse-only student fine-tuned into a refined one); those
    weights keep their fresh initialisation and are listed in the result.

    Args:
        model: the student to initialise (in place).
        path: a file :func:`load_student` reads.

    Returns:
        The names of the weights left at their initialisation.

    Raises:
        ValueError: a source weight has no place in ``model`` or a different shape, or ``model`` lacks a
            weight outside its refinement stage; the message names the architecture settings in which the
            file's student differs from ``model`` (what to set, e.g. ``student=paper_refine``).
    """
    source_model = load_student(path)
    source = source_model.state_dict()
    target = model.state_dict()
    unexpected = sorted(set(source) - set(target))
    missing = sorted(set(target) - set(source))
    outside = [k for k in missing if not k.startswith("refinement.")]
    shapes = [k for k in source if k in target and source[k].shape != target[k].shape]
    if unexpected or outside or shapes:
        theirs, ours = asdict(source_model.config), asdict(model.config)
        differ = [k for k in theirs if k not in LOAD_TIME_SETTINGS and theirs[k] != ours[k]]
        settings = ", ".join(f"{k}={_setting(theirs[k])} (this student: {_setting(ours[k])})" for k in differ)
        counts = f"{len(unexpected)} of its weights not in this student, {len(outside)} missing, {len(shapes)} shaped otherwise"
        raise ValueError(
            f"{path}: its weights do not fit this student ({counts}; e.g. "
            f"{(unexpected + outside + shapes)[0]}); the file's student has {settings or 'the same settings'}: "
            f"train that student (a student= preset with those settings, e.g. student=paper_refine for a refined "
            f"paper student, or student.<name>= overrides) or start from another file"
        )
    model.load_state_dict(source, strict=False)
    return missing
