"""Distilling the refinement from LoFTR's fine stage: the teacher's fine matches are kornia's own, the
targets move them exactly to the student's cell centres under an affine map, and the term trains the
refinement. The teacher is kornia's real LoFTR architecture with random weights (no checkpoint offline)."""

from __future__ import annotations

import copy
from functools import partial

import cv2
import numpy as np
import pytest
import torch
from kornia.feature import LoFTR
from kornia.feature.loftr import loftr as kornia_loftr
from skimage import data as skdata

from conftest import instantiate_preset
from loftr_kd.geometry import CoarseGrid
from loftr_kd.lightning_module import DistillationModule
from loftr_kd.losses import LossConfig, teacher_fine_cells, teacher_refine_targets
from loftr_kd.teachers import LoFTRTeacher

H_IMG, W_IMG = 96, 128
SHIFT = np.array([[1.0, 0.03, 3.3], [-0.02, 1.0, 2.1], [0.0, 0.0, 1.0]])  # image0 -> image1


@pytest.fixture(scope="module")
def teacher() -> LoFTRTeacher:
    torch.manual_seed(0)
    return LoFTRTeacher()


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    image0 = (
        cv2.resize(skdata.camera(), (W_IMG, H_IMG), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    )
    image1 = cv2.warpPerspective(image0, SHIFT, (W_IMG, H_IMG))
    return torch.from_numpy(image0)[None, None], torch.from_numpy(image1)[None, None]


def test_fine_matches_are_kornias_own_loftr_matches(teacher, pair):
    """For the cells kornia's LoFTR matches, the teacher's fine points are kornia's keypoints, bit for bit."""
    source = LoFTR(pretrained=None, config=copy.deepcopy(kornia_loftr.default_cfg)).eval()
    source.load_state_dict(teacher.matcher.state_dict())
    source.coarse_matching.thr = 0.0  # random weights: take every mutual match
    with torch.no_grad():
        reference = source({"image0": pair[0], "image1": pair[1]})
    k0, k1 = reference["keypoints0"], reference["keypoints1"]
    assert len(k0) >= 10
    w = W_IMG // 8
    cells = (k0[:, 1] / 8 * w + k0[:, 0] / 8).round().long()
    saved = teacher.matcher.coarse_matching.thr
    teacher.matcher.coarse_matching.thr = 0.0
    try:
        fine = teacher(*pair, fine_cells=cells).fine
    finally:
        teacher.matcher.coarse_matching.thr = saved
    assert fine.points0.shape == (1, len(cells), 2) and bool(fine.valid.all())
    torch.testing.assert_close(fine.points0[0], k0, rtol=0, atol=0)
    torch.testing.assert_close(fine.points1[0], k1, rtol=0, atol=1e-5)
    # at LoFTR's threshold (0.2) random weights give weak matches: every one of them is marked invalid
    fine = teacher(*pair, fine_cells=cells).fine
    confidence = teacher(*pair).confidence[0, cells].amax(-1)
    assert torch.equal(fine.valid[0], fine.valid[0] & (confidence >= 0.2))


def test_fine_cells_are_validated(teacher, pair):
    with pytest.raises(ValueError, match="fine_cells must be"):
        teacher(*pair, fine_cells=torch.tensor([10_000]))


def test_targets_are_exact_under_an_affine_map():
    """Teacher matches from an exact affine map at LoFTR's 8-px positions give the affine image of every
    student cell centre (16-px grid, half a pixel or more away from any teacher position)."""
    student, teacher = (
        CoarseGrid.for_image(H_IMG, W_IMG, 16),
        CoarseGrid.for_image(H_IMG, W_IMG, 8, exact=False),
    )
    cells = teacher_fine_cells(student, teacher).reshape(-1)
    x, y = cells % teacher.width, cells // teacher.width
    points0 = (torch.stack([x, y], -1).float() * 8).unsqueeze(0)  # (1, 3L, 2)
    affine = torch.tensor([[1.3, 0.2], [-0.15, 0.9]])
    move = torch.tensor([4.2, -3.1])
    points1 = points0 @ affine.T + move
    targets, valid = teacher_refine_targets(
        points0, points1, torch.ones(1, len(cells), dtype=torch.bool), student
    )
    truth = student.centers() @ affine.T + move
    torch.testing.assert_close(targets[0], truth, rtol=0, atol=1e-4)
    assert bool(valid.all())
    # the anchor alone (no affine correction) would be off by the centre-to-anchor offset's image
    assert (points1[0, : student.num_cells] - truth).norm(dim=-1).min() > 0.5
    # a neighbour's match far away (a depth edge, a wrong match) invalidates that target only
    jumped = points1.clone()
    jumped[0, student.num_cells + 5] += 100.0
    _, valid = teacher_refine_targets(points0, jumped, torch.ones(1, len(cells), dtype=torch.bool), student)
    assert not bool(valid[0, 5]) and int(valid.sum()) == student.num_cells - 1


def test_distillation_term_trains_the_refinement(teacher, pair):
    """loss.w_refine_kd > 0 with a LoFTR teacher and a refining student: one step has the term, and it
    alone sends gradients to the refinement head."""
    student = instantiate_preset("paper_refine", H_IMG, W_IMG)
    # identical images: even random LoFTR weights match most cells to themselves, so targets exist
    batch = {"image0": pair[0], "image1": pair[0].clone(), "H_0to1": torch.eye(3)[None]}
    saved = teacher.matcher.coarse_matching.thr
    teacher.matcher.coarse_matching.thr = 0.0  # random weights: let the teacher's mutual matches count
    try:
        module = DistillationModule(
            student, teacher, LossConfig(w_refine_kd=1.0), optimizer=partial(torch.optim.AdamW, lr=1e-3)
        )
        assert module.criterion.distils_refinement
        terms = module._step(batch).terms
        assert terms.refine_kd is not None and torch.isfinite(terms.refine_kd) and terms.refine_kd > 0
        student.zero_grad()
        terms.refine_kd.backward()
        grads = [p.grad for p in student.refinement.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
        off = DistillationModule(
            student, teacher, LossConfig(), optimizer=partial(torch.optim.AdamW, lr=1e-3)
        )
        assert not off.criterion.distils_refinement and off._step(batch).terms.refine_kd is None
    finally:
        teacher.matcher.coarse_matching.thr = saved
    with pytest.raises(ValueError, match="w_refine_kd must be >= 0"):
        LossConfig(w_refine_kd=-1.0)
