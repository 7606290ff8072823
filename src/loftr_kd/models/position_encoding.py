"""LoFTR's 2-D sine position encoding, precomputed for one coarse grid."""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_position_encoding(d_model: int, height: int, width: int, temp_bug_fix: bool = True) -> torch.Tensor:
    """LoFTR's sine position encoding for an ``height x width`` feature map.

    Channels cycle through ``sin(x f), cos(x f), sin(y f), cos(y f)`` for ``d_model / 4`` frequencies,
    with 1-based positions (``x = 1 .. width``), exactly as zju3dv/LoFTR ``PositionEncodingSine``.

    Args:
        d_model: number of channels, a multiple of 4.
        height: feature-map height ``h``.
        width: feature-map width ``w``.
        temp_bug_fix: ``False`` reproduces the original frequencies
            (``-log(10000) / d_model // 2`` parsed as ``(-log(10000) / d_model) // 2``, LoFTR issue #41),
            which LoFTR's released outdoor weights and the published Coarse_LoFTR_TRT student use.

    Returns:
        Encoding of shape ``(1, d_model, h, w)``, float32.
    """
    if d_model % 4 != 0:
        raise ValueError(f"sine position encoding needs d_model divisible by 4, got {d_model}")
    y_position = torch.ones(height, width).cumsum(0).unsqueeze(0)  # (1, h, w), 1..h
    x_position = torch.ones(height, width).cumsum(1).unsqueeze(0)  # (1, h, w), 1..w
    # the bug: `/ d_model // 2` parses as `(... / d_model) // 2`, which floors the step to -1
    step = -math.log(10000.0) / (d_model // 2) if temp_bug_fix else -math.log(10000.0) / d_model // 2
    div_term = torch.exp(torch.arange(0, d_model // 2, 2).float() * step)[:, None, None]  # (C/4, 1, 1)
    pe = torch.zeros(d_model, height, width)
    pe[0::4] = torch.sin(x_position * div_term)
    pe[1::4] = torch.cos(x_position * div_term)
    pe[2::4] = torch.sin(y_position * div_term)
    pe[3::4] = torch.cos(y_position * div_term)
    return pe.unsqueeze(0)  # (1, C, h, w)


class PositionEncodingSine(nn.Module):
    """Adds LoFTR's sine position encoding, precomputed once for a maximum coarse grid and sliced to the
    input's grid, as LoFTR's ``PositionEncodingSine(max_shape=...)`` does.

    The encoding at ``(r, c)`` does not depend on the grid size, so the slice equals the encoding computed
    for the input's grid exactly (bit for bit): one model serves every size up to the maximum. The table
    is a non-persistent buffer: it is not stored in checkpoints, so the same weights load into a model
    built for any maximum. An exported graph with dynamic height and width slices it at run time.

    Args:
        d_model: number of channels, a multiple of 4.
        max_height: largest coarse grid height ``h``.
        max_width: largest coarse grid width ``w``.
        temp_bug_fix: see :func:`sine_position_encoding`.
    """

    def __init__(self, d_model: int, max_height: int, max_width: int, temp_bug_fix: bool = True) -> None:
        super().__init__()
        self.d_model = d_model
        self.temp_bug_fix = temp_bug_fix
        self.register_buffer(
            "pe", sine_position_encoding(d_model, max_height, max_width, temp_bug_fix), persistent=False
        )

    @property
    def max_grid(self) -> tuple[int, int]:
        """``(h, w)`` of the largest grid the table covers."""
        return int(self.pe.shape[2]), int(self.pe.shape[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the encoding.

        Args:
            x: features ``(B, C, h, w)`` with ``h, w`` at most :attr:`max_grid`.

        Returns:
            ``x + pe[:, :, :h, :w]`` with shape ``(B, C, h, w)``.

        Raises:
            ValueError: the grid is larger than the precomputed table.
        """
        h, w = x.shape[2], x.shape[3]
        if h > self.pe.shape[2] or w > self.pe.shape[3]:
            raise ValueError(
                f"coarse grid {int(h)}x{int(w)} exceeds the position encoding's maximum grid "
                f"{self.max_grid[0]}x{self.max_grid[1]}; build the model with a larger max_height/max_width"
            )
        return x + self.pe[:, :, :h, :w].to(dtype=x.dtype)
