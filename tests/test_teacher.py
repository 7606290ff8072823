"""Tests of the frozen LoFTR teacher: checkpoint layouts, errors, outputs, freezing, AMP, configs.

No weights are downloaded: every "pretrained" checkpoint is a randomly initialised kornia LoFTR saved
here in the original key layouts.
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from kornia.feature import LoFTR
from kornia.feature.loftr import loftr as kornia_loftr
from omegaconf import OmegaConf
from torch import nn

from loftr_kd.checkpoints import UnsafeCheckpointError
from loftr_kd.teachers import (
    KNOWN_CHECKPOINT_NAMES,
    KORNIA_OUTDOOR_TEMP_BUG_FIX,
    LoFTRTeacher,
    TeacherCheckpointError,
    TeacherCheckpointNotFound,
    TeacherOutput,
    build_teacher,
    find_teacher_checkpoint,
    infer_temp_bug_fix,
    load_teacher,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "teacher"
# Snapshot taken at import, before any LoFTR in this file is built.
PRISTINE_KORNIA_DEFAULT_CFG = copy.deepcopy(kornia_loftr.default_cfg)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def source_loftr() -> LoFTR:
    """Stand-in for pretrained weights: random kornia LoFTR with non-default BatchNorm statistics."""
    torch.manual_seed(0)
    loftr = LoFTR(pretrained=None, config=copy.deepcopy(kornia_loftr.default_cfg)).eval()
    with torch.no_grad():
        for name, buffer in loftr.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("num_batches_tracked"):
                buffer.fill_(1234)
    return loftr


@pytest.fixture(scope="module")
def source_state(source_loftr: LoFTR) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in source_loftr.state_dict().items()}


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 48, 64, generator=generator), torch.rand(2, 1, 48, 64, generator=generator)


@pytest.fixture(scope="module")
def teacher(source_state: dict[str, torch.Tensor]) -> LoFTRTeacher:
    """Teacher holding the source weights, loaded in memory (no file)."""
    teacher = LoFTRTeacher(temp_bug_fix=False)
    teacher.load_loftr_state_dict(source_state)
    return teacher


@pytest.fixture(scope="module")
def reference_output(teacher: LoFTRTeacher, images: tuple[torch.Tensor, torch.Tensor]) -> TeacherOutput:
    return teacher(*images)


@pytest.fixture(scope="module")
def zju3dv_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, source_state: dict[str, torch.Tensor]
) -> Path:
    path = tmp_path_factory.mktemp("weights") / "outdoor_ds.ckpt"
    torch.save({"state_dict": source_state}, path)
    return path


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


# --- checkpoint layouts ------------------------------------------------------------------------------


def _layout(name: str, state: dict[str, torch.Tensor], tmp_path: Path) -> tuple[Path, bool | None]:
    """Write ``state`` in one of the known layouts; return the file and the temp_bug_fix to pass."""
    prefixed = {f"matcher.{k}": v for k, v in state.items()}
    if name == "zju3dv":
        return _save(tmp_path / "outdoor_ds.ckpt", {"state_dict": state}), None
    if name == "lightning":  # LoFTR's own training: extra entries, `matcher.` prefix, free file name
        checkpoint = {
            "epoch": 3,
            "global_step": 10,
            "pytorch-lightning_version": "1.3.5",
            "state_dict": prefixed,
        }
        return _save(tmp_path / "epoch=3-auc@5=0.5.ckpt", checkpoint), False
    if name == "kornia":
        return _save(tmp_path / "loftr_outdoor.ckpt", {"state_dict": state}), None
    if name == "kornia_prefixed":
        return _save(tmp_path / "loftr_outdoor.ckpt", {"state_dict": prefixed}), None
    if name == "bare":  # torch.save(model.state_dict())
        return _save(tmp_path / "outdoor_ds_weights.pt", state), None
    raise AssertionError(name)


@pytest.mark.parametrize("layout", ["zju3dv", "lightning", "kornia", "kornia_prefixed", "bare"])
def test_checkpoint_layouts_load_every_tensor_and_give_identical_outputs(
    layout, tmp_path, source_state, images, reference_output
):
    path, temp_bug_fix = _layout(layout, source_state, tmp_path)
    teacher = load_teacher(path, temp_bug_fix=temp_bug_fix)

    loaded = teacher.matcher.state_dict()
    assert loaded.keys() == source_state.keys()
    for key, value in source_state.items():
        assert torch.equal(loaded[key], value), key
    assert teacher.temp_bug_fix is False
    assert teacher.checkpoint_path == path
    output = teacher(*images)
    assert torch.equal(output.similarity, reference_output.similarity)
    assert torch.equal(output.confidence, reference_output.confidence)


def test_kornia_layout_is_what_kornia_itself_loads(tmp_path, source_state):
    path, _ = _layout("kornia", source_state, tmp_path)
    loftr = LoFTR(pretrained=None, config=copy.deepcopy(kornia_loftr.default_cfg))
    loftr.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


def test_missing_batchnorm_counters_are_tolerated(tmp_path, source_state, images, reference_output):
    state = {k: v for k, v in source_state.items() if not k.endswith("num_batches_tracked")}
    teacher = load_teacher(_save(tmp_path / "outdoor_ds.ckpt", {"state_dict": state}))
    assert torch.equal(teacher(*images).confidence, reference_output.confidence)


def test_confidence_matches_kornias_own_coarse_matching(source_loftr, teacher, images, reference_output):
    """Independent truth: kornia's full forward (FPN backbone, einsum, its softmax) on the same weights."""
    captured = {}

    def keep_conf_matrix(module, args, output):
        captured["conf_matrix"] = args[2]["conf_matrix"]

    handle = source_loftr.coarse_matching.register_forward_hook(keep_conf_matrix)
    try:
        with torch.no_grad():
            source_loftr({"image0": images[0], "image1": images[1]})
    finally:
        handle.remove()
    torch.testing.assert_close(reference_output.confidence, captured["conf_matrix"], rtol=1e-4, atol=1e-6)


# --- outputs -----------------------------------------------------------------------------------------


def test_output_shapes_at_stride_8(teacher):
    output = teacher(torch.rand(2, 1, 64, 96), torch.rand(2, 1, 72, 64))
    assert isinstance(output, TeacherOutput)
    assert output.similarity.shape == output.confidence.shape == (2, 8 * 12, 9 * 8)
    assert output.similarity.dtype == output.confidence.dtype == torch.float32


def test_sides_not_multiple_of_8_drop_the_last_rows_and_columns(teacher):
    image0, image1 = torch.rand(1, 1, 70, 100), torch.rand(1, 1, 67, 63)
    output = teacher(image0, image1)
    assert output.similarity.shape == (1, (70 // 8) * (100 // 8), (67 // 8) * (63 // 8))
    cropped = teacher(image0[..., :64, :96], image1[..., :64, :56])
    assert torch.equal(output.confidence, cropped.confidence)


def test_confidence_is_the_dual_softmax_of_similarity(reference_output):
    """Recompute the dual softmax in float64 from its definition."""
    similarity = reference_output.similarity.double()
    rows = torch.exp(similarity - similarity.amax(dim=2, keepdim=True))
    rows = rows / rows.sum(dim=2, keepdim=True)
    cols = torch.exp(similarity - similarity.amax(dim=1, keepdim=True))
    cols = cols / cols.sum(dim=1, keepdim=True)
    torch.testing.assert_close(reference_output.confidence.double(), rows * cols, rtol=1e-5, atol=1e-9)
    # each factor is a distribution, so every row and column of the product sums to at most 1
    assert (reference_output.confidence.sum(dim=2) <= 1 + 1e-5).all()
    assert (reference_output.confidence.sum(dim=1) <= 1 + 1e-5).all()


@pytest.mark.parametrize(
    ("shape0", "shape1", "match"),
    [
        ((2, 3, 64, 64), (2, 1, 64, 64), "image0 must be a \\(B, 1, H, W\\)"),
        ((2, 1, 64, 64), (1, 64, 64), "image1 must be a \\(B, 1, H, W\\)"),
        ((2, 1, 64, 64), (3, 1, 64, 64), "same batch size"),
        ((1, 1, 4, 64), (1, 1, 64, 64), "smaller than one 8x8"),
    ],
)
def test_bad_images_raise(teacher, shape0, shape1, match):
    with pytest.raises(ValueError, match=match):
        teacher(torch.rand(shape0), torch.rand(shape1))


def test_integer_images_raise(teacher):
    with pytest.raises(ValueError, match="float tensor"):
        teacher(torch.zeros(1, 1, 64, 64, dtype=torch.uint8), torch.rand(1, 1, 64, 64))


# --- frozen, AMP -------------------------------------------------------------------------------------


def test_teacher_is_frozen_and_stays_in_eval_mode(teacher, images):
    assert not any(p.requires_grad for p in teacher.parameters())
    parent = nn.Module()
    parent.teacher = teacher
    parent.head = nn.Linear(2, 2)
    parent.train()  # what Lightning does at the start of every training epoch
    assert parent.head.training
    assert not any(m.training for m in teacher.modules())
    assert teacher.train(True) is teacher and not teacher.training
    assert [p for p in parent.parameters() if p.requires_grad] == list(parent.head.parameters())

    image0 = images[0].clone().requires_grad_(True)
    output = teacher(image0, images[1])
    assert not output.similarity.requires_grad and not output.confidence.requires_grad


def test_loaded_teacher_is_frozen(zju3dv_checkpoint):
    teacher = load_teacher(zju3dv_checkpoint)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_outputs_equal_under_autocast_and_in_fp32(teacher, images, reference_output):
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        output = teacher(*images)
    assert output.similarity.dtype == output.confidence.dtype == torch.float32
    assert torch.equal(output.similarity, reference_output.similarity)
    assert torch.equal(output.confidence, reference_output.confidence)


def test_low_precision_inputs_are_computed_in_float32(teacher, images):
    low = [image.to(torch.bfloat16) for image in images]
    output = teacher(*low)
    assert output.confidence.dtype == torch.float32
    assert torch.equal(output.confidence, teacher(*[image.float() for image in low]).confidence)


def test_half_precision_teacher_weights_raise():
    teacher = LoFTRTeacher().to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="keep it in float32"):
        teacher(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


# --- configuration -----------------------------------------------------------------------------------


def test_teacher_is_loftr_outdoor_ds(teacher):
    config = teacher.config
    assert config["resolution"] == (8, 2) and teacher.stride == 8
    assert config["resnetfpn"] == {"initial_dim": 128, "block_dims": [128, 196, 256]}
    coarse = config["coarse"]
    assert (coarse["d_model"], coarse["nhead"]) == (256, 8)
    assert coarse["layer_names"] == ["self", "cross"] * 4
    assert config["match_coarse"]["match_type"] == "dual_softmax"
    assert teacher.temperature == pytest.approx(0.1)


def test_parameter_counts_match_the_reference():
    teacher = LoFTRTeacher()
    assert teacher.num_parameters(coarse_only=True) == pytest.approx(11.17e6, rel=2e-3)
    assert teacher.num_parameters() == pytest.approx(11.56e6, rel=2e-3)


def test_configs_are_deep_copies():
    first, second = LoFTRTeacher(temp_bug_fix=False), LoFTRTeacher(temp_bug_fix=True)
    assert kornia_loftr.default_cfg == PRISTINE_KORNIA_DEFAULT_CFG
    assert first.config["coarse"] is not second.config["coarse"]
    assert first.config["coarse"] is not kornia_loftr.default_cfg["coarse"]
    assert first.config["coarse"]["temp_bug_fix"] is False
    assert second.config["coarse"]["temp_bug_fix"] is True
    assert first.matcher.pos_encoding.temp_bug_fix is False
    assert second.matcher.pos_encoding.temp_bug_fix is True
    assert not torch.equal(first.matcher.pos_encoding.pe, second.matcher.pos_encoding.pe)
    # the pinned kornia setting is what kornia's pristine default (used for its "outdoor" weights) says
    assert PRISTINE_KORNIA_DEFAULT_CFG["coarse"]["temp_bug_fix"] is KORNIA_OUTDOOR_TEMP_BUG_FIX


def test_loading_checkpoints_leaves_kornia_default_config_unchanged(tmp_path, source_state):
    load_teacher(_save(tmp_path / "indoor_ds_new.ckpt", {"state_dict": source_state}))
    assert kornia_loftr.default_cfg == PRISTINE_KORNIA_DEFAULT_CFG


def test_building_a_student_leaves_kornia_default_config_unchanged():
    student = pytest.importorskip("loftr_kd.models.student")
    student.build_student()
    assert kornia_loftr.default_cfg == PRISTINE_KORNIA_DEFAULT_CFG


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("outdoor_ds.ckpt", False),
        ("Outdoor_DS_copy.ckpt", False),
        ("indoor_ds.ckpt", False),
        ("indoor_ds_new.ckpt", True),
        ("loftr_outdoor.ckpt", False),
        ("loftr_indoor_ds_new.ckpt", True),
    ],
)
def test_temp_bug_fix_from_file_name(name, expected):
    assert infer_temp_bug_fix(Path("/some/dir") / name) is expected


def test_unknown_file_name_needs_explicit_temp_bug_fix(tmp_path, source_state):
    path = _save(tmp_path / "my_loftr.ckpt", {"state_dict": source_state})
    with pytest.raises(ValueError, match="my_loftr.ckpt.*temp_bug_fix"):
        load_teacher(path)
    assert load_teacher(path, temp_bug_fix=True).temp_bug_fix is True


def test_explicit_temp_bug_fix_overrides_the_file_name(zju3dv_checkpoint):
    teacher = load_teacher(zju3dv_checkpoint, temp_bug_fix=True)
    assert teacher.temp_bug_fix is True and teacher.matcher.pos_encoding.temp_bug_fix is True


# --- bad files ---------------------------------------------------------------------------------------


def test_missing_explicit_path_raises_plain_file_not_found(tmp_path, zju3dv_checkpoint):
    missing = tmp_path / "nowhere" / "outdoor_ds.ckpt"
    with pytest.raises(FileNotFoundError, match="nothing is downloaded") as info:
        build_teacher(missing, weights_dir=zju3dv_checkpoint.parent)
    assert not isinstance(info.value, TeacherCheckpointNotFound)
    assert str(missing) in str(info.value)


def test_garbage_file_raises_naming_it(tmp_path):
    path = tmp_path / "outdoor_ds.ckpt"
    path.write_bytes(b"\x00not a checkpoint\xff" * 100)
    with pytest.raises(TeacherCheckpointError, match="not a torch checkpoint") as info:
        load_teacher(path)
    assert str(path) in str(info.value)


def test_checkpoint_without_state_dict_raises(tmp_path):
    path = _save(tmp_path / "outdoor_ds.ckpt", {"epoch": 1, "global_step": 7})
    with pytest.raises(TeacherCheckpointError, match="no LoFTR state_dict.*epoch") as info:
        load_teacher(path)
    assert str(path) in str(info.value)


def test_wrong_keys_are_listed(tmp_path, source_state):
    state = dict(source_state)
    for key in ("backbone.conv1.weight", "loftr_coarse.layers.0.q_proj.weight"):
        del state[key]
    state["student.head.weight"] = torch.zeros(1)
    path = _save(tmp_path / "outdoor_ds.ckpt", {"state_dict": state})
    with pytest.raises(TeacherCheckpointError) as info:
        load_teacher(path)
    message = str(info.value)
    assert str(path) in message
    assert "2 missing" in message and "backbone.conv1.weight" in message
    assert "loftr_coarse.layers.0.q_proj.weight" in message
    assert "1 unexpected" in message and "student.head.weight" in message


def test_optimal_transport_checkpoint_is_explained(tmp_path, source_state):
    state = {**source_state, "coarse_matching.bin_score": torch.tensor(1.0)}
    with pytest.raises(TeacherCheckpointError, match="optimal-transport"):
        load_teacher(_save(tmp_path / "outdoor_ot.ckpt", {"state_dict": state}), temp_bug_fix=False)


def test_wrong_shapes_are_listed(tmp_path, source_state):
    state = {**source_state, "backbone.conv1.weight": torch.zeros(8, 1, 7, 7)}
    with pytest.raises(TeacherCheckpointError, match="backbone.conv1.weight: \\(8, 1, 7, 7\\) in file"):
        load_teacher(_save(tmp_path / "outdoor_ds.ckpt", {"state_dict": state}))


def test_pickled_objects_are_refused_never_unpickled(tmp_path, source_state):
    path = _save(
        tmp_path / "outdoor_ds.ckpt", {"state_dict": source_state, "saved": datetime.date(2021, 4, 1)}
    )
    with pytest.raises(UnsafeCheckpointError, match="datetime.date.*could run code") as info:
        load_teacher(path)
    assert str(path) in str(info.value)
    assert "weights_only=False" not in str(info.value)


# --- finding and building ----------------------------------------------------------------------------


def test_find_teacher_checkpoint(tmp_path):
    assert find_teacher_checkpoint(None) is None
    assert find_teacher_checkpoint(tmp_path / "absent") is None
    assert find_teacher_checkpoint(tmp_path) is None
    (tmp_path / "loftr_outdoor.ckpt").touch()
    assert find_teacher_checkpoint(tmp_path) == tmp_path / "loftr_outdoor.ckpt"
    (tmp_path / "outdoor_ds.ckpt").touch()
    assert find_teacher_checkpoint(str(tmp_path)) == tmp_path / KNOWN_CHECKPOINT_NAMES[0]


def test_auto_without_checkpoint_raises_not_found(tmp_path):
    with pytest.raises(TeacherCheckpointNotFound, match="outdoor_ds.ckpt.*nothing is downloaded") as info:
        build_teacher("auto", weights_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path.resolve()) in str(info.value)
    with pytest.raises(TeacherCheckpointNotFound, match="no weights_dir"):
        build_teacher("auto")


def test_auto_finds_the_checkpoint(zju3dv_checkpoint, source_state):
    teacher = build_teacher("auto", weights_dir=zju3dv_checkpoint.parent)
    assert torch.equal(teacher.matcher.backbone.conv1.weight, source_state["backbone.conv1.weight"])


def test_hydra_config_instantiates_the_teacher(tmp_path, zju3dv_checkpoint):
    teacher_cfg = OmegaConf.load(CONF_DIR / "loftr_outdoor.yaml")
    assert teacher_cfg.weights == "auto" and teacher_cfg.temp_bug_fix is None

    cfg = OmegaConf.create({"paths": {"weights_dir": str(zju3dv_checkpoint.parent)}, "teacher": teacher_cfg})
    assert isinstance(instantiate(cfg.teacher), LoFTRTeacher)

    # Hydra wraps errors of the target; the training code tells "no default teacher" by the cause.
    cfg.paths.weights_dir = str(tmp_path)
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.teacher)
    assert isinstance(info.value.__cause__, TeacherCheckpointNotFound)


def test_none_config_means_no_teacher():
    text = (CONF_DIR / "none.yaml").read_text()
    assert text.startswith("# @package _global_")
    cfg = OmegaConf.load(CONF_DIR / "none.yaml")
    assert OmegaConf.to_container(cfg) == {"teacher": None}
    assert instantiate(cfg.teacher) is None


def test_a_config_saved_before_the_teachers_package_still_builds_its_teacher():
    """Runs saved before ``loftr_kd.teachers`` name ``loftr_kd.models.teacher.<builder>`` (``make rerun``)."""
    from loftr_kd.paths import WEIGHTS_DIR
    from loftr_kd.teachers import StudentTeacher
    from loftr_kd.train import teacher_from_config

    cfg = OmegaConf.create(
        {
            "teacher": {
                "_target_": "loftr_kd.models.teacher.build_student_teacher",
                "weights": str(WEIGHTS_DIR / "student_paper_refine.pt"),
                "input_height": 240,
                "input_width": 320,
            }
        }
    )
    assert isinstance(teacher_from_config(cfg), StudentTeacher)
