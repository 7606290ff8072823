"""Tests of the ``fast`` student preset: RepVGG backbone, re-parameterisation, export."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from conftest import instantiate_preset
from loftr_kd.models.backbone import build_backbone
from loftr_kd.models.fast_backbone import (
    FastBackbone,
    RepConvBlock,
    reparameterize_for_inference,
    stage_depths,
)
from loftr_kd.models.student import (
    CoarseLoFTRStudent,
    CoarseMatchOutput,
    StudentConfig,
    build_student,
    count_parameters,
    load_student,
    save_student,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "student"
FAST = {
    "backbone": "fast",
    "coarse_stride": 16,
    "initial_dim": 16,
    "block_dims": [16, 32, 32],
    "block_depths": [1, 1, 1],
    "d_model": 32,
    "d_ffn": 32,
    "nhead": 1,
    "layer_names": ["self", "cross"] * 2,
}
# Counted by hand from the layout in FastBackbone's docstring. Training block in -> out:
# 9*in*out (3x3) + in*out (1x1) + 2*out + 2*out (two BNs) [+ 2*in identity BN]; fused: 9*in*out + out.
# Blocks 1->16/2, 16->16/2, 16->16, 16->32/2, 32->32, 32->32/2, 32->32, then the 1x1 outconv (1,024).
FAST_BACKBONE_TRAIN = 224 + 2_624 + 2_656 + 5_248 + 10_432 + 10_368 + 10_432 + 1_024  # 43,008
FAST_BACKBONE_FUSED = 160 + 2_320 + 2_320 + 4_640 + 9_248 + 9_248 + 9_248 + 1_024  # 38,208
TRANSFORMER = 4 * (4 * 32 * 32 + 64 * 64 + 64 * 32 + 2 * 64)  # the paper's d_model-32 transformer, 41,472
FAST_PARAMS_TRAIN = FAST_BACKBONE_TRAIN + TRANSFORMER  # 84,480
FAST_PARAMS_FUSED = FAST_BACKBONE_FUSED + TRANSFORMER  # 79,680


def fast_preset(height: int, width: int) -> CoarseLoFTRStudent:
    """conf/student/fast.yaml instantiated as Hydra does."""
    return instantiate_preset("fast", height, width)


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine terms, so fusion is really exercised; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def shifted_pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image and its copy shifted by one coarse cell: a pair with matches to compare."""
    torch.manual_seed(0)
    image0 = F.avg_pool2d(torch.rand(1, 1, height, width), 5, stride=1, padding=2)  # some structure
    return image0, torch.roll(image0, shifts=(16, 16), dims=(2, 3))


# --- config and shapes ---------------------------------------------------------------------------------


def test_preset_composes_and_has_paper_sizes() -> None:
    model = fast_preset(64, 96)
    cfg = model.config
    assert isinstance(model.backbone, FastBackbone)
    assert (cfg.coarse_stride, cfg.d_model, cfg.nhead, cfg.layer_names) == (16, 32, 1, ("self", "cross") * 2)
    assert model.backbone.stride == 16


def test_parameter_count_reported() -> None:
    model = build_student(input_height=64, input_width=96, **FAST)
    assert count_parameters(model.backbone) == FAST_BACKBONE_TRAIN == 43_008
    assert count_parameters(model) == FAST_PARAMS_TRAIN
    assert count_parameters(reparameterize_for_inference(model)) == FAST_PARAMS_FUSED
    summary = model.summary()
    assert "backbone     fast" in summary and f"{FAST_PARAMS_TRAIN:,}" in summary


@pytest.mark.parametrize("batch", [1, 2])
def test_output_shapes(batch: int) -> None:
    model = fast_preset(64, 96).eval()
    features = model.backbone(torch.rand(batch, 1, 64, 96))
    assert features.shape == (batch, 32, 4, 6)
    out = model(torch.rand(batch, 1, 64, 96), torch.rand(batch, 1, 64, 96))
    assert isinstance(out, CoarseMatchOutput)
    assert out.similarity.shape == out.confidence.shape == (batch, 24, 24)
    assert out.match_ids.shape == out.match_confidence.shape == (batch, 24)
    assert out.match_ids.dtype == torch.int64


def test_stride8_layout() -> None:
    backbone = build_backbone("fast", 8, 8, (16, 32), 32)
    assert backbone(torch.rand(1, 1, 32, 48)).shape == (1, 32, 4, 6)
    assert stage_depths(2) == (1, 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"block_dims": [8, 16, 32, 32]}, "needs 3 block_dims"),
        ({"block_dims": [16, 32, 64]}, "must equal d_model"),
        ({"initial_dim": 0}, "must be positive"),
        ({"block_depths": [1, 3]}, "count >= 0 of stride-1 blocks per stage"),
        ({"block_depths": [1, -1, 3]}, "count >= 0 of stride-1 blocks per stage"),
        (
            {"backbone": "resnet_fpn", "block_dims": [8, 16, 32, 32], "block_depths": [1, 1, 1, 1]},
            "only to the fast",
        ),
    ],
)
def test_bad_config_raises(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StudentConfig(**{**FAST, **changes})


def test_block_depths_set_blocks_per_stage() -> None:
    """``block_depths`` reaches the backbone from the config (and a Hydra override) and sets its depth."""

    def rep_blocks(model: CoarseLoFTRStudent) -> int:
        return sum(isinstance(m, RepConvBlock) for m in model.backbone.modules())

    preset = fast_preset(64, 96)
    assert preset.config.block_depths == (1, 1, 1)
    assert rep_blocks(preset) == 1 + 3 + (1 + 1 + 1)  # stem + one stride-2 conv per stage + stride-1 blocks
    assert rep_blocks(build_student(input_height=64, input_width=96, **FAST)) == rep_blocks(preset)
    default = build_student(input_height=64, input_width=96, **{**FAST, "block_depths": None})
    assert default.config.block_depths is None and rep_blocks(default) == 1 + 3 + sum(stage_depths(3))
    deeper = build_student(
        input_height=64, input_width=96, **{**FAST, "block_depths": OmegaConf.create([0, 2, 4])}
    )
    assert deeper.config.block_depths == (0, 2, 4)
    assert rep_blocks(deeper) == 1 + 3 + 6
    assert deeper(*shifted_pair(64, 96)).similarity.shape == (1, 24, 24)


def test_keep_unused_fpn_rejected() -> None:
    with pytest.raises(ValueError, match="keep_unused_fpn"):
        build_student(**{**FAST, "keep_unused_fpn": True})


# --- training ------------------------------------------------------------------------------------------


def test_gradients_reach_all_trainable_parameters() -> None:
    model = build_student(input_height=64, input_width=96, **FAST).train()
    out = model(*shifted_pair(64, 96))
    (out.similarity.square().mean() + out.confidence.sum()).backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- re-parameterisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_channels", "out_channels", "stride"), [(8, 8, 1), (8, 16, 2), (1, 8, 2)])
def test_rep_block_fuses_exactly(in_channels: int, out_channels: int, stride: int) -> None:
    block = randomise_batchnorm(RepConvBlock(in_channels, out_channels, stride))
    assert (block.bn_identity is not None) == (in_channels == out_channels and stride == 1)
    x = torch.randn(2, in_channels, 7, 9)  # odd sizes: the 1x1 branch must sample the 3x3 centre taps
    fused = block.fuse()
    assert [type(m) for m in fused] == [nn.Conv2d, nn.ReLU]
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), rtol=1e-5, atol=1e-5)


def test_fused_student_equals_unfused() -> None:
    model = randomise_batchnorm(build_student(input_height=128, input_width=160, border_removal=1, **FAST))
    pair = shifted_pair(128, 160)
    with torch.no_grad():
        reference = model(*pair)
        fused = reparameterize_for_inference(model)
        out = fused(*pair)
    assert isinstance(model.backbone.layers[0], RepConvBlock), "the default must leave the model untouched"
    assert fused.backbone.is_reparameterized and not fused.training
    assert not any(isinstance(m, (nn.BatchNorm2d, RepConvBlock)) for m in fused.modules())
    torch.testing.assert_close(out.similarity, reference.similarity, rtol=1e-4, atol=1e-4)
    # logits agree to 1e-4 (fp32 sums in another order); the softmax passes that on to the confidence
    torch.testing.assert_close(out.confidence, reference.confidence, rtol=1e-3, atol=1e-4)
    assert torch.equal(out.match_ids, reference.match_ids)
    assert (reference.match_ids >= 0).any(), "the test pair should produce matches"
    # idempotent
    again = reparameterize_for_inference(fused, inplace=True)
    assert again is fused
    with torch.no_grad():
        torch.testing.assert_close(again(*pair).similarity, out.similarity)


def test_save_load_round_trip_keeps_training_layout(tmp_path: Path) -> None:
    model = randomise_batchnorm(build_student(input_height=64, input_width=96, **FAST))
    pair = shifted_pair(64, 96)
    path = save_student(model, tmp_path / "fast.pt")
    loaded = load_student(path)
    assert isinstance(loaded.backbone, FastBackbone) and not loaded.backbone.is_reparameterized
    with torch.no_grad():
        torch.testing.assert_close(loaded(*pair).similarity, model(*pair).similarity)


# --- export --------------------------------------------------------------------------------------------


class _Outputs(nn.Module):
    """Every tensor output as a tuple (the exporter flattens NamedTuples the same way; None fields drop)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image0: torch.Tensor, image1: torch.Tensor):
        return tuple(self.model(image0, image1))


def test_onnx_export_fused_no_einsum_and_parity(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = randomise_batchnorm(build_student(input_height=128, input_width=160, border_removal=1, **FAST))
    fused = reparameterize_for_inference(model)
    pair = shifted_pair(128, 160)
    path = tmp_path / "fast.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Outputs(fused),
            pair,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image0", "image1"],
            output_names=[f for f in CoarseMatchOutput._fields if getattr(fused(*pair), f) is not None],
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = [node.op_type for node in proto.graph.node]
    assert not set(ops) & {"Einsum", "NonZero", "BatchNormalization"}, sorted(set(ops))
    blocks = 1 + sum(1 + depth for depth in stage_depths(3))
    assert ops.count("Conv") == blocks + 1, "one 3x3 conv per fused block + the 1x1 outconv"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image0": pair[0].numpy(), "image1": pair[1].numpy()})
    with torch.no_grad():
        reference = model(*pair)  # the unfused model: fusion and export checked together
    torch.testing.assert_close(torch.from_numpy(outputs[0]), reference.similarity, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(outputs[1]), reference.confidence, rtol=1e-4, atol=1e-5)
    assert torch.equal(torch.from_numpy(outputs[2]), reference.match_ids)


def test_export_onnx_of_fused_fast_student(tmp_path: Path) -> None:
    """The project's export path takes the fused student like any other."""
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("loftr_kd.export.onnx")
    model = randomise_batchnorm(build_student(input_height=128, input_width=160, border_removal=1, **FAST))
    path = export.export_onnx(reparameterize_for_inference(model), tmp_path / "fast.onnx")
    import onnxruntime as ort

    pair = shifted_pair(128, 160)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    match_ids = session.run(None, {"image0": pair[0].numpy(), "image1": pair[1].numpy()})[0]
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(match_ids).long(), model(*pair).match_ids)


def test_profile_students_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """The documented profiling command runs end to end (tiny size, one repeat)."""
    pytest.importorskip("onnxruntime")
    from loftr_kd.cli import profile_students

    result = profile_students.run(["--sizes", "64x96", "--repeats", "1", "--threads", "1"])
    stages = {(row["preset"], row["stage"]) for row in result["rows"]}
    assert stages == {
        (p, s) for p in ("paper", "fast") for s in ("full", "backbone", "transformer", "matching")
    }
    assert all(model["ops"].get("Einsum", 0) == 0 for model in result["models"].values())
    assert result["models"]["fast@64x96"]["params"] == FAST_PARAMS_FUSED
    assert "| fast | 64x96 | full |" in capsys.readouterr().out
    # every stage's kernels are found in the whole graph (the backbone's scope is dropped by the exporter:
    # its nodes were counted as "other" and the backbone showed 0.00 ms)
    for row in result["kernel_rows"]:
        assert min(row["backbone"], row["transformer"], row["matching"]) > 0, row
        assert row["backbone"] > 0.05 * row["total"], row


def test_profile_students_preset_overrides() -> None:
    from loftr_kd.bench.profiling import load_preset

    model = load_preset("fast+block_depths=[0,1,3]+initial_dim=16", 64, 96, fuse=False)
    assert model.config.block_depths == (0, 1, 3) and model.config.initial_dim == 16
    with pytest.raises(ValueError, match="not key=value"):
        load_preset("fast+initial_dim", 64, 96)
