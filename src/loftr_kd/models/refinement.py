"""Fixed-shape sub-pixel refinement of coarse matches from finer backbone features.

For every image0 cell the coarse matching proposes one image1 cell (its row's best candidate). The
refinement looks at fine features (stride ``fine_stride``, e.g. the backbone's 1/4 map) in a small
window of image1 around that cell's centre (:class:`loftr_kd.geometry.RefineWindow`) and moves the
match to the expected position under a softmax over the window (by default over the 3x3 positions
around its peak): the image0 point stays at its cell centre (as LoFTR's fine stage), the image1 point
becomes sub-pixel. The spread of the window's softmax is the match's uncertainty (pixels).

Two designs share the window, the expectation and the loss (docs/refinement.md compares them):

- ``corr`` (LoFTR's fine matching without its transformer): correlation of image0's fine descriptor at
  the cell centre with every fine descriptor of image1's window, softmax, expectation.
- ``mlp`` (XFeat's offset classification): an MLP scores every window position from the two fine
  descriptors at the cell centres alone; no image1 window is gathered.

``refine_query="corner"`` (the weights are the same either way) moves image0's point off the cell centre to
the cell's most corner-like fine pixel (:func:`corner_queries`, from the image) and centres image1's window
where a translation puts that pixel: a point at a corner is located far more exactly by correlation than a
centre in a flat patch (docs/refinement.md, "Corner queries"). Training supervises the queries the model is
built with: with corner queries, each query's own truth (:func:`loftr_kd.supervision.point_ground_truth`).
``refine_points=k`` (corner queries, an inference setting too) gives each matched cell ``k`` points: its ``k``
most corner-like fine pixels, the first the query above, the others correlated with the first one's window (no
second gather) and located from the 3x3 scores around their peak; a homography or pose fit gets ``k`` times
the matches for little work (docs/refinement.md, "More points per cell"). Training supervises the first.

Everything is fixed-shape: one entry per image0 cell, computed for all cells and masked afterwards, with
ops TensorRT parses (Conv, AveragePool, Pad, Slice, Gather, MatMul, Softmax, ...); no ``nonzero``, no
data-dependent shapes, no training branches.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from loftr_kd.geometry import CoarseGrid, RefineWindow

__all__ = [
    "FINE_HEADS",
    "REFINE_KINDS",
    "REFINE_QUERIES",
    "FineHead",
    "RefineOutput",
    "Refinement",
    "build_refinement",
    "corner_queries",
]

REFINE_KINDS = ("none", "corr", "mlp")
# Where image0's point of a match sits: "centre" (its cell centre, as LoFTR) or "corner" (the most corner-like
# fine pixel of the cell's inner block, from the image: see corner_queries).
REFINE_QUERIES = ("centre", "corner")


class RefineOutput(NamedTuple):
    """Refined image1 position of each image0 cell's candidate match (unmasked).

    Attributes:
        points1: ``(B, L0, 2)`` xy pixels in image1.
        uncertainty: ``(B, L0)`` standard deviation of the position (pixels, L2 over both axes).
        logits: ``(B, L0, K)`` window scores (K = window positions), for losses and diagnostics.
        points0: ``(B, L0, 2)`` xy pixels of each query in image0 where queries are not the cell centres
            (``refine_query="corner"``), else ``None``.
        centres1: ``(B, L0, 2)`` xy pixels in image1 of each window's centre (``logits``' zero offset): the
            candidate cell's centre, or for corner queries the same pixel of its block as the query's. The
            loss scores the window around it.
        more_points0: ``(B, L0, k-1, 2)`` xy pixels in image0 of each cell's further points
            (``refine_points=k > 1``), else ``None``.
        more_points1: ``(B, L0, k-1, 2)`` their refined positions in image1 (found in the first point's window).
        more_uncertainty: ``(B, L0, k-1)`` their uncertainty (pixels): the first point's, the spread of the
            window they share.
    """

    points1: torch.Tensor
    uncertainty: torch.Tensor
    logits: torch.Tensor
    points0: torch.Tensor | None = None
    centres1: torch.Tensor | None = None
    more_points0: torch.Tensor | None = None
    more_points1: torch.Tensor | None = None
    more_uncertainty: torch.Tensor | None = None


FINE_HEADS = ("conv", "separable")


class FineHead(nn.Module):
    """Fine descriptors from a backbone feature map: a 3x3 stage (local context) + BN + ReLU, 1x1 projection.

    ``conv``: a full 3x3 conv ``C_in -> dim``. ``separable``: a depthwise 3x3 on ``C_in`` then the 1x1,
    about 6x cheaper at 16 channels. Either runs at the fine resolution (1/4) on both images, where every
    multiply-add costs as much as in a backbone stage (docs/refinement.md has the measured costs).
    """

    def __init__(self, in_channels: int, dim: int, kind: str = "conv") -> None:
        super().__init__()
        if kind not in FINE_HEADS:
            raise ValueError(f"fine head must be one of {FINE_HEADS}, got {kind!r}")
        if kind == "conv":
            self.conv = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
            width = dim
        else:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
            width = in_channels
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.project = nn.Conv2d(width, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, Hf, Wf) -> (N, dim, Hf, Wf)``."""
        return self.project(self.relu(self.bn(self.conv(x))))


def corner_queries(image: torch.Tensor, window: RefineWindow, count: int = 1) -> torch.Tensor:
    """The most corner-like fine pixel of each cell's inner block: where image0's point of a match goes.

    Shi-Tomasi on the image at the fine resolution (mean of ``f x f`` pixels): Sobel gradients, their
    structure tensor over 3x3 (borders reflected, as OpenCV's ``cornerMinEigenVal(block 3, ksize 3)``),
    its smaller eigenvalue, and per cell the argmax over the ``(r-2) x (r-2)`` fine pixels inside the cell's
    ``r x r`` block (one pixel kept from its edge, so the window around the match keeps its reach). A point
    at a corner is located by correlation far better than a cell centre in a flat patch (docs/refinement.md).
    Fixed-shape: AveragePool, Pad, Conv, Mul, Sqrt, Reshape, ArgMax and integer arithmetic.

    Args:
        image: ``(B, 1, H, W)`` in [0, 1], ``H`` and ``W`` multiples of the coarse stride.
        window: the refinement window (its coarse/fine strides).
        count: how many pixels per cell (``refine_points``); more than one: the ``count`` most corner-like,
            best first (TopK).

    Returns:
        ``(B, L)`` int64 position of each cell's query inside its block, ``dy * r + dx`` (row-major cells);
        for ``count > 1``, ``(B, L, count)``.
    """
    r, f = window.ratio, window.fine_stride
    small = F.avg_pool2d(image, f) if f > 1 else image  # (B, 1, H/f, W/f)
    sobel = image.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
    grad = F.conv2d(F.pad(small, (1, 1, 1, 1), mode="reflect"), kernels)  # (B, 2, H/f, W/f)
    gx, gy = grad[:, 0:1], grad[:, 1:2]
    tensor = torch.cat([gx * gx, gy * gy, gx * gy], dim=1)
    tensor = F.avg_pool2d(F.pad(tensor, (1, 1, 1, 1), mode="reflect"), 3, stride=1)  # (B, 3, H/f, W/f)
    a, c, b = tensor[:, 0], tensor[:, 1], tensor[:, 2]
    # the structure tensor's smaller eigenvalue, (B, H/f, W/f)
    response = 0.5 * (a + c) - torch.sqrt(0.25 * (a - c) * (a - c) + b * b)
    batch, hf, wf = response.shape
    h, w, n = hf // r, wf // r, r - 2
    blocks = response.reshape(batch, h, r, w, r)[:, :, 1 : r - 1, :, 1 : r - 1]  # (B, h, n, w, n)
    blocks = blocks.permute(0, 1, 3, 2, 4).reshape(batch, h * w, n * n)
    best = blocks.argmax(-1) if count == 1 else blocks.topk(count, -1).indices  # (B, L) or (B, L, count)
    dy = torch.div(best, n, rounding_mode="trunc")
    return (dy + 1) * r + (best - dy * n + 1)


def _centre_descriptors(fine: torch.Tensor, ratio: int) -> torch.Tensor:
    """``(B, C, h*r, w*r) -> (B, h*w, C)``: fine descriptor at each cell centre (mean of the middle 2x2)."""
    pooled = F.avg_pool2d(fine, kernel_size=2, stride=1)  # (B, C, Hf-1, Wf-1), entry k = mean of k, k+1
    start = ratio // 2 - 1
    centres = pooled[:, :, start::ratio, start::ratio]  # (B, C, h, w)
    return centres.flatten(2).transpose(1, 2)  # (B, L, C)


def _gather_rows(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``values (B, L1, ...)`` at ``ids (B, L0)`` (valid indices) -> ``(B, L0, ...)``, one flat Gather."""
    b, l1 = values.shape[:2]
    offsets = (torch.arange(b, device=ids.device) * l1).unsqueeze(1)  # (B, 1)
    flat = values.reshape(b * l1, *values.shape[2:])
    return flat.index_select(0, (ids + offsets).reshape(-1)).reshape(b, ids.shape[1], *values.shape[2:])


def _gather_squares(
    fine: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, pad: int
) -> torch.Tensor:
    """``size x size`` windows of a map: ``(B, C, H, W)``, top-left pixels ``(B, L)`` in the map zero-padded by
    ``pad`` on every side -> ``(B, L, size*size, C)``, row-major.

    One Gather on the flattened, padded map with an index built from integer arithmetic: only the
    ``L * size**2`` needed pixels are read, and no per-cell window tensor of the whole map is built (its
    slices, concatenation and transpose cost more than the correlation itself, measured).
    """
    b, c, hf, wf = fine.shape
    hp, wp = hf + 2 * pad, wf + 2 * pad
    padded = F.pad(fine, (pad, pad, pad, pad))  # zero features outside the image: never a good match
    corner = top * wp + left  # (B, L) flat index of the window's top-left pixel (padded)
    taps = (torch.arange(size, device=fine.device) * wp).unsqueeze(1) + torch.arange(size, device=fine.device)
    index = corner.unsqueeze(-1) + taps.reshape(1, 1, -1)  # (B, L, K)
    index = index + (torch.arange(b, device=fine.device) * (hp * wp)).reshape(b, 1, 1)
    # channels last: each gathered index copies one contiguous C-vector (gathering along the pixel axis
    # of a channels-first map was 6x slower in onnxruntime, measured)
    flat = padded.permute(0, 2, 3, 1).reshape(b * hp * wp, c)  # (B*Hp*Wp, C)
    return flat.index_select(0, index.reshape(-1)).reshape(b, top.shape[1], size * size, c)


class Refinement(nn.Module):
    """Sub-pixel refinement head (see the module docstring).

    Args:
        kind: ``"corr"`` or ``"mlp"``.
        in_channels: channels of the backbone's fine map.
        window: window geometry (coarse/fine strides and margin).
        dim: fine descriptor size.
        hidden: ``mlp`` hidden width.
        local_size: neighbourhood of the heatmap peak whose expectation is the position (0: whole window).
        head: fine descriptor head, ``conv`` or ``separable`` (:class:`FineHead`).
        query: image0's point of a match, ``centre`` or ``corner`` (:data:`REFINE_QUERIES`).
        points: points per matched cell (corner queries; the module docstring).
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        window: RefineWindow,
        dim: int = 16,
        hidden: int = 64,
        local_size: int = 3,
        head: str = "conv",
        query: str = "centre",
        points: int = 1,
    ) -> None:
        super().__init__()
        if query not in REFINE_QUERIES:
            raise ValueError(f"refine query must be one of {REFINE_QUERIES}, got {query!r}")
        most = max(window.ratio - 2, 1) ** 2
        if points != 1 and (query != "corner" or not 1 <= points <= most):
            raise ValueError(
                f"refine_points={points} needs refine_query='corner' and at most {most} points per cell (the "
                f"fine pixels inside a cell's block), got refine_query={query!r}"
            )
        self.points = points
        if query == "corner" and (kind != "corr" or window.ratio < 3):
            raise ValueError(
                f"refine_query='corner' needs refine='corr' and at least 3 fine pixels per cell, got "
                f"{kind!r} with {window.ratio}"
            )
        self.query = query
        if local_size < 0 or (local_size and local_size % 2 == 0) or local_size > window.size:
            raise ValueError(
                f"local soft-argmax size must be 0 (whole window) or odd <= {window.size}, got {local_size}"
            )
        self.local_size = local_size
        if kind not in REFINE_KINDS[1:]:
            raise ValueError(f"refine kind must be one of {REFINE_KINDS[1:]}, got {kind!r}")
        self.kind = kind
        self.window = window
        self.fine_head = FineHead(in_channels, dim, head)
        self.register_buffer("offsets", window.offsets(), persistent=False)  # (K, 2)
        self.register_buffer("offsets_sq", window.offsets().pow(2).sum(-1), persistent=False)  # (K,)
        # corner queries: an odd window centred on the query's shifted position (RefineWindow.query_half: 11 x 11
        # positions for paper_refine against the centre window's 12 x 12; the 13 x 13 variant, measured first,
        # scored the same on validation: docs/refinement.md)
        self.register_buffer("query_offsets", window.query_offsets(), persistent=False)  # (Kq, 2)
        self.register_buffer("query_offsets_sq", window.query_offsets().pow(2).sum(-1), persistent=False)
        # (dy, dx) of the 3x3 neighbourhood around a peak, for the further points of refine_points
        taps = torch.tensor([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        self.register_buffer("peak_taps", taps, persistent=False)  # (9, 2)
        if kind == "corr":
            # log of the softmax scale on cosine similarities; starts at 10 (LoFTR's coarse 1/0.1)
            self.log_scale = nn.Parameter(torch.tensor(2.3026))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(2 * dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, window.num_positions)
            )

    def _gather_windows(self, fine1: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
        """``(B, C, h*r, w*r)``, ``(B, L0)`` -> ``(B, L0, K, C)``: the window around each candidate cell."""
        r = self.window.ratio
        _, _, hf, wf = fine1.shape
        row, col = CoarseGrid(self.window.coarse_stride, hf // r, wf // r).rows_cols(candidate_ids)
        # the map is padded by the margin, so the window's top-left pixel (padded) is the cell's first one
        return _gather_squares(fine1, r * row, r * col, self.window.size, self.window.margin)

    def forward(
        self,
        fine0: torch.Tensor,
        fine1: torch.Tensor,
        candidate_ids: torch.Tensor,
        grid1: CoarseGrid,
        queries0: torch.Tensor | None = None,
    ) -> RefineOutput:
        """Refine each image0 cell's candidate match.

        Args:
            fine0: image0 backbone fine map ``(B, C_in, h0*r, w0*r)``.
            fine1: image1 backbone fine map ``(B, C_in, h1*r, w1*r)``.
            candidate_ids: ``(B, L0)`` image1 cell of each image0 cell's candidate (valid indices).
            grid1: image1's coarse grid.
            queries0: ``(B, L0)`` image0 query of each cell (:func:`corner_queries`), or ``None``: the cell
                centres (what training supervises).

        Returns:
            :class:`RefineOutput` for every image0 cell.
        """
        return self.refine_described(
            self.describe(fine0), self.describe(fine1), candidate_ids, grid1, queries0
        )

    def queries(self, image: torch.Tensor) -> torch.Tensor | None:
        """Each cell's query of ``image`` for ``refine_query="corner"`` (:func:`corner_queries`), else ``None``."""
        return corner_queries(image, self.window, self.points) if self.query == "corner" else None

    def describe(self, fine: torch.Tensor) -> torch.Tensor:
        """Unit fine descriptors of one image ``(B, C_in, Hf, Wf) -> (B, dim, Hf, Wf)``: the per-image part
        of the refinement (a student's ``encode`` runs it once per image)."""
        return F.normalize(self.fine_head(fine), dim=1)

    def refine_described(
        self,
        desc0: torch.Tensor,
        desc1: torch.Tensor,
        candidate_ids: torch.Tensor,
        grid1: CoarseGrid,
        queries0: torch.Tensor | None = None,
    ) -> RefineOutput:
        """:meth:`forward` on descriptors from :meth:`describe` (``(B, dim, h*r, w*r)`` per image)."""
        if queries0 is not None:
            return self._refine_queries(desc0, desc1, candidate_ids, grid1, queries0)
        ratio = self.window.ratio
        query = _centre_descriptors(desc0, ratio)  # (B, L0, C)
        if self.kind == "corr":
            windows = self._gather_windows(desc1, candidate_ids)  # (B, L0, K, C)
            correlation = torch.matmul(windows, query.unsqueeze(-1)).squeeze(-1)  # (B, L0, K)
            logits = correlation * self.log_scale.exp()
        else:
            target = _gather_rows(_centre_descriptors(desc1, ratio), candidate_ids)  # (B, L0, C)
            logits = self.mlp(torch.cat([query, target], dim=-1))  # (B, L0, K)
        # (B, L0, 2) offset from the candidate cell centre
        mean, uncertainty = self._position(logits, self.offsets, self.offsets_sq, self.window.size)
        centres1 = grid1.ids_to_pixels(candidate_ids).to(mean.dtype)  # (B, L0, 2)
        return RefineOutput(centres1 + mean, uncertainty, logits, centres1=centres1)

    def _position(
        self, logits: torch.Tensor, offsets: torch.Tensor, offsets_sq: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Window scores ``(B, L0, K)`` of a ``size x size`` window -> the offset of the position from the
        window's centre ``(B, L0, 2)`` (the expectation, around the peak where ``local_size``) and the spread
        of the whole window's softmax ``(B, L0)`` (pixels)."""
        prob = F.softmax(logits.float(), dim=-1)  # (B, L0, K)
        mean = torch.matmul(prob, offsets)  # (B, L0, 2)
        variance = torch.matmul(prob, offsets_sq.unsqueeze(-1)).squeeze(-1) - mean.pow(2).sum(-1)
        uncertainty = variance.clamp(min=1e-10).sqrt()  # (B, L0) spread of the whole window
        if self.local_size:
            mean = self._local_expectation(prob, size, offsets)
        return mean, uncertainty

    def _refine_queries(
        self,
        desc0: torch.Tensor,
        desc1: torch.Tensor,
        candidate_ids: torch.Tensor,
        grid1: CoarseGrid,
        queries0: torch.Tensor,
    ) -> RefineOutput:
        """Corner queries: image0's point is the query pixel ``(dy, dx)`` of its cell's block; image1's window
        (``RefineWindow.query_size`` fine pixels a side) is centred on the same pixel of the candidate cell's
        block, where a translation puts it. One gather for the queries, one for the windows. ``queries0`` of
        shape ``(B, L0, k)`` (``refine_points``): the first is the query, the others are correlated with its
        window and placed by the 3x3 expectation around their peak as the first is (``more_*``)."""
        r, f, half = self.window.ratio, self.window.fine_stride, self.window.query_half
        b, c, hf0, wf0 = desc0.shape
        _, _, hf1, wf1 = desc1.shape
        more = queries0.dim() == 3
        cells0 = torch.arange(queries0.shape[1], device=queries0.device).unsqueeze(0)  # (1, L0)
        row0, col0 = CoarseGrid(self.window.coarse_stride, hf0 // r, wf0 // r).rows_cols(cells0)
        if more:
            row0, col0 = row0.unsqueeze(-1), col0.unsqueeze(-1)
        dy = torch.div(queries0, r, rounding_mode="trunc")
        dx = queries0 - dy * r
        qy, qx = r * row0 + dy, r * col0 + dx  # (B, L0[, k]) query pixel in image0's fine map
        # channels first (GatherElements of L0 pixels): a channels-last copy of the whole map costs more
        if more:  # the first point's window serves every point of its cell
            index0 = (qy * wf0 + qx).reshape(b, 1, -1)  # (B, 1, L0 * k), cell-major
            query = desc0.reshape(b, c, hf0 * wf0).gather(2, index0.expand(b, c, index0.shape[2]))
            query = query.reshape(b, c, -1, queries0.shape[2]).permute(0, 2, 1, 3)  # (B, L0, C, k)
            dy, dx = dy[..., 0], dx[..., 0]
        else:
            index0 = (qy * wf0 + qx).unsqueeze(1).expand(b, c, qy.shape[1])  # (B, C, L0)
            query = desc0.reshape(b, c, hf0 * wf0).gather(2, index0).transpose(1, 2)  # (B, L0, C)
        row1, col1 = CoarseGrid(self.window.coarse_stride, hf1 // r, wf1 // r).rows_cols(candidate_ids)
        cy, cx = r * row1 + dy, r * col1 + dx  # (B, L0) window centre in image1's fine map
        # padded by half, the window's top-left pixel (centre minus half) sits at (cy, cx)
        windows = _gather_squares(desc1, cy, cx, self.window.query_size, half)  # (B, L0, Kq, C)
        size, centre = self.window.query_size, (f - 1) / 2.0
        # the first point (the only one without refine_points) is refined over its whole window: (B, L0, Kq)
        first = query[..., 0] if more else query
        logits = torch.matmul(windows, first.unsqueeze(-1)).squeeze(-1) * self.log_scale.exp()
        mean, uncertainty = self._position(logits, self.query_offsets, self.query_offsets_sq, size)
        points0 = torch.stack([qx, qy], -1).to(mean.dtype) * f + centre  # (B, L0[, k], 2)
        centres1 = torch.stack([cx, cy], -1).to(mean.dtype) * f + centre  # (B, L0, 2)
        if not more:
            return RefineOutput(centres1 + mean, uncertainty, logits, points0, centres1)
        # the further points: the 3x3 expectation around their peak needs only those 9 scores (the window's
        # softmax normalisation cancels), a fraction of the first point's work; their spread is the match's
        more_scores = torch.matmul(windows, query[..., 1:])  # (B, L0, Kq, k-1) cosine scores
        more_mean = self._peak_expectation(more_scores, self.log_scale.exp(), size, self.query_offsets)
        return RefineOutput(
            centres1 + mean,
            uncertainty,
            logits,
            points0[:, :, 0],
            centres1,
            points0[:, :, 1:],
            centres1.unsqueeze(2) + more_mean,
            uncertainty.unsqueeze(-1).expand_as(more_mean[..., 0]),
        )

    def _peak_expectation(
        self, scores: torch.Tensor, scale: torch.Tensor, size: int, offsets: torch.Tensor
    ) -> torch.Tensor:
        """Window scores ``(..., K, n)`` (``n`` points, a ``size x size`` window each) -> the expected offset
        over the 3x3 positions around each point's maximum, ``(..., n, 2)``: the softmax of those 9 scores
        (times ``scale``) alone, which equals :meth:`_local_expectation` of the whole window's softmax without
        computing it. One ArgMax, one GatherElements, a Softmax over 9."""
        peak = scores.argmax(-2)  # (..., n)
        row = torch.div(peak, size, rounding_mode="trunc")
        col = peak - row * size
        y = row.unsqueeze(-2) + self.peak_taps[:, :1]  # (..., 9, n): (..., 1, n) + (9, 1)
        x = col.unsqueeze(-2) + self.peak_taps[:, 1:]
        inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
        index = y.clamp(0, size - 1) * size + x.clamp(0, size - 1)  # (..., 9, n)
        near = scores.gather(-2, index).float() * scale
        weight = F.softmax(torch.where(inside, near, torch.full_like(near, -1e4)), dim=-2)  # (..., 9, n)
        return (weight.unsqueeze(-1) * offsets[index]).sum(-3)

    def _local_expectation(self, prob: torch.Tensor, size: int, offsets: torch.Tensor) -> torch.Tensor:
        """Expected offset over the ``local_size``-square neighbourhood of the most likely position.

        The whole-window expectation is pulled towards the window centre as long as the heatmap is broad;
        around its peak it is not (measured in docs/refinement.md). Fixed-shape: ArgMax, integer arithmetic
        and GatherElements; neighbours outside the window weigh 0.
        """
        half = self.local_size // 2
        peak = prob.argmax(-1)  # (B, L0)
        row, col = CoarseGrid(self.window.fine_stride, size, size).rows_cols(peak)  # window as a grid
        weights, indices = [], []
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                y, x = row + dy, col + dx
                inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
                index = y.clamp(0, size - 1) * size + x.clamp(0, size - 1)
                weights.append(prob.gather(-1, index.unsqueeze(-1)).squeeze(-1) * inside.to(prob.dtype))
                indices.append(index)
        weight = torch.stack(weights, -1)  # (B, L0, n)
        index = torch.stack(indices, -1)  # (B, L0, n)
        chosen = offsets[index]  # (B, L0, n, 2)
        return (weight.unsqueeze(-1) * chosen).sum(-2) / weight.sum(-1, keepdim=True).clamp(min=1e-12)


def build_refinement(
    kind: str,
    in_channels: int,
    coarse_stride: int,
    fine_stride: int,
    margin: int,
    dim: int,
    hidden: int,
    local_size: int = 3,
    head: str = "conv",
    query: str = "centre",
    points: int = 1,
) -> Refinement | None:
    """The refinement head for a student config, or ``None`` for ``kind == "none"``."""
    if kind == "none":
        return None
    window = RefineWindow(coarse_stride, fine_stride, margin)
    return Refinement(kind, in_channels, window, dim, hidden, local_size, head, query, points)
