"""The student behind ``kornia.feature.LoFTR``'s calling convention: a drop-in for code written for kornia.

``StudentLoFTR()(data)`` takes ``{"image0": (B, 1, H0, W0), "image1": (B, 1, H1, W1)}`` grayscale tensors
in [0, 1] and returns kornia's dict: ``keypoints0`` / ``keypoints1`` ``(N, 2)`` float32 xy,
``confidence`` ``(N,)`` (the coarse dual-softmax score, the model's dtype) and ``batch_indexes``
``(N,)`` int64, the pair each match belongs to. So the result feeds kornia's own tools unchanged
(``kornia.geometry.ransac.RANSAC``, ``kornia.feature.laf_from_center_scale_ori`` for LAF-based
visualisation such as kornia_moons' ``draw_LAF_matches``, ``LocalFeatureMatcher``-style loops over
``batch_indexes``).

Conventions (kornia's LoFTR docstring):

- Images are matched at their own size like kornia's LoFTR, each side rounded to a multiple of the
  coarse stride (16) first; ``size=`` instead resizes the long side to ``size`` pixels (aspect kept), as
  :class:`loftr_kd.matcher.Matcher` does. Keypoints are in the pixels of the images as given.
- ``keypoint_frame="loftr"`` (default) returns keypoints in the frame of kornia's pretrained LoFTR, which
  puts the centre of pixel ``(x, y)`` at ``(x + 0.5, y + 0.5)``, so code that subtracts 0.5 for kornia's
  frame, as kornia documents, gets it right; ``"kornia"`` returns integer pixel centres directly (the
  frame of this project and of :class:`~loftr_kd.matcher.Matcher`).
- ``mask0`` / ``mask1`` (padding masks) and precomputed ``features0`` / ``features1`` are not supported:
  passing them is an error, not silently ignored. Degenerate images (a side under two coarse cells,
  NaN/Inf values, a batch size mismatch) are errors too, and so are integer tensors and values outside
  [0, 1] (``uint8`` or 0–255 floats would give no matches, so they are refused; kornia's LoFTR fails on a
  pair of ``uint8`` tensors with a dtype error, and runs a ``uint8``/float pair or 0–255 floats silently).
- The module is an inference wrapper: it starts in eval mode and stays there (``.train()`` does not switch
  the wrapped student's BatchNorm to batch statistics), since its forward runs without gradients.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loftr_kd.errors import user_stacklevel
from loftr_kd.matcher import aspect_true_size
from loftr_kd.models.matching import match_entries

__all__ = ["KEYPOINT_FRAMES", "StudentLoFTR"]

KEYPOINT_FRAMES = ("loftr", "kornia")
_UNSUPPORTED_KEYS = ("mask0", "mask1", "features0", "features1")
# Resampling and colour conversion can leave values a hair outside [0, 1]; more than this is a wrong range.
_RANGE_SLACK = 1e-3


class StudentLoFTR(nn.Module):
    """The distilled student with ``kornia.feature.LoFTR``'s ``forward(data) -> dict``.

    Args:
        weights: a student checkpoint (``.pt``/``.ckpt``); ``None`` = the shipped student. Ignored when
            ``model`` is given.
        model: an already built :class:`~loftr_kd.models.student.CoarseLoFTRStudent` to wrap.
        size: long side images are resized to (aspect kept); ``None`` matches them at their own size.
        keypoint_frame: ``"loftr"`` (kornia LoFTR's frame, pixel centres at ``+0.5``) or ``"kornia"``.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        model: nn.Module | None = None,
        size: int | None = None,
        keypoint_frame: str = "loftr",
    ) -> None:
        super().__init__()
        if keypoint_frame not in KEYPOINT_FRAMES:
            raise ValueError(f"keypoint_frame must be one of {KEYPOINT_FRAMES}, got {keypoint_frame!r}")
        if model is None:
            from loftr_kd.models.student import load_student
            from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS

            path = weights if weights is not None else DEFAULT_STUDENT_WEIGHTS
            if str(path).lower().endswith((".onnx", ".engine", ".plan", ".trt")):
                raise ValueError(
                    f"{path}: StudentLoFTR runs a torch checkpoint (.pt/.ckpt); for an exported graph use "
                    "loftr_kd.Matcher(weights, backend='onnx' or 'trt'), which takes numpy images"
                )
            model = load_student(path)
        whole = isinstance(size, int) or (isinstance(size, float) and size.is_integer())
        if size is not None and (isinstance(size, bool) or not whole or not 32 <= size <= 4096):
            raise ValueError(
                f"size={size!r}: expected a whole number of pixels for the long side, from 32 (two coarse "
                "cells) to 4096, or None to match images at their own size"
            )
        self.model = model.eval()
        self.size = None if size is None else int(size)
        self.keypoint_frame = keypoint_frame
        config = self.model.config
        self.stride = int(config.coarse_stride)
        self.max_size = (int(config.max_height), int(config.max_width))
        self.min_cells = max(2, 2 * int(config.border_removal) + 1)
        self.eval()

    def train(self, mode: bool = True) -> StudentLoFTR:
        """Kept in eval mode (an inference wrapper): a parent's ``.train()`` must not make the student's
        BatchNorm use, and update, batch statistics."""
        return super().train(False)

    def _model_input(self, name: str, image: Any) -> torch.Tensor:
        """Check an input image and resize it to its model size (a multiple of the stride)."""
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (B, 1, H, W), got {type(image).__name__}")
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(
                f"{name} must be (B, 1, H, W) grayscale like kornia's LoFTR, got {tuple(image.shape)}"
            )
        if image.numel() == 0:
            raise ValueError(f"{name} is empty: shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(
                f"{name} is {image.dtype}: kornia's LoFTR takes float images in [0, 1]; convert it "
                f"with {name}.float() / 255 (for 8-bit images)"
            )
        if not torch.isfinite(image).all():
            raise ValueError(
                f"{name} has NaN or infinite values; replace them (torch.nan_to_num) before matching"
            )
        low, high = float(image.detach().min()), float(image.detach().max())
        if low < -_RANGE_SLACK or high > 1.0 + _RANGE_SLACK:
            hint = " (0-255 values: divide by 255)" if high > 1.0 + _RANGE_SLACK and high <= 255.0 else ""
            raise ValueError(
                f"{name} has values in [{low:.4g}, {high:.4g}]: kornia's LoFTR takes images in [0, 1]{hint}"
            )
        h, w = int(image.shape[2]), int(image.shape[3])
        size = self.size if self.size is not None else max(h, w)
        input_h, input_w, enlarged = aspect_true_size(
            h, w, size, self.stride, min_cells=self.min_cells, max_size=self.max_size, name=name
        )
        if enlarged:
            warnings.warn(
                f"{name} of {w}x{h} pixels is too elongated for a long side of {size} px: its short side would "
                f"get fewer than {self.min_cells} coarse cells (border removal leaves none), so it is matched "
                f"at {input_w}x{input_h} instead",
                stacklevel=user_stacklevel(),
            )
        param = next(self.model.parameters())
        image = image.to(device=param.device, dtype=param.dtype)
        if (input_h, input_w) == (h, w):
            return image
        shrink = input_h * input_w < h * w
        return F.interpolate(
            image, size=(input_h, input_w), mode="bilinear", align_corners=False, antialias=shrink
        )

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Match a batch of image pairs.

        Args:
            data: ``image0`` ``(B, 1, H0, W0)`` and ``image1`` ``(B, 1, H1, W1)``, grayscale in [0, 1].

        Returns:
            ``keypoints0`` ``(N, 2)``, ``keypoints1`` ``(N, 2)`` (float32, pixels of the images as given, in
            ``keypoint_frame``), ``confidence`` ``(N,)``, ``batch_indexes`` ``(N,)`` int64.
        """
        if not isinstance(data, dict):
            raise TypeError(
                f"StudentLoFTR takes a dict {{'image0': (B, 1, H, W), 'image1': ...}} like kornia's LoFTR, "
                f"got {type(data).__name__}"
            )
        unsupported = [key for key in _UNSUPPORTED_KEYS if key in data]
        if unsupported:
            raise ValueError(
                f"StudentLoFTR does not support {unsupported} (kornia LoFTR options for padded batches and "
                "precomputed features); pass image0 and image1 only"
            )
        missing = [key for key in ("image0", "image1") if key not in data]
        if missing:
            raise KeyError(f"StudentLoFTR needs {missing} in its input dict, got keys {sorted(data)}")
        image0, image1 = data["image0"], data["image1"]
        input0, input1 = self._model_input("image0", image0), self._model_input("image1", image1)
        if image0.shape[0] != image1.shape[0]:
            raise ValueError(f"image0 and image1 batch sizes differ: {image0.shape[0]} vs {image1.shape[0]}")
        with torch.no_grad():
            out = match_entries(self.model(input0, input1))  # every point of a match (refine_points)
        batch_indexes, cells = torch.nonzero(out.match_ids >= 0, as_tuple=True)  # outside any graph
        shift = 0.5 if self.keypoint_frame == "loftr" else 0.0
        keypoints = []
        for points, given, model_input in ((out.points0, image0, input0), (out.points1, image1, input1)):
            scale = torch.tensor(
                [given.shape[3] / model_input.shape[3], given.shape[2] / model_input.shape[2]],
                device=points.device,
            )
            xy = (points[batch_indexes, cells].float() + 0.5) * scale - 0.5  # pixels of the image as given
            limit = torch.tensor(
                [given.shape[3] - 1, given.shape[2] - 1], device=points.device, dtype=xy.dtype
            )
            keypoints.append(torch.minimum(xy.clamp(min=0), limit) + shift)
        return {
            "keypoints0": keypoints[0],
            "keypoints1": keypoints[1],
            "confidence": out.match_confidence[batch_indexes, cells],
            "batch_indexes": batch_indexes,
        }
