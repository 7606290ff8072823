"""The coarse grid, its cells, and the refinement window (``loftr_kd.geometry`` re-exports them).

Every other module (student, teacher, supervision, losses, metrics, Matcher, export, quantisation) takes
the grid from here instead of re-deriving ``H // stride`` or guessing a stride from a number of cells.

Pixel convention (docs/ARCHITECTURE.md): pixel centres sit at integer coordinates; cell ``(r, c)`` of
stride ``s`` covers pixels ``[c*s, c*s + s - 1]``, its centre is ``((c + 0.5)*s - 0.5, (r + 0.5)*s - 0.5)``
and its area ``[c*s - 0.5, (c + 1)*s - 0.5)``, so a sub-pixel point ``x`` belongs to cell
``floor((x + 0.5) / s)``. Cells are numbered row-major, ``i = r*w + c``.

Only torch is used here (the warps and estimators beside it add kornia and OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CoarseGrid", "RefineWindow", "cell_centers", "points_to_cells"]

# Coordinates are clamped to this magnitude before conversion to integer cell indices (no int overflow).
_COORD_LIMIT = 1.0e7


def cell_centers(
    h: int, w: int, stride: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Pixel coordinates of the cell centres of an ``h x w`` grid, row-major (cell ``i = r*w + c``).

    Args:
        h: number of cell rows.
        w: number of cell columns.
        stride: cell size in pixels.
        device: device of the result.
        dtype: floating dtype of the result.

    Returns:
        ``(h*w, 2)`` xy centres ``((c + 0.5)*stride - 0.5, (r + 0.5)*stride - 0.5)``.
    """
    if stride <= 0 or h < 0 or w < 0:
        raise ValueError(f"cell_centers needs h, w >= 0 and stride > 0, got h={h}, w={w}, stride={stride}")
    cols = torch.arange(w, device=device, dtype=dtype)
    rows = torch.arange(h, device=device, dtype=dtype)
    x = ((cols + 0.5) * stride - 0.5).expand(h, w)  # (h, w)
    y = ((rows + 0.5) * stride - 0.5)[:, None].expand(h, w)  # (h, w)
    return torch.stack((x, y), -1).reshape(h * w, 2)


def points_to_cells(points: torch.Tensor, stride: int, h: int, w: int) -> torch.Tensor:
    """Index of the cell whose area contains each point (nearest cell centre), ``-1`` when off the grid.

    Args:
        points: ``(..., 2)`` xy pixel coordinates.
        stride: cell size in pixels.
        h: number of cell rows of the grid.
        w: number of cell columns of the grid.

    Returns:
        ``(...)`` int64 row-major cell index ``r*w + c``, ``-1`` off the ``h x w`` grid or non-finite.
    """
    finite = torch.isfinite(points).all(-1)
    safe = torch.nan_to_num(points, nan=0.0).clamp(-_COORD_LIMIT, _COORD_LIMIT)
    cell = torch.floor((safe + 0.5) / stride).long()  # (..., 2) column, row
    col, row = cell[..., 0], cell[..., 1]
    on_grid = finite & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    return torch.where(on_grid, row * w + col, torch.full_like(col, -1))


def _size(value: int | torch.Tensor) -> int | torch.Tensor:
    """An image side as an int; while tracing for ONNX, the traced size tensor itself, so a graph
    exported with dynamic height and width derives its grid at run time instead of baking one in."""
    return value if isinstance(value, torch.Tensor) else int(value)


@dataclass(frozen=True)
class CoarseGrid:
    """The coarse grid of one image: ``height x width`` cells of ``stride`` pixels.

    Attributes:
        stride: cell size in pixels.
        height: number of cell rows ``h`` (a 0-d tensor only while tracing a dynamic-shape export).
        width: number of cell columns ``w``.
    """

    stride: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if not isinstance(self.stride, int) or self.stride <= 0:
            raise ValueError(f"grid stride must be a positive int, got {self.stride!r}")
        if self.height < 0 or self.width < 0:
            raise ValueError(f"grid size must be >= 0, got {self.height}x{self.width}")

    @classmethod
    def for_image(cls, image_height: int, image_width: int, stride: int, exact: bool = True) -> CoarseGrid:
        """Grid of an ``image_height x image_width`` image.

        Args:
            exact: require both sides to be multiples of ``stride`` (the model's contract); ``False``
                floors, as LoFTR's ground truth does for any image.
        """
        if exact and (image_height % stride or image_width % stride):
            raise ValueError(
                f"image size {image_width}x{image_height} must be a multiple of the coarse stride {stride}"
            )
        return cls(int(stride), _size(image_height) // stride, _size(image_width) // stride)

    @property
    def num_cells(self) -> int:
        """``L = h * w``."""
        return self.height * self.width

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)``."""
        return self.height, self.width

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels covered by the grid."""
        return self.height * self.stride, self.width * self.stride

    def centers(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``(L, 2)`` xy cell centres, row-major."""
        return cell_centers(self.height, self.width, self.stride, device=device, dtype=dtype)

    def cell_of(self, points: torch.Tensor) -> torch.Tensor:
        """``(...)`` index of the cell holding each ``(..., 2)`` xy point, ``-1`` off the grid."""
        return points_to_cells(points, self.stride, self.height, self.width)

    def rows_cols(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer ``(row, col)`` of cell indices ``ids >= 0`` (``i = row * w + col``).

        Division with ``trunc`` (the same as ``floor`` for ``ids >= 0``): ``floor`` exports a ``Mod``, which
        TensorRT 8 does not parse.
        """
        row = torch.div(ids, self.width, rounding_mode="trunc")
        return row, ids - row * self.width

    def ids_to_pixels(self, ids: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
        """``(..., 2)`` xy centres of cell indices ``ids`` (``(...)`` int); ``fill`` where ``ids < 0``.

        Arithmetic only (no table lookup), so it exports to ONNX at any grid size.
        """
        row, col = (v.to(torch.float32) for v in self.rows_cols(ids.clamp(min=0)))
        xy = torch.stack(((col + 0.5) * self.stride - 0.5, (row + 0.5) * self.stride - 0.5), -1)
        return torch.where((ids >= 0).unsqueeze(-1), xy, torch.full_like(xy, fill))

    def match_points(self, match_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell-centre positions of coarse matches on this grid (both images on it): ``(..., L, 2)``
        ``points0`` (each matched cell's own centre) and ``points1`` (its match's centre), ``-1`` where
        ``match_ids < 0`` -- the ``points0/points1`` outputs of a model without refinement."""
        own = torch.arange(match_ids.shape[-1], device=match_ids.device).expand_as(match_ids)
        own = torch.where(match_ids >= 0, own, torch.full_like(match_ids, -1))
        return self.ids_to_pixels(own), self.ids_to_pixels(match_ids)

    def border_mask(self, border: int, device: torch.device | str | None = None) -> torch.Tensor:
        """``(L,)`` bool, True for cells at least ``border`` cells from every edge (LoFTR's ``mask_border``)."""
        rows = torch.arange(self.height, device=device)
        cols = torch.arange(self.width, device=device)
        keep_rows = (rows >= border) & (rows < self.height - border)
        keep_cols = (cols >= border) & (cols < self.width - border)
        return (keep_rows[:, None] & keep_cols[None, :]).reshape(-1)

    def at_stride(self, stride: int) -> CoarseGrid:
        """The grid of the same image at another stride (e.g. the teacher's 8-px grid)."""
        return CoarseGrid.for_image(*self.image_size, stride, exact=False)

    def factor_to(self, coarser: CoarseGrid) -> int:
        """Integer ``k`` with ``coarser = k x`` this grid on both axes (teacher -> student alignment)."""
        if (
            min(coarser.height, coarser.width) <= 0
            or self.height % coarser.height
            or self.width % coarser.width
        ):
            raise ValueError(f"grid {self.shape} is not an integer multiple of grid {coarser.shape}")
        k = self.height // coarser.height
        if self.width // coarser.width != k:
            raise ValueError(f"grid {self.shape} and {coarser.shape} differ by different factors per axis")
        return k


@dataclass(frozen=True)
class RefineWindow:
    """Where the refinement looks: a square window of fine-feature pixels around a matched cell.

    The fine map has stride ``fine_stride`` (< the coarse stride, which it divides with an even ratio
    ``r``), so a coarse cell covers ``r x r`` fine pixels and its centre sits between the middle four.
    The window is that cell's ``r x r`` block plus ``margin`` fine pixels on every side:
    ``size = r + 2 * margin`` fine pixels per side, centred on the cell centre.

    Attributes:
        coarse_stride: coarse cell size in pixels.
        fine_stride: fine feature stride in pixels.
        margin: extra fine pixels on each side of the cell.
    """

    coarse_stride: int
    fine_stride: int
    margin: int

    def __post_init__(self) -> None:
        if self.fine_stride <= 0 or self.coarse_stride % self.fine_stride:
            raise ValueError(
                f"refine fine_stride {self.fine_stride} must divide the coarse stride {self.coarse_stride}"
            )
        if self.ratio < 2 or self.ratio % 2:
            raise ValueError(
                f"coarse_stride / fine_stride must be even and >= 2, got {self.coarse_stride}/{self.fine_stride}"
            )
        if self.margin < 0:
            raise ValueError(f"refine margin must be >= 0, got {self.margin}")

    @property
    def ratio(self) -> int:
        """Fine pixels per cell side ``r``."""
        return self.coarse_stride // self.fine_stride

    @property
    def size(self) -> int:
        """Fine pixels per window side."""
        return self.ratio + 2 * self.margin

    @property
    def num_positions(self) -> int:
        """``size ** 2`` candidate positions."""
        return self.size**2

    @property
    def reach(self) -> float:
        """Largest offset (pixels, per axis) of a window position from the cell centre."""
        return (self.size - 1) / 2 * self.fine_stride

    def offsets(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``(size*size, 2)`` xy pixel offsets of the window positions from the cell centre, row-major."""
        return self._square_offsets(self.size, device, dtype)

    @property
    def query_half(self) -> int:
        """Half side of the window around a corner query (``refine_query="corner"``): an odd window of
        ``2 * query_half + 1`` fine pixels centred on a pixel, one position smaller than this window (reach
        ``+-query_half`` around the query, as this window's ``+-(query_half + 0.5)`` around the cell centre)."""
        return self.ratio // 2 + self.margin - 1

    @property
    def query_size(self) -> int:
        """Fine pixels per side of the window around a corner query."""
        return 2 * self.query_half + 1

    def query_offsets(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``(query_size**2, 2)`` xy pixel offsets of the corner-query window's positions from its centre."""
        return self._square_offsets(self.query_size, device, dtype)

    def _square_offsets(
        self, size: int, device: torch.device | str | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """Offsets of a ``size x size`` lattice of fine pixels from its centre, xy, row-major."""
        steps = (torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2) * self.fine_stride
        x = steps.expand(size, size)
        y = steps[:, None].expand(size, size)
        return torch.stack((x, y), -1).reshape(-1, 2)
