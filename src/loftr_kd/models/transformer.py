"""LoFTR's coarse transformer: interleaved self / cross layers with linear attention.

Written with ``matmul`` only (no einsum, no einops) so it exports to ONNX / TensorRT. Module names follow
LoFTR's ``LocalFeatureTransformer`` (``layers.i.q_proj`` ...), so LoFTR-layout state dicts load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Linear attention of "Transformers are RNNs" with ``phi(x) = elu(x) + 1`` (as in LoFTR).

    ``out_l = phi(q_l) (sum_s phi(k_s)^T v_s) / (phi(q_l) . sum_s phi(k_s))``, computed per head.

    Args:
        query: ``(B, H, L, D)``.
        key: ``(B, H, S, D)``.
        value: ``(B, H, S, D)``.
        eps: added to the normaliser.

    Returns:
        Attended values ``(B, H, L, D)``.
    """
    q = F.elu(query) + 1  # (B, H, L, D)
    k = F.elu(key) + 1  # (B, H, S, D)
    length = value.shape[2]
    # Both sums over the S source cells are taken as means (the 1/S cancels; eps is scaled with them, so
    # this is LoFTR's function exactly): sums reach 1e5 at 640x480, past float16's 65504, and an fp16
    # TensorRT engine then returned no matches. LoFTR scaled only V, which keeps K^T V but not the
    # normaliser in range.
    kv = torch.matmul(k.transpose(2, 3), value / length)  # (B, H, D, D), mean over S
    k_mean = k.mean(dim=2).unsqueeze(3)  # (B, H, D, 1)
    z = 1.0 / (torch.matmul(q, k_mean) + eps / length)  # (B, H, L, 1)
    return torch.matmul(q, kv) * z  # (B, H, L, D)


class LoFTREncoderLayer(nn.Module):
    """One LoFTR encoder layer: multi-head linear attention, merge, LayerNorm, MLP on ``[x, msg]``.

    Args:
        d_model: feature size ``C``.
        nhead: number of heads; ``C`` must be divisible by it (validated by ``StudentConfig``).
        d_ffn: MLP width is ``2 * d_ffn``. LoFTR hard-codes ``2 * d_model`` (its ``d_ffn`` setting is
            unused); ``d_ffn == d_model`` reproduces it exactly.
    """

    def __init__(self, d_model: int, nhead: int, d_ffn: int | None = None) -> None:
        super().__init__()
        d_ffn = d_model if d_ffn is None else d_ffn
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(d_model * 2, d_ffn * 2, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(d_ffn * 2, d_model, bias=False),
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C) -> (B, H, L, D)``."""
        return x.reshape(x.shape[0], x.shape[1], self.nhead, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Update ``x`` with a message from ``source`` (``source is x`` for self-attention).

        Args:
            x: ``(B, L, C)``.
            source: ``(B, S, C)``.

        Returns:
            Updated features ``(B, L, C)``.
        """
        batch, length, channels = x.shape
        query = self._split_heads(self.q_proj(x))  # (B, H, L, D)
        key = self._split_heads(self.k_proj(source))  # (B, H, S, D)
        value = self._split_heads(self.v_proj(source))  # (B, H, S, D)
        message = linear_attention(query, key, value)  # (B, H, L, D)
        message = message.transpose(1, 2).reshape(batch, length, channels)  # (B, L, C)
        message = self.norm1(self.merge(message))  # (B, L, C)
        message = self.norm2(self.mlp(torch.cat([x, message], dim=2)))  # (B, L, C)
        return x + message


class LocalFeatureTransformer(nn.Module):
    """LoFTR's coarse transformer.

    A ``'self'`` layer updates each image from itself; a ``'cross'`` layer updates image 0 from image 1,
    then image 1 from the *updated* image 0 (LoFTR's order). Every layer has its own weights, shared by
    the two images.

    Args:
        d_model: feature size ``C``.
        nhead: number of heads.
        layer_names: sequence of ``'self'`` / ``'cross'``.
        d_ffn: see :class:`LoFTREncoderLayer`.
    """

    def __init__(
        self, d_model: int, nhead: int, layer_names: tuple[str, ...], d_ffn: int | None = None
    ) -> None:
        super().__init__()
        self.layer_names = tuple(layer_names)
        self.layers = nn.ModuleList([LoFTREncoderLayer(d_model, nhead, d_ffn) for _ in self.layer_names])
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @property
    def leading_self_layers(self) -> int:
        """How many layers run before the first ``'cross'`` one: each image sees only itself there, so
        they belong to the per-image part of the model (:meth:`encode`)."""
        return next((i for i, name in enumerate(self.layer_names) if name == "cross"), len(self.layer_names))

    def encode(self, feat: torch.Tensor) -> torch.Tensor:
        """The leading self layers on one image's features ``(B, L, C) -> (B, L, C)``; ``forward(...,
        start=leading_self_layers)`` runs the rest on a pair."""
        for layer in self.layers[: self.leading_self_layers]:
            feat = layer(feat, feat)
        return feat

    def forward(
        self, feat0: torch.Tensor, feat1: torch.Tensor, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform both feature sets.

        Args:
            feat0: image 0 features ``(B, L0, C)``.
            feat1: image 1 features ``(B, L1, C)``.
            start: first layer to run (the ones before were run already, e.g. by :meth:`encode`).

        Returns:
            ``(feat0, feat1)`` with the same shapes.
        """
        batch = feat0.shape[0]
        for layer, name in zip(self.layers[start:], self.layer_names[start:]):
            if name == "self":
                if feat0.shape == feat1.shape:  # one call on the stacked pair: same result, fewer ops
                    stacked = torch.cat([feat0, feat1], dim=0)  # (2B, L, C)
                    both = layer(stacked, stacked)  # (2B, L, C)
                    feat0, feat1 = both[:batch], both[batch:]
                else:
                    feat0, feat1 = layer(feat0, feat0), layer(feat1, feat1)
            else:
                feat0 = layer(feat0, feat1)
                feat1 = layer(feat1, feat0)
        return feat0, feat1
