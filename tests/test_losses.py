"""Focal loss, 2-D teacher->student alignment, distillation KL, the combined loss and its config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loftr_kd.losses import (
    FocalConfig,
    LossConfig,
    align_teacher_to_student,
    alignment_phase,
    distillation_loss,
    focal_loss,
    total_loss,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def dual_softmax(sim: torch.Tensor) -> torch.Tensor:
    return F.softmax(sim, 1) * F.softmax(sim, 2)


# ------------------------------------------------------------------------------------------ focal


def focal_by_hand(conf, gt, alpha=0.25, gamma=2.0, pos_w=1.0, neg_w=1.0):
    """Loop-by-loop LoFTR formula, in float64."""
    pos, neg = [], []
    b, l0, l1 = conf.shape
    for bi in range(b):
        for i in range(l0):
            for j in range(l1):
                p = min(max(float(conf[bi, i, j]), 1e-6), 1 - 1e-6)
                if gt[bi, i] == j:
                    pos.append(-alpha * (1 - p) ** gamma * math.log(p))
                else:
                    neg.append(-alpha * p**gamma * math.log(1 - p))
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return pos_w * mean(pos) + neg_w * mean(neg)


def test_focal_loss_matches_hand_formula():
    torch.manual_seed(0)
    conf = dual_softmax(torch.randn(2, 5, 4) * 3)
    conf[0, 0, 1] = 0.0  # clamped
    conf[1, 2, 3] = 1.0
    gt = torch.tensor([[1, -1, 3, 0, -1], [-1, 2, 3, -1, -1]])
    for kwargs in ({}, {"alpha": 0.5, "gamma": 1.0, "pos_weight": 2.0, "neg_weight": 0.5}):
        hand = focal_by_hand(conf, gt, *kwargs.values()) if kwargs else focal_by_hand(conf, gt)
        loss = focal_loss(conf, gt, **kwargs)
        assert loss.dtype == torch.float32 and loss.ndim == 0
        assert loss.item() == pytest.approx(hand, rel=1e-5)


def test_focal_loss_prefers_the_right_matches_and_has_gradients():
    gt = torch.tensor([[0, 1, 2, -1]])
    good = torch.full((1, 4, 3), -5.0)
    good[0, [0, 1, 2], [0, 1, 2]] = 5.0
    bad = good.flip(-1).clone().requires_grad_(True)
    assert focal_loss(dual_softmax(good), gt) < focal_loss(dual_softmax(bad), gt)
    focal_loss(dual_softmax(bad), gt).backward()
    assert bad.grad is not None and torch.isfinite(bad.grad).all() and bad.grad.abs().sum() > 0


def test_focal_loss_without_positive_is_finite_and_connected():
    sim = torch.randn(2, 6, 6, requires_grad=True)
    gt = torch.full((2, 6), -1)
    loss = focal_loss(dual_softmax(sim), gt)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(focal_by_hand(dual_softmax(sim).detach(), gt), rel=1e-5)
    loss.backward()  # the graph reaches the inputs (DDP sees every parameter used)
    assert sim.grad is not None and torch.isfinite(sim.grad).all()
    # all entries positive (1x1 matrix): no negative, still finite
    one = torch.ones(1, 1, 1, requires_grad=True)
    loss = focal_loss(one, torch.tensor([[0]]))
    loss.backward()
    assert torch.isfinite(loss) and one.grad is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_focal_loss_half_precision_inputs(dtype):
    conf = torch.zeros(1, 3, 3, dtype=dtype)
    conf[0, 0, 0] = 1.0  # exact 0 and 1: log(0) unless clamped in float32 (1 - 1e-6 is 1 in fp16)
    conf.requires_grad_(True)
    loss = focal_loss(conf, torch.tensor([[0, 1, -1]]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(conf.grad.float()).all()


def test_focal_loss_from_logits_equals_clamped_where_clamp_is_inactive():
    """From the logits the loss is LoFTR's exactly while every p is inside [1e-6, 1 - 1e-6] ..."""
    torch.manual_seed(0)
    sim = torch.randn(2, 5, 4) * 2
    gt = torch.tensor([[1, -1, 3, 0, -1], [-1, 2, 3, -1, -1]])
    conf = dual_softmax(sim)
    assert conf.min() > 1e-6 and conf.max() < 1 - 1e-6
    for kwargs in ({}, {"alpha": 0.5, "gamma": 1.0, "pos_weight": 2.0, "neg_weight": 0.5}):
        exact = focal_loss(conf, gt, **kwargs, similarity=sim)
        assert exact.item() == pytest.approx(focal_loss(conf, gt, **kwargs).item(), rel=1e-5)
        assert exact.item() == pytest.approx(focal_by_hand(conf, gt, *kwargs.values()), rel=1e-5)


def test_focal_loss_from_logits_keeps_the_gradient_of_saturated_positives():
    """... and where LoFTR's clamp leaves a saturated student without gradient, it learns (the stall
    measured on the fast student: loss exactly alpha * -log(1e-6) = 3.45 for 180 steps)."""
    torch.manual_seed(0)
    gt = torch.arange(6).unsqueeze(0)  # (1, 6): cell i matches cell i
    sim0 = torch.randn(1, 6, 6) * 40  # saturated logits: dual-softmax confidence of most positives < 1e-6
    sim0[0, torch.arange(6), torch.arange(6)] = -200.0  # every positive far below its row/column maximum
    clamped_sim = sim0.clone().requires_grad_(True)
    clamped = focal_loss(dual_softmax(clamped_sim), gt, neg_weight=0.0)
    assert clamped.item() == pytest.approx(0.25 * -math.log(1e-6), rel=1e-4)  # the plateau value, 3.45
    clamped.backward()
    assert clamped_sim.grad.abs().max() == 0  # LoFTR's clamp: no gradient at all

    sim = sim0.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([sim], lr=200.0)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = focal_loss(dual_softmax(sim), gt, similarity=sim)
        loss.backward()
        assert torch.isfinite(sim.grad).all() and sim.grad.abs().max() > 0
        losses.append(loss.item())
        optimizer.step()
    assert losses[0] > 10 * clamped.item()  # the exact loss of a positive at log p ~ -200 (uncapped)
    assert losses[-1] < 0.1 * losses[0]
    assert (dual_softmax(sim).argmax(-1) == gt).all()  # it learned the right matches


def test_focal_loss_from_logits_masked_entries_stay_finite():
    sim = torch.randn(1, 4, 4)
    sim[0, :, 3] = float("-inf")  # a masked column
    sim[0, 2] = float("-inf")  # a fully masked row
    sim.requires_grad_(True)
    loss = focal_loss(dual_softmax(sim.detach()), torch.tensor([[0, 1, -1, 2]]), similarity=sim)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sim.grad).all()
    with pytest.raises(ValueError, match="one shape"):
        focal_loss(torch.rand(1, 4, 4), torch.zeros(1, 4, dtype=torch.long), similarity=torch.rand(1, 4, 3))


def test_focal_loss_bad_inputs():
    with pytest.raises(ValueError, match="gt_match_ids"):
        focal_loss(torch.rand(2, 4, 4), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="confidence"):
        focal_loss(torch.rand(4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        focal_loss(torch.rand(1, 4, 4), torch.zeros(1, 4))


# -------------------------------------------------------------------------------------- alignment


def encoded_teacher(ht: int, wt: int, batch: int = 2) -> torch.Tensor:
    """Teacher similarity whose entry (i, j) encodes both cells: r*1000 + c*100 + r'*10 + c' (+ 1e4 * b)."""
    r = torch.arange(ht).repeat_interleave(wt)  # row of flat cell i
    c = torch.arange(wt).repeat(ht)
    code0 = (r * 1000 + c * 100).double()
    code1 = (r * 10 + c).double()
    sim = code0[:, None] + code1[None, :]
    return torch.stack([sim + 1e4 * b for b in range(batch)])


def test_alignment_on_hand_built_teacher():
    ht, wt, hs, ws = 6, 8, 3, 4  # k = 2
    teacher = encoded_teacher(ht, wt)
    student = align_teacher_to_student(teacher, (ht, wt), (hs, ws))
    assert student.shape == (2, hs * ws, hs * ws)
    for b in range(2):
        for i in range(hs * ws):
            r, c = divmod(i, ws)
            for j in range(hs * ws):
                r2, c2 = divmod(j, ws)
                expected = (2 * r) * 1000 + (2 * c) * 100 + (2 * r2) * 10 + (2 * c2) + 1e4 * b
                assert student[b, i, j].item() == expected

    # The flattened-index subsampling (Coarse_LoFTR_TRT: nearest interpolation of the (Lt0, Lt1) matrix to
    # (Ls0, Ls1), i.e. student i -> teacher 4i) pairs other cells: student cell 1 = (0, 1) should read
    # teacher (0, 2) but reads flat teacher cell 4 = (0, 4).
    flat = F.interpolate(teacher[None], size=(hs * ws, hs * ws), mode="nearest")[0]
    torch.testing.assert_close(flat, teacher[:, ::4, ::4])
    assert not torch.equal(flat, student)
    assert student[0, 1, 0].item() == 200 and flat[0, 1, 0].item() == 400


def _ideal_teacher(homography, height: int, width: int, stride: int, origin: float) -> torch.Tensor:
    """An ideal teacher's logits: the row of cell t peaks at the warp of its point ``stride * t + origin``."""
    ys, xs = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
    points = torch.stack([xs.ravel(), ys.ravel()], 1).double() * stride + origin
    warped = torch.cat([points, torch.ones(len(points), 1, dtype=torch.float64)], 1) @ homography.T
    warped = warped[:, :2] / warped[:, 2:]
    return (-(torch.cdist(warped, points) ** 2) / stride**2).float()[None]


def test_a_loftr_teacher_is_aligned_by_its_cell_nearest_the_student_centre():
    """LoFTR's cell t is the point 8t: a stride-16 student's cell c (centre 16c + 7.5) is LoFTR's 2c + 1
    (0.5 px away), not 2c (7.5 px away), which the alignment took for every teacher."""
    from loftr_kd.supervision import coarse_ground_truth
    from loftr_kd.teachers.loftr import LoFTRTeacher

    assert alignment_phase(2, 8, LoFTRTeacher.cell_origin) == 1
    assert alignment_phase(2, 8, None) == 0  # centred cells (a student, XFeat): 2c and 2c+1 equally near
    assert alignment_phase(4, 4, None) == 1 and alignment_phase(1, 16, 0.0) == 0
    height, width, angle, zoom = 240, 320, math.radians(15), 1.2
    cos, sin = zoom * math.cos(angle), zoom * math.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    homography = torch.tensor(
        [[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy], [0, 0, 1]],
        dtype=torch.float64,
    )
    teacher = _ideal_teacher(homography, height, width, 8, LoFTRTeacher.cell_origin)
    empty = torch.zeros(1, 1, height, width)
    batch = {"image0": empty, "image1": empty, "H_0to1": homography.float()[None]}
    truth = coarse_ground_truth(batch, stride=16).match_ids[0]
    matched = truth >= 0
    agreement = {}
    for phase in (0, 1):
        aligned = align_teacher_to_student(
            teacher, (height // 8, width // 8), (height // 16, width // 16), phase
        )
        agreement[phase] = (aligned[0].argmax(-1) == truth)[matched].float().mean().item()
    assert agreement[1] > 0.97 and agreement[0] < 0.9, agreement


def test_the_step_loss_distils_from_the_teacher_cells_its_origin_names():
    """``DistillationLoss`` (what the LightningModule calls) takes the teacher's ``cell_origin``."""
    from types import SimpleNamespace

    from loftr_kd.geometry import CoarseGrid
    from loftr_kd.losses import DistillationLoss

    grid, teacher_grid = CoarseGrid(16, 3, 4), CoarseGrid(8, 6, 8)
    student_similarity = torch.randn(1, 12, 12)
    out = SimpleNamespace(similarity=student_similarity, confidence=dual_softmax(student_similarity))
    gt = SimpleNamespace(match_ids=torch.full((1, 12), -1))
    teacher = SimpleNamespace(similarity=torch.randn(1, 48, 48))
    criterion = DistillationLoss(LossConfig())
    for origin, phase in ((0.0, 1), (None, 0)):
        kd = criterion(out, gt, grid, teacher, teacher_grid, teacher_origin=origin).kd
        aligned = align_teacher_to_student(teacher.similarity, (6, 8), (3, 4), phase)
        torch.testing.assert_close(kd, distillation_loss(student_similarity, aligned))


def test_alignment_identity_and_errors():
    teacher = torch.randn(1, 12, 12)
    assert align_teacher_to_student(teacher, (3, 4), (3, 4)) is teacher
    with pytest.raises(ValueError, match="integer multiple"):
        align_teacher_to_student(torch.randn(1, 35, 35), (5, 7), (2, 3))
    with pytest.raises(ValueError, match="integer multiple"):
        align_teacher_to_student(torch.randn(1, 48, 48), (6, 8), (3, 2))  # k differs per axis
    with pytest.raises(ValueError, match="teacher_similarity"):
        align_teacher_to_student(torch.randn(1, 48, 40), (6, 8), (3, 4))


def test_alignment_keeps_gradients_and_640x480_shapes():
    teacher = torch.randn(1, 60 * 80, 60 * 80, requires_grad=True)
    out = align_teacher_to_student(teacher, (60, 80), (30, 40))
    assert out.shape == (1, 1200, 1200)
    out.sum().backward()
    assert teacher.grad.sum().item() == 1200 * 1200


# ----------------------------------------------------------------------------------- distillation


def kl_by_hand(student, teacher, T, mode):
    """float64 reference: softmax then explicit sum p log(p / q)."""
    s, t = student.double() / T, teacher.double() / T

    def kl(dim, s=s, t=t):
        p, q = F.softmax(t, dim), F.softmax(s, dim)
        return (p * (p.log() - q.log())).sum(dim).mean()

    if mode == "flat":
        s, t = s.flatten(1), t.flatten(1)
        p, q = F.softmax(t, 1), F.softmax(s, 1)
        return (p * (p.log() - q.log())).sum(1).mean() * T**2
    if mode == "row":
        return kl(2) * T**2
    return 0.5 * (kl(2) + kl(1)) * T**2


@pytest.mark.parametrize("mode", ["dual", "row", "flat"])
def test_distillation_matches_reference_and_is_zero_for_identical(mode):
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 6, 5) * 4, torch.randn(2, 6, 5) * 4
    for T in (1.0, 5.0):
        loss = distillation_loss(student, teacher, T, mode)
        assert loss.item() == pytest.approx(kl_by_hand(student, teacher, T, mode).item(), rel=1e-4)
        assert loss.item() > 0
    assert distillation_loss(teacher, teacher, 5.0, mode).abs().item() < 1e-6
    # invariant to a global offset of the logits (what a softmax ignores)
    assert distillation_loss(teacher + 7.0, teacher, 5.0, mode).abs().item() < 1e-5


def test_distillation_gradient_reaches_student_only():
    student = torch.randn(1, 4, 4, requires_grad=True)
    teacher = torch.randn(1, 4, 4, requires_grad=True)
    distillation_loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["dual", "row", "flat"])
def test_distillation_no_nan_with_large_half_precision_inputs(dtype, mode):
    big = torch.finfo(dtype).max
    torch.manual_seed(2)
    student = (torch.randn(2, 8, 8) * 0.9 * big / 3).clamp(-0.9 * big, 0.9 * big).to(dtype)
    teacher = (torch.randn(2, 8, 8) * 0.9 * big / 3).clamp(-0.9 * big, 0.9 * big).to(dtype)
    student[0, 0, 0], teacher[0, 1, 1] = float("inf"), float("-inf")  # overflowed / masked entries
    teacher[1, :, 0] = float("-inf")
    student.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = distillation_loss(student, teacher, 5.0, mode)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.grad.float()).all()


def test_distillation_bad_inputs():
    with pytest.raises(ValueError, match="same grid"):
        distillation_loss(torch.randn(1, 4, 4), torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.randn(1, 4, 4), torch.randn(1, 4, 4), temperature=0.0)
    with pytest.raises(ValueError, match="mode"):
        distillation_loss(torch.randn(1, 4, 4), torch.randn(1, 4, 4), mode="rows")


# ---------------------------------------------------------------------------- combined and config


def test_total_loss_weights_and_alignment():
    torch.manual_seed(3)
    hs, ws, ht, wt = 2, 3, 4, 6
    student_sim = torch.randn(2, hs * ws, hs * ws, requires_grad=True)
    teacher_sim = torch.randn(2, ht * wt, ht * wt)
    conf = dual_softmax(student_sim)
    gt = torch.tensor([[0, 1, -1, 3, 4, 5], [-1, -1, 2, -1, -1, -1]])

    alone = total_loss(conf, gt)
    assert alone.total.item() == pytest.approx(focal_loss(conf, gt).item()) and alone.kd.item() == 0.0

    out = total_loss(
        conf, gt, student_sim, teacher_sim, (hs, ws), (ht, wt), w_gt=0.3, w_kd=0.7, kd_scale=10.0
    )
    kd = distillation_loss(student_sim, align_teacher_to_student(teacher_sim, (ht, wt), (hs, ws)), 5.0)
    assert out.kd.item() == pytest.approx(kd.item(), rel=1e-6)
    assert out.gt.item() == pytest.approx(alone.gt.item(), rel=1e-6)
    assert out.total.item() == pytest.approx(0.3 * out.gt.item() + 0.7 * 10.0 * out.kd.item(), rel=1e-6)
    out.total.backward()
    assert student_sim.grad is not None and torch.isfinite(student_sim.grad).all()

    with pytest.raises(ValueError, match="student_hw"):
        total_loss(conf, gt, student_sim, teacher_sim)
    with pytest.raises(ValueError, match="student similarity"):
        total_loss(conf, gt, None, teacher_sim)


def test_loss_config_yaml_instantiates():
    omegaconf = pytest.importorskip("omegaconf")
    hydra_utils = pytest.importorskip("hydra.utils")
    cfg = omegaconf.OmegaConf.load(CONF_DIR / "loss" / "default.yaml")
    assert (cfg.w_gt, cfg.w_kd, cfg.kd_scale, cfg.temperature) == (0.3, 0.7, 10.0, 5.0)
    assert dict(cfg.focal) == {
        "alpha": 0.25,
        "gamma": 2.0,
        "pos_weight": 1.0,
        "neg_weight": 1.0,
        "from_logits": True,
    }
    loss_cfg = hydra_utils.instantiate(cfg)
    assert isinstance(loss_cfg, LossConfig) and loss_cfg.focal == FocalConfig()
    assert loss_cfg == LossConfig()  # the yaml and the dataclass defaults agree
    kwargs = loss_cfg.loss_kwargs()
    assert kwargs["w_kd"] == 0.7 and kwargs["alpha"] == 0.25 and kwargs["kd_mode"] == "dual"
    with pytest.raises(ValueError, match="kd_mode"):
        LossConfig(kd_mode="rows")
    for name in ("w_gt", "w_kd", "kd_scale", "w_refine", "w_refine_kd"):  # would train against the term
        with pytest.raises(ValueError, match=rf"{name} must be >= 0, got -1"):
            LossConfig(**{name: -1.0})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        LossConfig(temperature=0.0)
