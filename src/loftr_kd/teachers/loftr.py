"""The frozen teacher: LoFTR outdoor "ds" from kornia, reduced to its coarse dual-softmax matrices.

The teacher is kornia's full ``LoFTR`` (so every checkpoint loads strictly, fine stage included), but
``forward`` runs only the coarse path: backbone up to 1/8, positional encoding, coarse transformer and
the dual-softmax normalisation of kornia's ``CoarseMatching``. Asked for ``fine_cells``, it also runs
kornia's fine stage (5x5 windows of the 1/2 map, fine transformer, expectation) on its own coarse matches
of those image0 cells: the targets that distil a student's refinement (:class:`TeacherFine`). It is frozen
(no gradients, always in eval mode) and computes in float32 even under autocast.

Weights come from a local file only; nothing is ever downloaded. Two files are known:

- zju3dv's ``outdoor_ds.ckpt``: ``{"state_dict": {...}}``, keys without prefix (``backbone.conv1.weight``).
  Checkpoints written by LoFTR's own Lightning training carry a ``matcher.`` prefix on the same keys.
- kornia's ``loftr_outdoor.ckpt``: also ``{"state_dict": {...}}``; kornia's ``LoFTR.load_state_dict``
  strips a leading ``matcher.``, so either key form is accepted.

Both were trained with the buggy positional encoding (``temp_bug_fix=False``, LoFTR issues #41, #64,
#191). ``temp_bug_fix=None`` decides it from the file name, see :func:`infer_temp_bug_fix`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from kornia.feature import LoFTR
from kornia.feature.loftr import loftr as kornia_loftr
from torch import Tensor

from loftr_kd.checkpoints import CheckpointError, UnsafeCheckpointError, load_checkpoint
from loftr_kd.geometry import CoarseGrid
from loftr_kd.models.matching import mutual_nearest_matches
from loftr_kd.teachers.base import (
    FINE,
    SIMILARITY,
    FrozenTeacher,
    TeacherFine,
    TeacherOutput,
    check_image_batch,
    no_grad_float32,
)

__all__ = [
    "KNOWN_CHECKPOINT_NAMES",
    "KORNIA_OUTDOOR_TEMP_BUG_FIX",
    "LoFTRTeacher",
    "TeacherCheckpointError",
    "TeacherCheckpointNotFound",
    "build_teacher",
    "find_teacher_checkpoint",
    "infer_temp_bug_fix",
    "load_teacher",
    "read_loftr_state_dict",
]

# Searched in this order by `find_teacher_checkpoint`.
KNOWN_CHECKPOINT_NAMES = ("outdoor_ds.ckpt", "loftr_outdoor.ckpt")
CHECKPOINT_SOURCES = (
    "zju3dv's outdoor_ds.ckpt (https://github.com/zju3dv/LoFTR, 'weights' link in its README) or "
    f"kornia's loftr_outdoor.ckpt ({kornia_loftr.urls['outdoor'][0]})"
)

# kornia builds `LoFTR(pretrained="outdoor")` from its `default_cfg`, whose coarse.temp_bug_fix is False;
# only "indoor_new" switches it on. Pinned here rather than read from `default_cfg`, which older kornia
# versions mutated when an `indoor_new` model was built.
KORNIA_OUTDOOR_TEMP_BUG_FIX = False

# Architecture of LoFTR outdoor "ds", pinned over kornia's default config so a change of kornia's
# defaults cannot silently change the teacher.
_OUTDOOR_DS = {
    "backbone_type": "ResNetFPN",
    "resolution": (8, 2),
    "resnetfpn": {"initial_dim": 128, "block_dims": [128, 196, 256]},
    "coarse": {
        "d_model": 256,
        "d_ffn": 256,
        "nhead": 8,
        "layer_names": ["self", "cross"] * 4,
        "attention": "linear",
    },
    "match_coarse": {"match_type": "dual_softmax", "dsmax_temperature": 0.1},
}
_MAX_LISTED_KEYS = 5


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint exists but cannot be used (not a checkpoint, no state_dict, wrong keys)."""


class TeacherCheckpointNotFound(FileNotFoundError):
    """``weights="auto"`` found no known checkpoint; the training code may then run without a teacher.

    A missing *explicit* path raises a plain :class:`FileNotFoundError` instead, so it is never
    mistaken for the optional default.
    """


def outdoor_ds_config(temp_bug_fix: bool) -> dict[str, Any]:
    """A fresh (deep-copied) kornia LoFTR config for outdoor "ds" with the given positional encoding."""
    config = copy.deepcopy(kornia_loftr.default_cfg)
    for key, value in copy.deepcopy(_OUTDOOR_DS).items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    config["coarse"]["temp_bug_fix"] = bool(temp_bug_fix)
    return config


class LoFTRTeacher(FrozenTeacher):
    """Frozen LoFTR outdoor "ds" (kornia) producing coarse similarity and dual-softmax confidence.

    Images whose sides are not multiples of 8 lose their last ``H % 8`` rows and ``W % 8`` columns, so
    the grid is ``H // 8 × W // 8`` as the coarse-grid contract states (cell centres do not move).

    Args:
        temp_bug_fix: positional encoding variant; False for zju3dv's and kornia's outdoor weights.

    Example:
        >>> teacher = LoFTRTeacher()  # random weights; see load_teacher / build_teacher
        >>> out = teacher(torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 64))
        >>> out.similarity.shape
        torch.Size([1, 96, 64])
    """

    stride = 8
    cell_origin = 0.0  # LoFTR's cell t is the point 8 * t (its supervision, fine stage and receptive fields)
    provides = frozenset({SIMILARITY, FINE})
    name = "LoFTR outdoor"

    def __init__(self, temp_bug_fix: bool = False) -> None:
        super().__init__()
        self.temp_bug_fix = bool(temp_bug_fix)
        self.checkpoint_path: Path | None = None  # set by load_teacher, for logs
        self.config = outdoor_ds_config(self.temp_bug_fix)
        # kornia deep-copies again, but the teacher must not depend on that (older versions did not).
        self.matcher = LoFTR(pretrained=None, config=copy.deepcopy(self.config))
        self.freeze()

    @property
    def temperature(self) -> float:
        """Dual-softmax temperature of kornia's ``CoarseMatching`` (0.1)."""
        return float(self.matcher.coarse_matching.temperature)

    def num_parameters(self, coarse_only: bool = False) -> int:
        """Parameter count of the full LoFTR, or of its coarse part (backbone + coarse transformer)."""
        if not coarse_only:
            return sum(p.numel() for p in self.parameters())
        matcher = self.matcher
        parts = (matcher.backbone, matcher.pos_encoding, matcher.loftr_coarse, matcher.coarse_matching)
        return sum(p.numel() for part in parts for p in part.parameters())

    def load_loftr_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str | Path = "state_dict"
    ) -> None:
        """Load LoFTR weights (keys without prefix), with errors that name ``source`` and the keys.

        Missing ``num_batches_tracked`` counters are tolerated: they do not affect eval mode.
        """
        expected = self.matcher.state_dict()
        missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            lines = [f"{source}: the state_dict does not match LoFTR outdoor 'ds'."]
            if missing:
                lines.append(f"  {len(missing)} missing key(s), e.g. {_first(missing)}")
            if unexpected:
                lines.append(f"  {len(unexpected)} unexpected key(s), e.g. {_first(unexpected)}")
            if "coarse_matching.bin_score" in unexpected:
                lines.append(
                    "  'coarse_matching.bin_score' marks an optimal-transport ('ot') checkpoint; the teacher "
                    "needs the dual-softmax one (outdoor_ds.ckpt)."
                )
            raise TeacherCheckpointError("\n".join(lines))
        wrong_shape = [
            f"{k}: {tuple(state_dict[k].shape)} in file, {tuple(v.shape)} in model"
            for k, v in expected.items()
            if k in state_dict and state_dict[k].shape != v.shape
        ]
        if wrong_shape:
            raise TeacherCheckpointError(
                f"{source}: {len(wrong_shape)} tensor(s) have the wrong shape for LoFTR outdoor 'ds', e.g. "
                + "; ".join(wrong_shape[:_MAX_LISTED_KEYS])
            )
        full = {k: state_dict.get(k, v) for k, v in expected.items()}
        self.matcher.load_state_dict(full, strict=True)

    def _coarse_features(self, image: Tensor) -> Tensor:
        """Backbone to 1/8 only: kornia's ResNetFPN_8_2 coarse output, skipping its fine FPN branch."""
        backbone = self.matcher.backbone
        x = backbone.relu(backbone.bn1(backbone.conv1(image)))  # (B, 128, H/2, W/2)
        x = backbone.layer3(backbone.layer2(backbone.layer1(x)))  # (B, 256, H/8, W/8)
        return backbone.layer3_outconv(x)  # (B, 256, H/8, W/8)

    def _features(self, image: Tensor, fine: bool) -> tuple[Tensor, Tensor | None]:
        """Coarse map (B, 256, H/8, W/8) and, with ``fine``, the 1/2 map (B, 128, H/2, W/2)."""
        if not fine:
            return self._coarse_features(image), None
        coarse, fine_map = self.matcher.backbone(image)  # kornia's ResNetFPN_8_2: the same coarse output
        return coarse, fine_map

    def _encoded_tokens(
        self, image0: Tensor, image1: Tensor, fine: bool = False
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """Position-encoded coarse features of both images as token sequences (B, L, C), and with ``fine``
        the two 1/2 maps."""
        if image0.shape == image1.shape:  # one backbone pass for both, as kornia does
            coarse, fine_map = self._features(torch.cat([image0, image1]), fine)
            feats = coarse.chunk(2)
            fine_maps = None if fine_map is None else tuple(fine_map.chunk(2))
        else:
            (c0, f0), (c1, f1) = self._features(image0, fine), self._features(image1, fine)
            feats, fine_maps = (c0, c1), (None if f0 is None else (f0, f1))
        tokens = []
        for feat in feats:
            feat = self.matcher.pos_encoding(feat)  # (B, C, h, w)
            tokens.append(feat.flatten(2).transpose(1, 2).contiguous())  # (B, h*w, C), row-major cells
        return tokens[0], tokens[1], fine_maps

    def _fine_matches(
        self,
        confidence: Tensor,
        tokens: tuple[Tensor, Tensor],
        fine_maps: tuple[Tensor, Tensor],
        shapes: tuple[tuple[int, int], tuple[int, int]],
        fine_cells: Tensor,
    ) -> TeacherFine:
        """kornia's fine stage on the teacher's own coarse match of each requested image0 cell."""
        b, l0, _ = confidence.shape
        if fine_cells.ndim != 1 or (fine_cells.numel() and (fine_cells.min() < 0 or fine_cells.max() >= l0)):
            raise ValueError(
                f"fine_cells must be (N,) image0 cell ids in [0, {l0}), got {tuple(fine_cells.shape)}"
            )
        cells = fine_cells.to(confidence.device, torch.long)
        n = cells.numel()
        # LoFTR's own match rule (mutual nearest, above its threshold, off its border): the project's
        # mutual_nearest_matches, which the student's matching and the teacher's validation use too
        grid0, grid1 = (CoarseGrid(self.stride, h, w) for h, w in shapes)
        border = int(self.matcher.coarse_matching.border_rm)
        match_ids, _, candidates = mutual_nearest_matches(
            confidence,
            float(self.matcher.coarse_matching.thr),
            grid0.border_mask(border, device=confidence.device),
            grid1.border_mask(border, device=confidence.device),
            return_candidates=True,
        )
        valid = match_ids[:, cells] >= 0  # (B, N)
        j = candidates[:, cells]  # (B, N) each cell's best image1 cell
        stride_c, stride_f = self.config["resolution"]
        b_ids = torch.arange(b, device=cells.device).repeat_interleave(n)
        i_ids, j_ids = cells.repeat(b), j.reshape(-1)

        def loftr_pixels(ids: Tensor, grid: CoarseGrid) -> Tensor:  # LoFTR's mkpts_c: stride * (x, y)
            row, col = grid.rows_cols(ids)
            return torch.stack([col, row], -1).float() * stride_c

        points0, coarse1 = loftr_pixels(i_ids, grid0), loftr_pixels(j_ids, grid1)
        data: dict[str, Any] = {
            "stride_c": stride_c,
            "stride_f": stride_f,
            "b_ids": b_ids,
            "i_ids": i_ids,
            "j_ids": j_ids,
            "mkpts0_c": points0,
            "mkpts1_c": coarse1,
            "mconf": torch.ones(b * n, device=cells.device),
        }
        windows0, windows1 = self.matcher.fine_preprocess(*fine_maps, *tokens, data)
        if windows0.shape[0]:
            windows0, windows1 = self.matcher.loftr_fine(windows0, windows1)
        self.matcher.fine_matching(windows0, windows1, data)
        return TeacherFine(points0.view(b, n, 2), data["mkpts1_f"].float().view(b, n, 2), valid)

    def forward(self, image0: Tensor, image1: Tensor, fine_cells: Tensor | None = None) -> TeacherOutput:
        """Coarse similarity and dual-softmax confidence of LoFTR at stride 8.

        Args:
            image0: grayscale images in [0, 1], (B, 1, H0, W0); any float dtype, computed in float32.
            image1: grayscale images in [0, 1], (B, 1, H1, W1).
            fine_cells: ``(N,)`` image0 cell ids whose fine matches to compute (:class:`TeacherFine`);
                ``None``: the coarse path only.

        Returns:
            TeacherOutput with ``similarity`` and ``confidence`` of shape (B, L0, L1), float32,
            ``L = (H // 8) * (W // 8)``, cells flattened row-major; ``fine`` for ``fine_cells``.
        """
        image0 = check_image_batch(image0, "image0", self.stride)
        image1 = check_image_batch(image1, "image1", self.stride)
        if image0.shape[0] != image1.shape[0]:
            raise ValueError(
                f"image0 and image1 need the same batch size, got {image0.shape[0]} and {image1.shape[0]}"
            )
        if self.matcher.backbone.conv1.weight.dtype != torch.float32:
            raise RuntimeError(
                f"The teacher's weights are {self.matcher.backbone.conv1.weight.dtype}; keep it in float32 "
                "(use a mixed precision such as '16-mixed' or 'bf16-mixed', not '16-true'/'bf16-true')."
            )
        # Half precision is where LoFTR's NaNs come from (#188, #285), and the distillation target must not
        # change with the AMP setting: float32 always.
        want_fine = fine_cells is not None
        with no_grad_float32(image0.device.type):
            tokens0, tokens1, fine_maps = self._encoded_tokens(image0.float(), image1.float(), want_fine)
            tokens0, tokens1 = self.matcher.loftr_coarse(tokens0, tokens1)  # (B, L0, C), (B, L1, C)
            # kornia's CoarseMatching: each side scaled by 1/sqrt(C), then the product divided by the temperature.
            scale = tokens0.shape[-1] ** 0.5
            similarity = torch.matmul(tokens0 / scale, (tokens1 / scale).transpose(1, 2))  # (B, L0, L1)
            similarity = similarity / self.temperature
            confidence = F.softmax(similarity, dim=1) * F.softmax(similarity, dim=2)  # (B, L0, L1)
            fine = None
            if want_fine:
                shapes = tuple(
                    (im.shape[-2] // self.stride, im.shape[-1] // self.stride) for im in (image0, image1)
                )
                fine = self._fine_matches(confidence, (tokens0, tokens1), fine_maps, shapes, fine_cells)
        return TeacherOutput(similarity=similarity, confidence=confidence, fine=fine)


def _first(keys: list[str]) -> str:
    """The first few keys, for error messages."""
    more = f", ... (+{len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
    return ", ".join(keys[:_MAX_LISTED_KEYS]) + more


def infer_temp_bug_fix(path: str | Path) -> bool:
    """Positional-encoding variant of a LoFTR checkpoint, decided from its file name.

    The encoding is a non-persistent buffer, so the weights cannot tell. Rule (case-insensitive):

    - a name containing ``_new`` (``indoor_ds_new.ckpt``, kornia's ``loftr_indoor_ds_new.ckpt``):
      True, those were retrained after the fix (LoFTR issue #41);
    - a name starting with ``outdoor_ds`` or ``indoor_ds`` (zju3dv's originals): False (issues #64, #191);
    - a name starting with ``loftr_outdoor`` or ``loftr_indoor`` (kornia's files): kornia's setting, False;
    - anything else: ValueError; pass ``temp_bug_fix`` explicitly.
    """
    name = Path(path).name.lower()
    if "_new" in name:
        return True
    if name.startswith(("outdoor_ds", "indoor_ds")):
        return False
    if name.startswith(("loftr_outdoor", "loftr_indoor")):
        return KORNIA_OUTDOOR_TEMP_BUG_FIX
    raise ValueError(
        f"{path}: cannot tell from the file name which positional encoding these LoFTR weights were "
        "trained with; pass temp_bug_fix=False (zju3dv outdoor_ds / kornia outdoor weights) or True "
        "(weights trained after LoFTR's positional-encoding fix)."
    )


def read_loftr_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read LoFTR weights from a local checkpoint, keys returned without the ``matcher.`` prefix.

    Accepts ``{"state_dict": {...}}`` (zju3dv, kornia, Lightning; keys with or without ``matcher.``) and
    a bare mapping of tensors (``torch.save(model.state_dict())``). The file is read through
    :func:`loftr_kd.checkpoints.load_checkpoint`: weights only, never code.

    Args:
        path: local file; nothing is downloaded.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file holds objects beyond weights (it may carry code); refused.
        TeacherCheckpointError: not a torch checkpoint, no state_dict, or non-tensor entries.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"LoFTR teacher checkpoint {path} not found. Put {CHECKPOINT_SOURCES} at that path, or use "
            "weights=auto with a weights_dir; nothing is downloaded."
        )
    try:
        checkpoint = load_checkpoint(path, "LoFTR teacher checkpoint")
    except UnsafeCheckpointError:
        raise
    except CheckpointError as error:
        raise TeacherCheckpointError(str(error)) from None

    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    elif (
        isinstance(checkpoint, Mapping)
        and checkpoint
        and all(isinstance(v, Tensor) for v in checkpoint.values())
    ):
        state_dict = checkpoint
    else:
        found = (
            f"keys {_first([str(k) for k in checkpoint])}"
            if isinstance(checkpoint, Mapping)
            else type(checkpoint)
        )
        raise TeacherCheckpointError(
            f"{path} holds no LoFTR state_dict: expected {{'state_dict': {{...}}}} (zju3dv, kornia, Lightning) "
            f"or a mapping of tensors, found {found}."
        )
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise TeacherCheckpointError(f"{path}: 'state_dict' is not a mapping of tensors.")

    unprefixed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key.removeprefix("matcher.")
        if name in unprefixed:
            raise TeacherCheckpointError(f"{path}: key {name!r} appears both with and without 'matcher.'.")
        unprefixed[name] = value
    return unprefixed


def _first_line(error: BaseException) -> str:
    """First line of an exception message, for error messages."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def load_teacher(path: str | Path, temp_bug_fix: bool | None = None) -> LoFTRTeacher:
    """A frozen teacher with the weights of a local LoFTR checkpoint.

    Args:
        path: zju3dv ``outdoor_ds.ckpt``, kornia ``loftr_outdoor.ckpt`` or a Lightning checkpoint of LoFTR.
        temp_bug_fix: positional encoding; None decides from the file name (:func:`infer_temp_bug_fix`).
    """
    state_dict = read_loftr_state_dict(path)
    if temp_bug_fix is None:
        temp_bug_fix = infer_temp_bug_fix(path)
    teacher = LoFTRTeacher(temp_bug_fix=temp_bug_fix)
    teacher.load_loftr_state_dict(state_dict, source=path)
    teacher.checkpoint_path = Path(path)
    return teacher


def find_teacher_checkpoint(weights_dir: str | Path | None) -> Path | None:
    """The first of :data:`KNOWN_CHECKPOINT_NAMES` present in ``weights_dir``, else None."""
    if weights_dir is None:
        return None
    for name in KNOWN_CHECKPOINT_NAMES:
        candidate = Path(weights_dir) / name
        if candidate.is_file():
            return candidate
    return None


def build_teacher(
    weights: str | Path,
    temp_bug_fix: bool | None = None,
    weights_dir: str | Path | None = None,
) -> LoFTRTeacher:
    """Hydra entry point (``conf/teacher/loftr_outdoor.yaml``).

    Args:
        weights: a checkpoint path, or ``"auto"`` for the first known file in ``weights_dir``.
        temp_bug_fix: positional encoding; None decides from the file name (:func:`infer_temp_bug_fix`).
        weights_dir: folder searched by ``"auto"``.

    Raises:
        TeacherCheckpointNotFound: ``"auto"`` found no checkpoint (callers may go on without a teacher).
        FileNotFoundError: an explicit ``weights`` path does not exist.
    """
    if str(weights) == "auto":
        found = find_teacher_checkpoint(weights_dir)
        if found is None:
            where = (
                f"in {Path(weights_dir).resolve()}" if weights_dir is not None else "(no weights_dir given)"
            )
            raise TeacherCheckpointNotFound(
                f"No LoFTR teacher checkpoint {where}: looked for {', '.join(KNOWN_CHECKPOINT_NAMES)}. "
                f"Put {CHECKPOINT_SOURCES} there; nothing is downloaded."
            )
        weights = found
    return load_teacher(weights, temp_bug_fix=temp_bug_fix)
