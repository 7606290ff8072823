"""Tests of the coarse LoFTR student: sizes, semantics, checkpoints, export."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pytest
import torch

from conftest import instantiate_preset
from loftr_kd.models.matching import (
    CoarseMatching,
    border_mask,
    dual_softmax,
    mutual_nearest_matches,
    similarity_matrix,
)
from loftr_kd.models.position_encoding import sine_position_encoding
from loftr_kd.models.student import (
    CoarseLoFTRStudent,
    CoarseMatchOutput,
    StudentConfig,
    build_student,
    count_parameters,
    load_student,
    save_student,
)
from loftr_kd.models.transformer import linear_attention

CONF = Path(__file__).resolve().parents[1] / "conf" / "student"
PAPER = {
    "coarse_stride": 16,
    "initial_dim": 8,
    "block_dims": [8, 16, 32, 32],
    "d_model": 32,
    "d_ffn": 32,
    "nhead": 1,
    "layer_names": ["self", "cross"] * 2,
    "temperature": 0.1,
    "border_removal": 2,
    "pe_temp_bug_fix": False,
    "keep_unused_fpn": True,
}
STRIDE8 = {
    "coarse_stride": 8,
    "initial_dim": 16,
    "block_dims": [16, 32, 64],
    "d_model": 64,
    "d_ffn": 64,
    "nhead": 4,
    "layer_names": ["self", "cross"],
}


def preset(name: str, height: int, width: int):
    """Instantiate a conf/student preset the way Hydra does (defaults lists, interpolation)."""
    return instantiate_preset(name, height, width)


def images(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(batch, 1, height, width), torch.rand(batch, 1, height, width)


# --- sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "grid"), [(PAPER, (4, 6)), (STRIDE8, (8, 12))], ids=["stride16", "stride8"]
)
def test_output_shapes(kwargs: dict, grid: tuple[int, int]) -> None:
    model = build_student(input_height=64, input_width=96, **kwargs)
    out = model(*images(2, 64, 96))
    cells = grid[0] * grid[1]
    assert isinstance(out, CoarseMatchOutput)
    assert out.similarity.shape == out.confidence.shape == (2, cells, cells)
    assert out.match_ids.shape == out.match_confidence.shape == (2, cells)
    assert out.match_ids.dtype == torch.int64
    assert out.match_confidence.dtype == torch.float32
    assert bool(((out.match_ids >= -1) & (out.match_ids < cells)).all())


def test_images_of_different_sizes() -> None:
    model = build_student(input_height=64, input_width=96, **STRIDE8).eval()
    out = model(torch.rand(1, 1, 64, 96), torch.rand(1, 1, 48, 64))
    assert out.similarity.shape == (1, 8 * 12, 6 * 8)
    assert out.match_ids.shape == (1, 8 * 12)


def test_paper_preset_parameter_count() -> None:
    model = preset("paper", 480, 640)
    cfg = model.config
    assert (cfg.coarse_stride, cfg.initial_dim, cfg.block_dims) == (16, 8, (8, 16, 32, 32))
    assert (cfg.d_model, cfg.d_ffn, cfg.nhead, cfg.temperature, cfg.border_removal) == (32, 32, 1, 0.1, 2)
    assert cfg.layer_names == ("self", "cross", "self", "cross")
    assert count_parameters(model) == 158_840  # Coarse_LoFTR_TRT's published student
    # 33,920 of those are the published model's fine-only FPN layers: frozen, never run.
    assert count_parameters(model, trainable_only=True) == 124_920
    assert "158,840" in model.summary()
    lean = build_student(**{**PAPER, "keep_unused_fpn": False})
    assert count_parameters(lean) == 124_920


def test_stride8_preset_instantiates() -> None:
    model = preset("stride8", 64, 96)
    assert model.config.coarse_stride == 8 and model.config.input_width == 96
    assert model(*images(1, 64, 96)).similarity.shape == (1, 96, 96)


def test_unused_fpn_layers_do_not_change_outputs() -> None:
    full = build_student(input_height=64, input_width=96, **PAPER).eval()
    lean = build_student(input_height=64, input_width=96, **{**PAPER, "keep_unused_fpn": False}).eval()
    missing, unexpected = lean.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all("_outconv" in key for key in unexpected)
    x0, x1 = images(1, 64, 96)
    torch.testing.assert_close(full(x0, x1).similarity, lean(x0, x1).similarity, rtol=0, atol=0)


def test_gradients_reach_every_trainable_parameter() -> None:
    model = build_student(input_height=64, input_width=96, **PAPER).train()
    out = model(*images(2, 64, 96))
    (out.similarity * torch.randn_like(out.similarity)).sum().backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 0
    no_grad = [name for name, p in trainable if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not no_grad, f"no gradient reaches {no_grad}"
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_buffers_are_not_persistent() -> None:
    model = build_student(input_height=64, input_width=96, **PAPER)
    keys = set(model.state_dict())
    assert not any(key.startswith(("pos_encoding.", "coarse_matching.")) for key in keys)
    assert "backbone.layer4_outconv.weight" in keys  # LoFTR module names
    assert "loftr_coarse.layers.3.mlp.2.weight" in keys


# --- building blocks against independent formulas ---------------------------------------------------


@pytest.mark.parametrize("temp_bug_fix", [True, False])
def test_position_encoding_values(temp_bug_fix: bool) -> None:
    d_model, h, w = 8, 3, 5
    pe = sine_position_encoding(d_model, h, w, temp_bug_fix)[0]  # (C, h, w)
    # LoFTR: frequencies exp(-2k log(1e4) / (d/2)), or exp(-2k) with the original bug (LoFTR #41)
    freqs = [1.0, math.exp(-2 * math.log(1e4) / 4) if temp_bug_fix else math.exp(-2)]
    for k, f in enumerate(freqs):
        for y in range(h):
            for x in range(w):
                expected = [
                    math.sin((x + 1) * f),
                    math.cos((x + 1) * f),
                    math.sin((y + 1) * f),
                    math.cos((y + 1) * f),
                ]
                got = pe[4 * k : 4 * k + 4, y, x].tolist()
                assert got == pytest.approx(expected, abs=1e-6)


def test_linear_attention_matches_reference_formula() -> None:
    q, k, v = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    phi_q, phi_k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    # "Transformers are RNNs": out_l = sum_s (phi_q_l . phi_k_s) v_s / sum_s (phi_q_l . phi_k_s)
    weights = torch.einsum("bhld,bhsd->bhls", phi_q, phi_k)
    expected = torch.einsum("bhls,bhsd->bhld", weights, v) / weights.sum(-1, keepdim=True)
    torch.testing.assert_close(linear_attention(q, k, v), expected, rtol=1e-4, atol=1e-5)


def test_linear_attention_stays_in_float16_range() -> None:
    """At 1024x1024 (4096 cells, the TensorRT profile's maximum) with keys of trained magnitude the sums over
    the source cells pass float16's 65504; an fp16 engine computing them returned no matches at 640x480."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 4096, 32, generator=generator)
    k = torch.randn(1, 8, 4096, 32, generator=generator) + 20  # elu + 1 of about 21: a sum of about 86 000
    v = torch.randn(1, 8, 4096, 32, generator=generator)
    assert ((torch.nn.functional.elu(k) + 1).sum(2) > torch.finfo(torch.float16).max).all()
    expected = linear_attention(q.double(), k.double(), v.double())
    half = linear_attention(q.half(), k.half(), v.half())
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.double(), expected, rtol=0.02, atol=0.02)


def test_similarity_is_dot_product_over_c_over_temperature() -> None:
    f0, f1 = torch.randn(2, 5, 8), torch.randn(2, 6, 8)
    expected = torch.stack([f0[b] @ f1[b].T for b in range(2)]) / 8 / 0.1
    torch.testing.assert_close(similarity_matrix(f0, f1, 0.1), expected)
    conf = dual_softmax(expected)
    torch.testing.assert_close(conf, expected.softmax(1) * expected.softmax(2))


def test_border_mask() -> None:
    assert border_mask(4, 5, 1).nonzero().flatten().tolist() == [6, 7, 8, 11, 12, 13]
    assert border_mask(4, 5, 0).all()
    assert not border_mask(4, 5, 2).any()


def test_mutual_nearest_matching_semantics() -> None:
    # 4x5 grid (L = 20) in both images, border 1: interior cells 6, 7, 8, 11, 12, 13.
    perm = [19 - i for i in range(20)]  # (r, c) -> (3 - r, 4 - c): interior <-> interior
    perm[0], perm[6] = perm[6], perm[0]  # border 0 -> interior 13, interior 6 -> border 19
    sim = torch.zeros(20, 20)
    for i, j in enumerate(perm):
        sim[i, j] = 8.0
    sim[12, perm[12]] = 1.0  # mutual best, but dual-softmax confidence ~0.016 < 0.2
    sim[13, perm[11]] = 9.0  # 13 now prefers 11's partner and wins it: 11 is no longer mutual
    expected = [-1] * 20
    expected[7], expected[8], expected[13] = (
        perm[7],
        perm[8],
        perm[11],
    )  # 6: image-1 border; 12, 11: see above
    valid = border_mask(4, 5, 1)

    conf = dual_softmax(sim[None])  # (1, 20, 20)
    ids, mconf = mutual_nearest_matches(conf, 0.2, valid, valid)
    assert ids[0].tolist() == expected
    matched = ids[0] >= 0
    torch.testing.assert_close(mconf[0][matched], conf[0, matched.nonzero().flatten(), ids[0][matched]])
    assert bool((mconf[0][~matched] == 0).all())
    assert bool((mconf[0][matched] > 0.2).all())

    # the threshold alone removed cell 12; without borders every mutual cell matches
    ids_low, _ = mutual_nearest_matches(conf, 0.01, valid, valid)
    assert ids_low[0, 12].item() == perm[12]
    everywhere = torch.ones(20, dtype=torch.bool)
    ids_all, _ = mutual_nearest_matches(conf, 0.2, everywhere, everywhere)
    expected_all = list(perm)
    expected_all[11], expected_all[12], expected_all[13] = -1, -1, perm[11]
    assert ids_all[0].tolist() == expected_all


def test_coarse_matching_module_uses_its_border() -> None:
    matching = CoarseMatching(4, 5, temperature=0.1, threshold=0.2, border_removal=1)
    feat = torch.nn.functional.one_hot(torch.arange(20), 20).float()[None] * 4.0  # (1, 20, 20) orthogonal
    out = matching(feat, feat)  # identity: cell i <-> cell i
    assert out.match_ids[0].tolist() == [i if i in (6, 7, 8, 11, 12, 13) else -1 for i in range(20)]


# --- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_height": 100}, "multiple of coarse_stride"),
        ({"coarse_stride": 4}, "coarse_stride must be one of"),
        ({"nhead": 3}, "divisible by nhead"),
        ({"block_dims": (8, 16, 32, 64)}, "must equal d_model"),
        ({"block_dims": (8, 16, 32)}, "needs 4 block_dims"),
        ({"initial_dim": 4}, "must equal initial_dim"),
        ({"layer_names": ("self", "mutual")}, "'self'/'cross'"),
        ({"temperature": 0.0}, "temperature"),
        ({"match_threshold": 1.5}, "match_threshold"),
        ({"border_removal": -1}, "border_removal"),
        ({"backbone": "vgg"}, "unknown backbone"),
    ],
)
def test_invalid_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StudentConfig(**change)


def test_build_student_rejects_unknown_keys_and_converts_lists() -> None:
    with pytest.raises(ValueError, match="unknown StudentConfig field"):
        build_student(d_modle=32)
    model = build_student(input_height=64, input_width=96, block_dims=[8, 16, 32, 32])
    assert model.config.block_dims == (8, 16, 32, 32)
    hash(model.config)  # frozen and hashable


def test_forward_rejects_bad_images() -> None:
    model = build_student(input_height=64, input_width=96)
    with pytest.raises(ValueError, match="grayscale"):
        model(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96))
    with pytest.raises(ValueError, match="divisible by coarse_stride"):
        model(torch.rand(1, 1, 60, 96), torch.rand(1, 1, 60, 96))


# --- checkpoints ------------------------------------------------------------------------------------


def _trained_like(model: CoarseLoFTRStudent) -> CoarseLoFTRStudent:
    """Run BN in train mode once so running statistics differ from their initial values."""
    model.train()
    with torch.no_grad():
        model(*images(2, model.config.input_height, model.config.input_width))
    return model.eval()


def test_save_load_round_trip_both_formats(tmp_path: Path) -> None:
    model = _trained_like(build_student(input_height=64, input_width=96, **PAPER))
    x0, x1 = images(1, 64, 96)
    with torch.no_grad():
        reference = model(x0, x1)

    plain = save_student(model, tmp_path / "sub" / "student.pt")
    assert plain.is_file() and not list(plain.parent.glob("*.tmp"))
    lightning = tmp_path / "last.ckpt"
    state = {f"student.{k}": v for k, v in model.state_dict().items()}
    state["teacher.backbone.conv1.weight"] = torch.zeros(3)
    torch.save(
        {
            "epoch": 3,
            "pytorch-lightning_version": "2.5.0",
            "student_config": dataclasses.asdict(model.config),
            "state_dict": state,
        },
        lightning,
    )

    for path in (plain, lightning):
        loaded = load_student(path)
        assert loaded.config == model.config and not loaded.training
        with torch.no_grad():
            out = loaded(x0, x1)
        for a, b in zip(out, reference):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_at_another_input_size(tmp_path: Path) -> None:
    model = _trained_like(build_student(input_height=64, input_width=96, **STRIDE8))
    path = save_student(model, tmp_path / "student.pt")
    loaded = load_student(path, input_height=128, input_width=160)
    assert loaded.config.grid == (16, 20)
    assert loaded.pos_encoding.pe.shape == (1, 64, 256, 256)  # the maximum grid, sliced per input
    x0, x1 = images(1, 128, 160)
    with torch.no_grad():  # same weights; the original computes the bigger encoding on the fly
        torch.testing.assert_close(loaded(x0, x1).similarity, model(x0, x1).similarity)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_student(tmp_path / "nope.pt")
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(KeyError, match="bare.pt.*student_config"):
        load_student(bare)
    model = build_student(input_height=64, input_width=96)
    state = model.state_dict()
    state.pop("backbone.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save({"student_config": dataclasses.asdict(model.config), "state_dict": state}, bad)
    with pytest.raises(
        RuntimeError, match=r"(?s)bad\.pt.*missing.*backbone\.conv1\.weight.*unexpected.*extra\.weight"
    ):
        load_student(bad)


# --- export -----------------------------------------------------------------------------------------


def _export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy exporter deprecation, tracer notes on static shape checks
        torch.onnx.export(
            model,
            inputs,
            str(path),
            dynamo=dynamo,
            opset_version=17 if not dynamo else 18,
            input_names=["image0", "image1"],
            output_names=_tensor_fields(model, inputs),
        )


def _tensor_fields(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Names of the output fields that hold tensors (None fields are not exported)."""
    with torch.no_grad():
        out = model(*inputs)
    return [name for name in CoarseMatchOutput._fields if getattr(out, name) is not None]


def _check_onnx(path: Path, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], opset: int) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"Einsum", "NonZero"}, ops
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == opset
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image0": inputs[0].numpy(), "image1": inputs[1].numpy()})
    with torch.no_grad():
        reference = model(*inputs)
    assert [o.shape for o in outputs] == [tuple(r.shape) for r in reference if r is not None]
    torch.testing.assert_close(torch.from_numpy(outputs[0]), reference.similarity, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(outputs[1]), reference.confidence, rtol=1e-4, atol=1e-5)
    assert torch.equal(torch.from_numpy(outputs[2]), reference.match_ids)
    torch.testing.assert_close(torch.from_numpy(outputs[3]), reference.match_confidence, rtol=1e-4, atol=1e-5)


def _export_model() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    model = _trained_like(build_student(input_height=128, input_width=160, **{**PAPER, "border_removal": 1}))
    x0 = torch.rand(1, 1, 128, 160)
    x1 = torch.roll(x0, shifts=(16, 16), dims=(2, 3))  # shifted copy: some matches to compare
    return model, (x0, x1)


def test_onnx_export_opset17_matches_pytorch(tmp_path: Path) -> None:
    # torch 2.13: the legacy (TorchScript) exporter writes opset 17 directly; the dynamo exporter
    # writes opset 18 and onnx's version converter fails to take it down to 17 (see the slow test).
    model, inputs = _export_model()
    path = tmp_path / "student.onnx"
    _export(model, inputs, path, dynamo=False)
    _check_onnx(path, model, inputs, opset=17)


@pytest.mark.slow
def test_onnx_dynamo_export_matches_pytorch(tmp_path: Path) -> None:
    model, inputs = _export_model()
    path = tmp_path / "student_dynamo.onnx"
    _export(model, inputs, path, dynamo=True)
    _check_onnx(path, model, inputs, opset=18)
