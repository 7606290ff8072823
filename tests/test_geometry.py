"""The grid object: centres, cell of a point, ids -> pixels at strides 8 and 16, teacher -> student alignment."""

from __future__ import annotations

import pytest
import torch

from loftr_kd.geometry import CoarseGrid, RefineWindow
from loftr_kd.losses import align_teacher_to_student


@pytest.mark.parametrize("stride", [8, 16])
def test_centres_cells_and_pixels_agree(stride: int) -> None:
    grid = CoarseGrid.for_image(96, 128, stride)
    assert grid.shape == (96 // stride, 128 // stride) and grid.num_cells == grid.height * grid.width
    centres = grid.centers()
    # independent truth: cell (r, c) covers pixels [c*s, c*s + s - 1], centre in the middle of them
    r, c = 2, 3
    i = r * grid.width + c
    assert centres[i].tolist() == [c * stride + (stride - 1) / 2, r * stride + (stride - 1) / 2]
    ids = torch.arange(grid.num_cells)
    assert torch.equal(grid.cell_of(centres), ids)
    assert torch.allclose(grid.ids_to_pixels(ids), centres)
    # every pixel of a cell, and the cell area's edges, belong to it; the next pixel does not
    first, last = (
        torch.tensor([[c * stride, r * stride]]),
        torch.tensor([[c * stride + stride - 1.0, r * stride]]),
    )
    assert grid.cell_of(first.float()).item() == i and grid.cell_of(last).item() == i
    assert grid.cell_of(torch.tensor([[c * stride - 0.5, r * stride - 0.5]])).item() == i
    assert grid.cell_of(torch.tensor([[c * stride + stride - 0.5, r * stride]])).item() == i + 1
    # off the grid and non-finite -> -1; -1 ids -> fill value
    outside = torch.tensor([[-0.6, 5.0], [128.0, 5.0], [float("nan"), 5.0]])
    assert grid.cell_of(outside).tolist() == [-1, -1, -1]
    assert grid.ids_to_pixels(torch.tensor([-1, 0])).tolist()[0] == [-1.0, -1.0]


def test_grid_rejects_sizes_off_the_stride() -> None:
    with pytest.raises(ValueError, match="multiple of the coarse stride 16"):
        CoarseGrid.for_image(100, 128, 16)
    assert CoarseGrid.for_image(100, 128, 16, exact=False).shape == (6, 8)


def test_border_mask_matches_definition() -> None:
    grid = CoarseGrid(16, 6, 8)
    mask = grid.border_mask(2).reshape(6, 8)
    assert mask.sum() == (6 - 4) * (8 - 4)
    assert mask[2, 2] and mask[3, 5] and not mask[1, 4] and not mask[4, 4] and not mask[2, 6]


def test_teacher_to_student_alignment_is_two_dimensional() -> None:
    """Student cell (r, c) pairs with the teacher cell (2r, 2c) on both image axes: whose centre lies in it."""
    student = CoarseGrid.for_image(64, 96, 16)
    teacher = student.at_stride(8)
    k = teacher.factor_to(student)
    assert k == 2
    lt = teacher.num_cells
    # teacher similarity encodes (teacher cell in image0, teacher cell in image1) as a unique number
    sim = torch.arange(lt * lt, dtype=torch.float32).reshape(1, lt, lt)
    aligned = align_teacher_to_student(sim, teacher.shape, student.shape)
    for i in (0, 7, student.num_cells - 1):
        for j in (0, 5, student.num_cells - 1):
            ti, tj = divmod(int(aligned[0, i, j].item()), lt)
            # the paired teacher cells' centres fall inside the student cells i and j
            assert student.cell_of(teacher.centers()[ti]).item() == i
            assert student.cell_of(teacher.centers()[tj]).item() == j
    with pytest.raises(ValueError, match="integer multiple"):
        CoarseGrid(8, 7, 12).factor_to(CoarseGrid(16, 3, 6))


def test_refine_window_geometry() -> None:
    window = RefineWindow(coarse_stride=16, fine_stride=4, margin=2)
    assert window.ratio == 4 and window.size == 8 and window.num_positions == 64
    offsets = window.offsets()
    # fine pixel k has its centre at 4k + 1.5; cell 0's centre is 7.5; the window starts 2 fine px left of the cell
    expected_x = torch.tensor([4 * k + 1.5 - 7.5 for k in range(-2, 6)])
    assert torch.allclose(offsets[:8, 0], expected_x) and torch.allclose(offsets[::8, 1], expected_x)
    assert window.reach == pytest.approx(14.0) and offsets.abs().max() == pytest.approx(14.0)
    with pytest.raises(ValueError, match="even"):
        RefineWindow(16, 16, 1)
    with pytest.raises(ValueError, match="divide"):
        RefineWindow(16, 3, 1)


def test_match_points_are_the_cell_centres_of_both_sides() -> None:
    grid = CoarseGrid(16, 2, 3)
    points0, points1 = grid.match_points(torch.tensor([[4, -1, 0, 5, -1, 1]]))
    centres = grid.centers()
    assert torch.equal(points0[0, 0], centres[0]) and torch.equal(points1[0, 0], centres[4])
    assert torch.equal(points0[0, 3], centres[3]) and torch.equal(points1[0, 3], centres[5])
    assert (points0[0, [1, 4]] == -1).all() and (points1[0, [1, 4]] == -1).all()
