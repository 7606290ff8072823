"""A CPU-fast coarse backbone: stride-4 stem and RepVGG blocks re-parameterised to plain 3x3 convs.

Why this shape (measured, see docs/fast_student.md): the published student's ResNet-FPN spends most of
its time at 1/2 resolution, where a 7x7 stem and four 8-channel 3x3 convs run on 320x240 maps, and
8-channel convolutions are onnxruntime's least efficient ones. Here the image reaches 1/4 after two
stride-2 convs (the first 16 channels wide: 8 learned far more slowly), and every later stage is a
stride-2 conv plus one stride-1 block. Deeper coarse stages (three or six 1/16 blocks, two at 1/8) were
cheap but matched *worse* on unseen scenes after the same training.

Every conv is a RepVGG block (Ding et al., CVPR 2021): trained as ``3x3 conv+BN`` + ``1x1 conv+BN``
(+ ``BN`` identity when shapes allow), summed, then ReLU; for inference the three branches are exactly
one ``3x3 conv`` with bias (:meth:`RepConvBlock.fuse`). :meth:`FastBackbone.reparameterize` swaps every
block for its fused form in place, and :func:`reparameterize_for_inference` does it on a copy of a whole
model -- call it before ONNX export (the unfused graph is correct, only slower). Checkpoints are always
saved and loaded in the multi-branch (training) layout.

Interface as every backbone: ``(N, 1, H, W) -> (N, d_model, H/s, W/s)``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from loftr_kd.models.layers import init_conv_bn

__all__ = [
    "FastBackbone",
    "RepConvBlock",
    "check_fast_config",
    "reparameterize_for_inference",
    "stage_depths",
]


def stage_depths(num_stages: int) -> tuple[int, ...]:
    """Stride-1 blocks after each stage's stride-2 conv: one per stage (the ``fast`` preset's choice)."""
    return (1,) * num_stages


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x, weight))`` as one conv (BN in inference mode)."""
    std = (bn.running_var + bn.eps).sqrt()  # (C_out,)
    scale = bn.weight / std  # (C_out,)
    return weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


class RepConvBlock(nn.Module):
    """RepVGG block: ``relu(bn(conv3x3(x)) + bn(conv1x1(x)) [+ bn(x)])``, fusable to one 3x3 conv.

    The identity branch exists only when ``in_channels == out_channels`` and ``stride == 1``. The 1x1
    branch uses the same stride without padding, so it samples the 3x3 kernel's centre tap exactly.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1 or 2.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv3 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, stride, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn_identity = (
            nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)``."""
        y = self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))
        if self.bn_identity is not None:
            y = y + self.bn_identity(x)
        return self.relu(y)

    @torch.no_grad()
    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 kernel ``(C_out, C_in, 3, 3)`` and bias ``(C_out,)`` equal to the block in eval mode."""
        kernel, bias = _fold_bn(self.conv3.weight, self.bn3)
        kernel1, bias1 = _fold_bn(self.conv1.weight, self.bn1)
        kernel = kernel.clone()
        kernel[:, :, 1:2, 1:2] += kernel1  # 1x1 branch = centre tap of a 3x3 kernel
        bias = bias + bias1
        if self.bn_identity is not None:
            eye = torch.zeros_like(self.conv1.weight)  # (C, C, 1, 1)
            eye[torch.arange(self.in_channels), torch.arange(self.in_channels)] = 1.0
            kernel_id, bias_id = _fold_bn(eye, self.bn_identity)
            kernel[:, :, 1:2, 1:2] += kernel_id
            bias = bias + bias_id
        return kernel, bias

    def fuse(self) -> nn.Sequential:
        """The inference form: ``Sequential(Conv2d(3x3, bias=True), ReLU)`` with the same outputs in eval mode."""
        kernel, bias = self.fused_kernel()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, padding=1, bias=True)
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        return nn.Sequential(conv.to(kernel.device), nn.ReLU(inplace=True))


class FastBackbone(nn.Module):
    """Stride-4 stem + RepVGG stages down to the coarse stride.

    Layout at stride 16 (``block_dims = (16, 32, 32)``, ``initial_dim = 16``, ``depths = (1, 1, 1)``)::

        1/2   RepConv 1 -> 16, stride 2
        1/4   RepConv 16 -> 16, stride 2;  1 x RepConv 16 -> 16
        1/8   RepConv 16 -> 32, stride 2;  1 x RepConv 32 -> 32
        1/16  RepConv 32 -> 32, stride 2;  1 x RepConv 32 -> 32
              1x1 conv 32 -> 32 (no bias, no activation; as LoFTR's ``layerN_outconv``)

    Args:
        initial_dim: channels of the first (1/2-resolution) conv.
        block_dims: channels of the stages at 1/4, 1/8, ... 1/s; ``len == log2(s) - 1``; the last is
            ``d_model``.
        depths: stride-1 blocks after each stage's stride-2 conv; default :func:`stage_depths`.
    """

    def __init__(
        self, initial_dim: int, block_dims: tuple[int, ...], depths: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        depths = (
            stage_depths(len(block_dims)) if depths is None else tuple(depths)
        )  # checked by check_fast_config
        self.stride = 2 ** (len(block_dims) + 1)
        layers: list[nn.Module] = [RepConvBlock(1, initial_dim, stride=2)]  # (N, C0, H/2, W/2)
        # stride -> (index of the last layer at that resolution, channels): the refinement's fine maps
        self._resolution_ends = {2: (0, initial_dim)}
        in_channels = initial_dim
        for stage, (dim, depth) in enumerate(zip(block_dims, depths)):
            layers.append(RepConvBlock(in_channels, dim, stride=2))
            layers += [RepConvBlock(dim, dim) for _ in range(depth)]
            self._resolution_ends[2 ** (stage + 2)] = (len(layers) - 1, dim)
            in_channels = dim
        self.layers = nn.Sequential(*layers)
        self.outconv = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        init_conv_bn(self)

    @property
    def is_reparameterized(self) -> bool:
        """True once :meth:`reparameterize` has run (no multi-branch block left)."""
        return not any(isinstance(m, RepConvBlock) for m in self.layers)

    @torch.no_grad()
    def reparameterize(self) -> FastBackbone:
        """Replace every RepVGG block by its single 3x3 conv + ReLU, in place; idempotent.

        Irreversible: afterwards the module is for inference only (no BN, so training it further means a
        different model) and its state dict has the fused layout, which :func:`load_student` does not
        read -- save checkpoints before fusing. Outputs equal the eval-mode outputs before fusing.

        Returns:
            ``self``, in eval mode.
        """
        self.eval()
        for index, layer in enumerate(self.layers):
            if isinstance(layer, RepConvBlock):
                self.layers[index] = layer.fuse()
        return self

    def _fine_end(self, fine_stride: int) -> tuple[int, int]:
        if fine_stride >= self.stride or fine_stride not in self._resolution_ends:
            raise ValueError(
                f"fine_stride must be one of {sorted(s for s in self._resolution_ends if s < self.stride)}, "
                f"got {fine_stride}"
            )
        return self._resolution_ends[fine_stride]

    def fine_channels(self, fine_stride: int) -> int:
        """Channels of the map at ``fine_stride``."""
        return self._fine_end(fine_stride)[1]

    def forward_features(
        self, x: torch.Tensor, fine_stride: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Coarse features and, when asked, the last map at ``fine_stride`` (for refinement).

        Args:
            x: grayscale images ``(N, 1, H, W)``.
            fine_stride: stride of the extra map (2, 4, ... below the coarse stride).

        Returns:
            ``(N, block_dims[-1], H/s, W/s)`` coarse map and ``(N, C_f, H/f, W/f)`` fine map (or None).
        """
        end = None if fine_stride is None else self._fine_end(fine_stride)[0]
        fine = None
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index == end:
                fine = x
        return self.outconv(x), fine  # (N, C, H/s, W/s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coarse features ``(N, 1, H, W) -> (N, block_dims[-1], H / stride, W / stride)``."""
        return self.forward_features(x)[0]


def check_fast_config(
    coarse_stride: int,
    initial_dim: int,
    block_dims: tuple[int, ...],
    d_model: int,
    block_depths: tuple[int, ...] | None = None,
) -> None:
    """Raise ``ValueError`` if the sizes don't fit :class:`FastBackbone`."""
    if initial_dim < 1 or any(d < 1 for d in block_dims):
        raise ValueError(
            f"initial_dim and block_dims must be positive, got {initial_dim}, {list(block_dims)}"
        )
    stages = int(math.log2(coarse_stride)) - 1
    if len(block_dims) != stages:
        raise ValueError(
            f"fast backbone at coarse_stride {coarse_stride} needs {stages} block_dims (stages at 1/4 ... "
            f"1/{coarse_stride}, after a 1/2 stem of initial_dim channels), got {len(block_dims)}: "
            f"{list(block_dims)}"
        )
    if block_dims[-1] != d_model:
        raise ValueError(
            f"the last block dim is the coarse feature size and must equal d_model: "
            f"block_dims[-1]={block_dims[-1]} != d_model={d_model}"
        )
    if block_depths is not None:
        _check_depths(block_dims, block_depths)


def _check_depths(block_dims: tuple[int, ...], depths: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``depths`` holds one whole count >= 0 per stage of ``block_dims``."""
    if len(depths) != len(block_dims) or any(int(d) != d or d < 0 for d in depths):
        raise ValueError(
            f"block_depths must give a count >= 0 of stride-1 blocks per stage of block_dims "
            f"{list(block_dims)}, got {list(depths)}"
        )


def reparameterize_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every re-parameterisable submodule (anything with ``reparameterize()``) for inference.

    Use it before ONNX export or benchmarking; a model without such modules comes back unchanged
    (still in eval mode). Outputs equal the eval-mode outputs of the unfused model (float rounding).

    Args:
        model: e.g. a :class:`~loftr_kd.models.student.CoarseLoFTRStudent`.
        inplace: fuse ``model`` itself; by default a deep copy is fused and ``model`` is untouched
            (so a training run can export its student and keep training).

    Returns:
        The fused model in eval mode.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for module in list(model.modules()):  # a snapshot: reparameterize() replaces submodules
        reparameterize = getattr(module, "reparameterize", None)
        if callable(reparameterize):
            reparameterize()
    return model.eval()
