"""The sub-pixel refinement stage: window gathering, masking, loss, a mechanism that learns, export."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from conftest import PAPER_STUDENT, assert_split_matches_whole, shifted_fine_maps
from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export import checks
from loftr_kd.export.onnx import OUTPUT_NAMES, export_onnx
from loftr_kd.geometry import CoarseGrid, RefineWindow
from loftr_kd.losses import _bilinear_window_target, refinement_loss
from loftr_kd.models.refinement import Refinement, _centre_descriptors
from loftr_kd.models.student import build_student, count_parameters, load_student, save_student
from loftr_kd.supervision import coarse_ground_truth

PAPER = PAPER_STUDENT
FAST = dict(backbone="fast", initial_dim=16, block_dims=(16, 32, 32), block_depths=(1, 1, 1))


def test_window_gathering_is_correct_at_the_borders() -> None:
    """Every window position reads the fine pixel it names, and zero outside the image."""
    window = RefineWindow(16, 4, 2)
    head = Refinement("corr", 3, window)
    h, w, r = 3, 4, window.ratio
    fine = torch.randn(1, 3, h * r, w * r)
    windows = head._gather_windows(fine, torch.arange(h * w)[None])  # (1, L, K, C)
    for cell in range(h * w):
        row, col = divmod(cell, w)
        for k in range(window.num_positions):
            dy, dx = divmod(k, window.size)
            y, x = row * r - window.margin + dy, col * r - window.margin + dx
            inside = 0 <= y < h * r and 0 <= x < w * r
            expected = fine[0, :, y, x] if inside else torch.zeros(3)
            assert torch.equal(windows[0, cell, k], expected), (cell, k)
    # the offsets table names the same pixels: fine pixel (y, x) has its centre at 4 * (y, x) + 1.5
    centre = CoarseGrid(16, h, w).centers()[w + 1]  # cell (1, 1)
    k = 3 * window.size + 5
    y, x = 1 * r - window.margin + 3, 1 * r - window.margin + 5
    assert torch.allclose(centre + window.offsets()[k], torch.tensor([4 * x + 1.5, 4 * y + 1.5]))


def test_centre_descriptor_is_the_mean_of_the_middle_four_fine_pixels() -> None:
    fine = torch.randn(1, 2, 8, 12)
    centres = _centre_descriptors(fine, 4)  # (1, 6, 2)
    assert torch.allclose(centres[0, 4], fine[0, :, 5:7, 5:7].mean((1, 2)))  # cell (1, 1): fine px 5, 6


@pytest.mark.parametrize("kind", ["corr", "mlp"])
def test_refined_outputs_are_masked_where_there_is_no_match(kind: str) -> None:
    torch.manual_seed(0)
    model = build_student(input_height=96, input_width=128, refine=kind, match_threshold=0.0).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 96, 128), torch.rand(2, 1, 96, 128))
    matched = out.match_ids >= 0
    assert matched.any() and (~matched).any()
    assert (out.points1[~matched] == -1).all() and (out.points0[~matched] == -1).all()
    assert (out.match_uncertainty[~matched] == 0).all() and (out.match_uncertainty[matched] > 0).all()
    grid = CoarseGrid.for_image(96, 128, 16)
    # image0 stays at its cell centre; image1 moves at most the window's reach from the matched cell centre
    assert torch.allclose(out.points0[matched], grid.centers().expand(2, -1, -1)[matched])
    shift = (out.points1 - grid.ids_to_pixels(out.match_ids)).abs()[matched]
    assert shift.max() <= model.config.refine_window.reach + 1e-4
    assert torch.allclose(out.points1[matched], out.candidate_points1[matched])


def test_paper_without_refinement_is_the_published_student_with_refinement_a_superset() -> None:
    plain = build_student(**PAPER)
    assert count_parameters(plain) == 158_840 and not any(
        k.startswith("refinement") for k in plain.state_dict()
    )
    refined = build_student(**PAPER, refine="corr")
    extra = set(refined.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("refinement.") for k in extra)
    assert set(plain.state_dict()) <= set(refined.state_dict())


def test_bilinear_target_has_the_offset_as_expectation() -> None:
    window = RefineWindow(16, 4, 2)
    offsets = torch.tensor([[3.3, -7.9], [0.0, 0.0], [-14.0, 14.0], [13.9, -2.2]])
    target = _bilinear_window_target(offsets, window.size, window.fine_stride)
    assert torch.allclose(target.sum(-1), torch.ones(4))
    assert torch.allclose(target @ window.offsets(), offsets, atol=1e-5)


def test_refinement_loss_ignores_rows_the_window_cannot_reach() -> None:
    window = RefineWindow(16, 4, 2)
    centres = torch.zeros(1, 3, 2)
    truth = torch.tensor([[[2.0, 1.0], [40.0, 0.0], [1.0, 1.0]]])  # second row: 40 px away, beyond reach
    valid = torch.tensor([[True, True, False]])
    logits = torch.zeros(1, 3, window.num_positions, requires_grad=True)
    points = torch.zeros(1, 3, 2, requires_grad=True)
    loss = refinement_loss(points, torch.ones(1, 3), logits, centres, truth, valid, window)
    loss.backward()
    assert points.grad[0, 0].abs().sum() > 0 and points.grad[0, 1:].abs().sum() == 0
    assert logits.grad[0, 1:].abs().sum() == 0
    # nothing reachable: zero, still connected to the graph
    none = refinement_loss(points, torch.ones(1, 3), logits, centres, truth, valid & False, window)
    assert none.item() == 0.0 and none.requires_grad


def _translation_batch(rng: np.random.Generator, image: np.ndarray, n: int, height: int, width: int) -> dict:
    """Crops of one photo and the same crop moved by a known sub-pixel translation (exact H)."""
    images0, images1, homographies = [], [], []
    for _ in range(n):
        x, y = rng.uniform(0, image.shape[1] - width - 20), rng.uniform(0, image.shape[0] - height - 20)
        dx, dy = rng.uniform(-6, 6, size=2)
        a0 = np.array([[1, 0, -x], [0, 1, -y], [0, 0, 1]])
        a1 = np.array([[1, 0, -x - dx], [0, 1, -y - dy], [0, 0, 1]])
        images0.append(cv2.warpPerspective(image, a0, (width, height), flags=cv2.INTER_LINEAR))
        images1.append(cv2.warpPerspective(image, a1, (width, height), flags=cv2.INTER_LINEAR))
        homographies.append(a1 @ np.linalg.inv(a0))
    stack = lambda v: torch.from_numpy(np.stack(v)).float()  # noqa: E731
    return {
        "image0": stack(images0)[:, None],
        "image1": stack(images1)[:, None],
        "H_0to1": stack(homographies),
    }


def test_a_refinement_trained_a_few_steps_beats_the_cell_centres() -> None:
    """Independent truth: a known sub-pixel translation; teacher-forced candidates, so only refinement is scored."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    height, width = 128, 160
    model = build_student(input_height=height, input_width=width, refine="corr", border_removal=0)
    grid = CoarseGrid.for_image(height, width, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(40):
        batch = _translation_batch(rng, image, 6, height, width)
        gt = coarse_ground_truth(batch, 16)
        # teacher-forced candidates (the true cell) so that the test measures the refinement alone
        refined = model.refinement(*_fine_maps(model, batch), gt.match_ids.clamp(min=0), grid)
        loss = refinement_loss(
            refined.points1,
            refined.uncertainty,
            refined.logits,
            grid.ids_to_pixels(gt.match_ids.clamp(min=0)),
            gt.points1,
            gt.valid & (gt.match_ids >= 0),
            model.config.refine_window,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch = _translation_batch(np.random.default_rng(1), image, 8, height, width)
    gt = coarse_ground_truth(batch, 16)
    keep = gt.match_ids >= 0
    with torch.no_grad():
        refined = model.refinement(*_fine_maps(model, batch), gt.match_ids.clamp(min=0), grid)
    error_refined = (refined.points1 - gt.points1).norm(dim=-1)[keep].median()
    error_cells = (grid.ids_to_pixels(gt.match_ids) - gt.points1).norm(dim=-1)[keep].median()
    assert error_refined < 0.7 * error_cells, (error_refined, error_cells)


def _fine_maps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    _, fine = model.backbone.forward_features(
        torch.cat([batch["image0"], batch["image1"]]), model.fine_stride
    )
    return fine.chunk(2)


@pytest.mark.parametrize("preset", [PAPER, FAST], ids=["paper", "fast"])
def test_refined_student_exports_with_fixed_shapes_allowed_ops_and_parity(tmp_path, preset) -> None:
    torch.manual_seed(0)
    model = build_student(input_height=240, input_width=320, refine="corr", match_threshold=0.05, **preset)
    path = save_student(model, tmp_path / "s.pt")
    model = load_student(path).eval()
    onnx_path = export_onnx(model, tmp_path / "s.onnx")
    shapes = checks.io_shapes(onnx_path)
    assert [o for o in OUTPUT_NAMES if o in shapes["outputs"]] == list(OUTPUT_NAMES)
    assert shapes["outputs"]["points1"]["shape"] == [1, 300, 2] and shapes["outputs"]["match_uncertainty"][
        "shape"
    ] == [1, 300]
    assert checks.check_tensorrt_ops(onnx_path).ok
    meta = checks.read_metadata(onnx_path)
    assert meta["refine"] == "corr" and meta["coarse_stride"] == "16" and '"size": 8' in meta["refine_window"]
    pairs = [(a, b) for a, b, _ in real_image_pairs(240, 320, 2)]
    parity = checks.check_parity(model, onnx_path, pairs)
    assert parity.ok and parity.points1_max_abs_diff_px is not None and parity.matches_torch > 0, parity


# ------------------------------------------------------------------------------ corner queries
def test_corner_queries_pick_the_corner_of_each_cell_from_the_image() -> None:
    """One bright rectangle whose corner lies inside a cell: that cell's query is the fine pixel at the corner
    (Shi-Tomasi, as OpenCV's cornerMinEigenVal at the fine resolution); every query lies in the inner block."""
    from loftr_kd.models.refinement import corner_queries

    window = RefineWindow(16, 2, 2)  # r = 8 fine pixels per cell side
    image = torch.zeros(1, 1, 64, 96)
    image[:, :, 22:, 41:] = 1.0  # corner at pixel (x 41, y 22): cell (row 1, col 2), fine pixel (11, 20)
    queries = corner_queries(image, window)
    assert queries.shape == (1, 4 * 6) and queries.dtype == torch.int64
    dy, dx = torch.div(queries, 8, rounding_mode="trunc"), queries % 8
    assert ((dy >= 1) & (dy <= 6) & (dx >= 1) & (dx <= 6)).all()
    cell = 1 * 6 + 2
    fine_y, fine_x = 8 * 1 + int(dy[0, cell]), 8 * 2 + int(dx[0, cell])
    assert abs(fine_y - 11) <= 1 and abs(fine_x - 20) <= 1  # the corner's fine pixel (22 / 2, 41 / 2)
    small = cv2.resize((image[0, 0].numpy() * 255).astype(np.uint8), (48, 32), interpolation=cv2.INTER_AREA)
    response = cv2.cornerMinEigenVal(small.astype(np.float32), 3, 3)
    block = response[8:16, 16:24][1:7, 1:7]
    assert np.unravel_index(block.argmax(), block.shape) == (int(dy[0, cell]) - 1, int(dx[0, cell]) - 1)


def test_corner_queries_find_a_translation_exactly() -> None:
    """Image1's descriptors are image0's moved by a whole number of fine pixels: around the true cells, every
    query's refined point lands on its translated position (points1 - points0 = the shift), and image0's
    points are the queries' fine pixels, not the cell centres."""
    torch.manual_seed(0)
    h, w, shift = 4, 6, (3, 4)  # fine pixels (dy, dx): 6 and 8 image pixels
    refinement, desc0, desc1 = shifted_fine_maps(h, w, shift)
    queries = torch.randint(0, 36, (1, h * w))
    queries = (torch.div(queries, 6, rounding_mode="trunc") + 1) * 8 + queries % 6 + 1
    out = refinement.refine_described(desc0, desc1, torch.arange(h * w)[None], CoarseGrid(16, h, w), queries)
    assert out.points0 is not None and out.logits.shape == (1, h * w, 11 * 11)
    qy, qx = torch.div(queries, 8, rounding_mode="trunc"), queries % 8
    rows, cols = torch.div(torch.arange(h * w), w, rounding_mode="trunc"), torch.arange(h * w) % w
    expected0 = torch.stack([2 * (8 * cols + qx) + 0.5, 2 * (8 * rows + qy) + 0.5], -1).float()
    torch.testing.assert_close(out.points0, expected0)
    inside = ((8 * rows + qy + shift[0]) < 8 * h) & ((8 * cols + qx + shift[1]) < 8 * w)
    moved = out.points1 - out.points0
    target = torch.tensor([2.0 * shift[1], 2.0 * shift[0]])
    assert inside.sum() > 10
    torch.testing.assert_close(moved[0, inside[0]], target.expand(int(inside.sum()), 2), atol=0.05, rtol=0)
    # each window is centred on the query's pixel of its candidate cell (what the loss scores around): the
    # query itself for its own cell, one cell (16 px) further right for the right-hand neighbour
    torch.testing.assert_close(out.centres1, out.points0)
    right = refinement.refine_described(
        desc0, desc1, (torch.arange(h * w)[None] + 1).clamp(max=h * w - 1), CoarseGrid(16, h, w), queries
    )
    in_row = cols[None] < w - 1
    torch.testing.assert_close(right.centres1[in_row], (out.points0 + torch.tensor([16.0, 0.0]))[in_row])


def test_corner_queries_are_an_inference_setting_the_export_carries(tmp_path) -> None:
    """The same weights load with refine_query=corner: the coarse matches are unchanged, image0's points move
    off the cell centres; the whole graph and its split halves export and agree with PyTorch; training corner
    queries with a LoFTR teacher's fine matches (given at cell centres) is refused with the reason."""
    from omegaconf import OmegaConf

    from loftr_kd.config_check import ConfigError, check_train_config
    from loftr_kd.export.split import export_split

    torch.manual_seed(0)
    model = build_student(input_height=240, input_width=320, refine="corr", refine_fine_stride=2, **PAPER)
    path = save_student(model, tmp_path / "s.pt")
    centre, corner = (load_student(path, refine_query=q).eval() for q in ("centre", "corner"))
    pairs = [(a, b) for a, b, _ in real_image_pairs(240, 320, 2)]
    image0, image1 = (torch.from_numpy(x)[None, None] for x in pairs[0])
    with torch.no_grad():
        a, b = centre(image0, image1), corner(image0, image1)
    assert torch.equal(a.match_ids, b.match_ids) and (a.match_ids >= 0).any()
    matched = a.match_ids >= 0
    assert not torch.equal(a.points0[matched], b.points0[matched])
    onnx_path = export_onnx(corner, tmp_path / "corner.onnx", dynamic=True)
    assert checks.check_tensorrt_ops(onnx_path).ok
    assert '"size": 11' in checks.read_metadata(onnx_path)["refine_window"]
    parity = checks.check_parity(corner, onnx_path, pairs)
    assert parity.ok and parity.matches_torch > 0, parity
    export_split(corner, onnx_path, dynamic=True)
    _, encoded0 = assert_split_matches_whole(onnx_path, pairs[0][0][None, None], pairs[0][1][None, None])
    assert encoded0.queries is not None and encoded0.queries.dtype == np.int64
    cfg = OmegaConf.create(
        {"student": {"refine_query": "corner"}, "loss": {"w_refine_kd": 0.5}, "trainer": {}, "data": {}}
    )
    with pytest.raises(ConfigError, match=r"refine_query='corner' with loss.w_refine_kd=0.5"):
        check_train_config(cfg)


def test_training_supervises_corner_queries_at_their_own_truth() -> None:
    """A student trained with refine_query=corner: each query's truth is its own pixel warped (a known
    sub-pixel translation, so exactly the query plus the shift), the loss scores the refined points against
    it, and a few steps (the module's own step: refine around the chosen cells, truth, loss) put the points
    closer to the truth than the windows' centres, where a translation by the coarse cells puts them."""
    from functools import partial

    from loftr_kd.lightning_module import DistillationModule
    from loftr_kd.losses import LossConfig
    from loftr_kd.supervision import point_ground_truth

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    height, width = 128, 160
    model = build_student(
        input_height=height, input_width=width, refine="corr", refine_query="corner", border_removal=0
    )
    module = DistillationModule(
        model, None, LossConfig(w_gt=0.1), optimizer=partial(torch.optim.AdamW, lr=5e-3)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    batch = _translation_batch(rng, image, 2, height, width)
    step = module._step(batch)
    queries = model.refinement.queries(batch["image0"])
    points0 = model.refinement(*_fine_maps(model, batch), step.out.candidate_ids, step.grid, queries).points0
    truth, valid = point_ground_truth(batch, points0, 16)
    shift = batch["H_0to1"][:, :2, 2].unsqueeze(1)  # (B, 1, 2) the translation
    torch.testing.assert_close(truth[valid], (points0 + shift)[valid])
    torch.testing.assert_close(step.truth1, truth)
    assert torch.equal(step.truth_valid, valid) and valid.sum() > 20
    assert step.terms.refine is not None and step.terms.refine > 0
    ids = module.criterion.refinement_ids(step.out, step.gt, step.grid)
    refined = model.refine(step.out, ids, batch["image0"])
    with pytest.raises(
        ValueError, match="needs refine_truth"
    ):  # never scored against the cell centres' truth
        module.criterion(step.out, step.gt, step.grid, refine_ids=ids, refined=refined)
    assert torch.equal(step.out.queries0, queries)  # forward carries its queries: refine() reuses them
    again = model.refine(step.out, ids)
    torch.testing.assert_close(again.points1, refined.points1)
    torch.testing.assert_close(again.points0, refined.points0)
    with pytest.raises(ValueError, match="needs image0"):
        model.refine(step.out._replace(queries0=None), ids)
    for _ in range(40):
        terms = module._step(_translation_batch(rng, image, 6, height, width)).terms
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    model.eval()
    batch = _translation_batch(np.random.default_rng(1), image, 8, height, width)
    gt = coarse_ground_truth(batch, 16)
    ids = gt.match_ids.clamp(min=0)
    grid = CoarseGrid.for_image(height, width, 16)
    with torch.no_grad():
        refined = model.refinement(
            *_fine_maps(model, batch), ids, grid, model.refinement.queries(batch["image0"])
        )
    truth, valid = point_ground_truth(batch, refined.points0, 16)
    keep = valid & (gt.match_ids >= 0)
    window_centres = grid.ids_to_pixels(ids) + refined.points0 - grid.centers()
    error_refined = (refined.points1 - truth).norm(dim=-1)[keep].median()
    error_centres = (window_centres - truth).norm(dim=-1)[keep].median()
    assert error_refined < 0.7 * error_centres, (error_refined, error_centres)
