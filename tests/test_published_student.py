"""The published Coarse_LoFTR_TRT checkpoint layout: recognised by its keys, loaded strictly, converted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loftr_kd.cli.convert import main as convert
from loftr_kd.matcher import Matcher
from loftr_kd.models.student import build_student, count_parameters, load_student

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "published_student" / "LoFTR_teacher.pt"
PAPER = dict(pe_temp_bug_fix=False, keep_unused_fpn=True)


def _published_layout(path: Path) -> torch.nn.Module:
    """A checkpoint written exactly as Coarse_LoFTR_TRT's training does (torch.save of four entries)."""
    torch.manual_seed(0)
    model = build_student(**PAPER)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save(
        {
            "epoch": 34,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scaler_state_dict": {"scale": 256.0},
        },
        path,
    )
    return model


def test_published_layout_loads_strictly_into_the_paper_preset(tmp_path: Path) -> None:
    reference = _published_layout(tmp_path / "LoFTR_teacher.pt").eval()
    model = load_student(tmp_path / "LoFTR_teacher.pt")
    assert count_parameters(model) == 158_840 and len(model.state_dict()) == 177
    assert not model.config.pe_temp_bug_fix and model.config.keep_unused_fpn
    x0, x1 = torch.rand(1, 1, 480, 640), torch.rand(1, 1, 480, 640)
    with torch.no_grad():
        assert torch.equal(model(x0, x1).confidence, reference(x0, x1).confidence)


def test_published_layout_with_foreign_keys_is_a_clear_error(tmp_path: Path) -> None:
    state = build_student(**PAPER).state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save({"epoch": 1, "model_state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match=r"(?s)bad\.pt.*unexpected.*extra\.weight"):
        load_student(tmp_path / "bad.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(KeyError, match="Coarse_LoFTR_TRT"):
        load_student(tmp_path / "other.pt")


def test_convert_writes_the_projects_format_and_the_matcher_takes_both(tmp_path: Path, capsys) -> None:
    _published_layout(tmp_path / "pub.pt")
    assert convert([str(tmp_path / "pub.pt"), str(tmp_path / "student.pt")]) == 0
    saved = torch.load(tmp_path / "student.pt", weights_only=True)
    assert (
        set(saved) == {"student_config", "state_dict"} and saved["student_config"]["pe_temp_bug_fix"] is False
    )
    assert "158,840 parameters" in capsys.readouterr().out
    assert convert([str(tmp_path / "pub.pt"), str(tmp_path / "pub.pt")]) == 2
    assert convert([str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert Matcher(tmp_path / "pub.pt", backend="torch").stride == 16


@pytest.mark.skipif(not PUBLISHED.is_file(), reason=f"the published weights are not at {PUBLISHED}")
def test_the_real_published_file_loads() -> None:
    model = load_student(PUBLISHED)
    assert count_parameters(model) == 158_840
    x = torch.rand(1, 1, 480, 640)
    with torch.no_grad():
        out = model(x, torch.roll(x, 16, dims=3))
    assert torch.isfinite(out.confidence).all()
