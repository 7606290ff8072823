"""Tests of the weight averaging of student checkpoints (``loftr_kd.averaging``, ``loftr-kd-average``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import instantiate_preset
from loftr_kd.averaging import average_students
from loftr_kd.cli.average import main as average_cli
from loftr_kd.models.student import load_student, save_student


def _students(tmp_path: Path, count: int, preset: str = "paper_refine") -> list[Path]:
    """``count`` differently initialised students of one preset, saved; BatchNorm statistics left equal."""
    paths = []
    for i in range(count):
        torch.manual_seed(i)
        student = instantiate_preset(preset, 128, 160)
        paths.append(save_student(student, tmp_path / f"s{i}.pt"))
    return paths


def test_average_is_the_elementwise_mean(tmp_path: Path) -> None:
    paths = _students(tmp_path, 3)
    states = [torch.load(p, weights_only=True)["state_dict"] for p in paths]
    student, report = average_students(paths)
    averaged = student.state_dict()
    assert report.count == 3
    assert report.max_batchnorm_spread == 0.0  # fresh students: running mean 0, var 1 everywhere
    assert report.max_parameter_change > 0
    float_keys = [k for k, v in states[0].items() if v.is_floating_point()]
    assert float_keys
    for key in float_keys:
        expected = (states[0][key] + states[1][key] + states[2][key]) / 3
        torch.testing.assert_close(averaged[key], expected, rtol=1e-6, atol=1e-6)
    # the result runs and keeps the first file's runtime settings
    assert student.config == load_student(paths[0]).config
    out = student(torch.rand(1, 1, 128, 160), torch.rand(1, 1, 128, 160))
    assert torch.isfinite(out.confidence).all()


def test_identical_checkpoints_average_to_themselves(tmp_path: Path) -> None:
    path = _students(tmp_path, 1)[0]
    student, report = average_students([path, path])
    assert report.max_parameter_change == 0.0
    for key, value in load_student(path).state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key


def test_differing_batchnorm_statistics_are_reported(tmp_path: Path) -> None:
    paths = _students(tmp_path, 2)
    payload = torch.load(paths[1], weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("running_mean"))
    payload["state_dict"][key] = payload["state_dict"][key] + 0.5
    torch.save(payload, paths[1])
    student, report = average_students(paths)
    assert report.max_batchnorm_spread == pytest.approx(0.5)
    torch.testing.assert_close(student.state_dict()[key], torch.full_like(payload["state_dict"][key], 0.25))


def test_refuses_other_architectures_and_single_files(tmp_path: Path) -> None:
    refine = _students(tmp_path, 1)[0]
    coarse = save_student(instantiate_preset("paper", 128, 160), tmp_path / "coarse.pt")
    with pytest.raises(ValueError, match=r"coarse\.pt is not the same student as .*s0\.pt.*refine"):
        average_students([refine, coarse])
    with pytest.raises(ValueError, match="at least two"):
        average_students([refine])


def test_cli_writes_a_loadable_average(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _students(tmp_path, 2)
    out = tmp_path / "soup" / "mean.pt"
    assert average_cli([str(p) for p in paths] + ["--out", str(out)]) == 0
    assert "mean of 2 checkpoints" in capsys.readouterr().out
    expected, _ = average_students(paths)
    for key, value in load_student(out).state_dict().items():
        assert torch.equal(value, expected.state_dict()[key]), key


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _students(tmp_path, 2)
    assert average_cli([str(paths[0]), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert average_cli([str(p) for p in paths] + ["--out", str(paths[0])]) == 2
    assert "refusing to write over" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_inference_settings_may_differ_and_the_first_ones_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """border_removal / refine_points are what load_student and a recipe's ship step change on the same
    weights: checkpoints differing only there average like any other, the result carries the first's."""
    first, second = _students(tmp_path, 2)
    shipped = save_student(
        load_student(second, border_removal=1, refine_query="corner", refine_points=2),
        tmp_path / "shipped.pt",
    )
    stored = load_student(first).config
    assert (stored.border_removal, stored.refine_query, stored.refine_points) == (2, "centre", 1)
    student, report = average_students([first, shipped])
    assert student.config == stored
    assert report.differing_settings == {
        "refine_query": ("centre", "corner"),
        "refine_points": (1, 2),
        "border_removal": (2, 1),
    }
    plain, _ = average_students([first, second])  # the same weights: the same average
    for key, value in plain.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key
    out = tmp_path / "soup.pt"
    assert average_cli([str(first), str(shipped), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "border_removal 2 (the others: 1)" in printed and "refine_points 1 (the others: 2)" in printed
    assert load_student(out).config == stored


def test_num_batches_tracked_is_the_largest_count_not_a_truncated_mean(tmp_path: Path) -> None:
    paths = _students(tmp_path, 3)
    key = None
    for path, count in zip(paths, (8, 8, 4)):
        payload = torch.load(path, weights_only=True)
        key = next(k for k in payload["state_dict"] if k.endswith("num_batches_tracked"))
        for name in payload["state_dict"]:
            if name.endswith("num_batches_tracked"):
                payload["state_dict"][name] = torch.tensor(count)
        torch.save(payload, path)
    student, _ = average_students(paths)
    counts = {k: int(v) for k, v in student.state_dict().items() if k.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {8}, counts  # the truncated running mean gave 6
    assert student.state_dict()[key].dtype == torch.long
