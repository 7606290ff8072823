"""LoFTR's ResNet-FPN backbone (BasicBlock), trimmed to the coarse output.

LoFTR's ``ResNetFPN_8_2`` / ``ResNetFPN_16_4`` (and Coarse_LoFTR_TRT's copies) run a ResNet down to the
coarse stride, take the coarse map through a 1x1 ``layerN_outconv``, and build the fine map by a
top-down FPN. A coarse-only matcher needs only the first part: ``coarse = layerN_outconv(ResNet(x))``.
Module names follow LoFTR (``conv1``, ``bn1``, ``layer1`` ..., ``layerN_outconv``) so LoFTR-layout
state dicts load.

To add a backbone, give it the same interface — ``(N, 1, H, W) -> (N, d_model, H/s, W/s)`` — and
register it in :func:`check_backbone_config` and :func:`build_backbone`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from loftr_kd.models.fast_backbone import FastBackbone, check_fast_config
from loftr_kd.models.layers import conv1x1, conv3x3, init_conv_bn

BACKBONES = ("resnet_fpn", "fast")  # "fast": loftr_kd.models.fast_backbone


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity (or strided 1x1 projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.conv2 = conv3x3(planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            None if stride == 1 else nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, planes, H/stride, W/stride)``."""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class ResNetFPNCoarse(nn.Module):
    """LoFTR ResNet-FPN trimmed to its coarse output.

    A 7x7 stride-2 stem, then ``len(block_dims)`` stages of two BasicBlocks; the first stage keeps
    resolution (1/2), each further stage halves it, so the coarse stride is ``2 ** len(block_dims)``
    (3 stages: stride 8 as ``ResNetFPN_8_2``; 4 stages: stride 16 as ``ResNetFPN_16_4``).

    Args:
        initial_dim: stem channels.
        block_dims: channels of each stage; the last one is the coarse feature dimension.
        keep_unused_fpn: also create the top-down FPN layers of the published model
            (``layer{N-1}_outconv{,2}``, ``layer{N-2}_outconv{,2}``) that produce LoFTR's *fine* map.
            They never touch the coarse output, are never run here, and are frozen
            (``requires_grad=False``, so DDP and optimisers ignore them); they exist only so the
            parameter count and state dict match Coarse_LoFTR_TRT's published student.
    """

    def __init__(self, initial_dim: int, block_dims: tuple[int, ...], keep_unused_fpn: bool = False) -> None:
        super().__init__()
        self.stride = 2 ** len(block_dims)
        self.conv1 = nn.Conv2d(1, initial_dim, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(initial_dim)
        self.relu = nn.ReLU(inplace=True)

        in_planes = initial_dim
        for index, dim in enumerate(block_dims):
            stride = 1 if index == 0 else 2
            stage = nn.Sequential(BasicBlock(in_planes, dim, stride), BasicBlock(dim, dim, 1))
            self.add_module(f"layer{index + 1}", stage)
            in_planes = dim
        self.num_stages = len(block_dims)
        self.add_module(f"layer{self.num_stages}_outconv", conv1x1(block_dims[-1], block_dims[-1]))

        unused: list[nn.Module] = []
        if keep_unused_fpn:
            for level in (self.num_stages - 1, self.num_stages - 2):  # 1-based stage numbers
                lower, upper = block_dims[level - 1], block_dims[level]
                outconv = conv1x1(lower, upper)
                outconv2 = nn.Sequential(
                    conv3x3(upper, upper), nn.BatchNorm2d(upper), nn.LeakyReLU(), conv3x3(upper, lower)
                )
                self.add_module(f"layer{level}_outconv", outconv)
                self.add_module(f"layer{level}_outconv2", outconv2)
                unused += [outconv, outconv2]

        init_conv_bn(self)
        for module in unused:
            module.requires_grad_(False)

        self._stage_names = tuple(f"layer{i + 1}" for i in range(self.num_stages))
        self._block_dims = tuple(block_dims)
        self._outconv_name = f"layer{self.num_stages}_outconv"

    def fine_channels(self, fine_stride: int) -> int:
        """Channels of the map at ``fine_stride`` (the output of stage ``log2(fine_stride)``)."""
        return self._block_dims[_stage_index(fine_stride, self.stride)]

    def forward_features(
        self, x: torch.Tensor, fine_stride: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Coarse features and, when asked, the stage output at ``fine_stride`` (for refinement).

        Args:
            x: grayscale images ``(N, 1, H, W)``.
            fine_stride: stride of the extra map (2 = after ``layer1``, 4 = after ``layer2``, ...).

        Returns:
            ``(N, block_dims[-1], H/s, W/s)`` coarse map and ``(N, C_f, H/f, W/f)`` fine map (or None).
        """
        fine_stage = None if fine_stride is None else _stage_index(fine_stride, self.stride)
        fine = None
        x = self.relu(self.bn1(self.conv1(x)))  # (N, initial_dim, H/2, W/2)
        for index, name in enumerate(self._stage_names):
            x = getattr(self, name)(x)  # (N, C_i, H/2^i, W/2^i) after stage i (first stage keeps 1/2)
            if index == fine_stage:
                fine = x
        return getattr(self, self._outconv_name)(x), fine  # (N, C, H/s, W/s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coarse features ``(N, 1, H, W) -> (N, block_dims[-1], H / stride, W / stride)``."""
        return self.forward_features(x)[0]


def _stage_index(fine_stride: int, coarse_stride: int) -> int:
    """0-based stage whose output has ``fine_stride`` (stage ``i`` ends at stride ``2 ** (i + 1)``)."""
    if fine_stride < 2 or fine_stride >= coarse_stride or fine_stride & (fine_stride - 1):
        raise ValueError(
            f"fine_stride must be a power of two in [2, coarse_stride={coarse_stride}), got {fine_stride}"
        )
    return int(math.log2(fine_stride)) - 1


def check_backbone_config(
    backbone: str,
    coarse_stride: int,
    initial_dim: int,
    block_dims: tuple[int, ...],
    d_model: int,
    block_depths: tuple[int, ...] | None = None,
) -> None:
    """Raise ``ValueError`` if the sizes don't fit the named backbone."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    if backbone == "fast":
        check_fast_config(coarse_stride, initial_dim, tuple(block_dims), d_model, block_depths)
    if backbone == "resnet_fpn":
        if block_depths is not None:
            raise ValueError(
                "block_depths applies only to the fast backbone (resnet_fpn has LoFTR's fixed two "
                f"BasicBlocks per stage), got {list(block_depths)}"
            )
        if initial_dim < 1 or any(d < 1 for d in block_dims):
            raise ValueError(f"initial_dim and block_dims must be positive, got {initial_dim}, {block_dims}")
        stages = int(math.log2(coarse_stride))
        if len(block_dims) != stages:
            raise ValueError(
                f"resnet_fpn at coarse_stride {coarse_stride} needs {stages} block_dims "
                f"(one per stage, stride 2**len(block_dims)), got {len(block_dims)}: {list(block_dims)}"
            )
        if block_dims[0] != initial_dim:
            raise ValueError(
                f"resnet_fpn's first stage keeps the stem's channels (no projection shortcut, as in LoFTR): "
                f"block_dims[0]={block_dims[0]} must equal initial_dim={initial_dim}"
            )
        if block_dims[-1] != d_model:
            raise ValueError(
                f"the last block dim is the coarse feature size and must equal d_model: "
                f"block_dims[-1]={block_dims[-1]} != d_model={d_model}"
            )


def build_backbone(
    backbone: str,
    coarse_stride: int,
    initial_dim: int,
    block_dims: tuple[int, ...],
    d_model: int,
    keep_unused_fpn: bool = False,
    block_depths: tuple[int, ...] | None = None,
) -> nn.Module:
    """Build a coarse backbone ``(N, 1, H, W) -> (N, d_model, H/s, W/s)``.

    Args:
        backbone: backbone name, one of :data:`BACKBONES`.
        coarse_stride: output stride ``s``.
        initial_dim: stem channels.
        block_dims: stage channels.
        d_model: coarse feature dimension.
        keep_unused_fpn: see :class:`ResNetFPNCoarse`.
        block_depths: ``fast`` only: stride-1 blocks per stage (``None``: the backbone's default).

    Returns:
        The backbone module.

    The sizes are validated once, by ``StudentConfig`` (:func:`check_backbone_config`).
    """
    if backbone == "fast":
        if keep_unused_fpn:
            raise ValueError("keep_unused_fpn applies only to the resnet_fpn backbone")
        return FastBackbone(initial_dim, tuple(block_dims), block_depths)
    return ResNetFPNCoarse(initial_dim, tuple(block_dims), keep_unused_fpn)
