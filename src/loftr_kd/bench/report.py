"""The benchmark's outputs: machine description, speed-ups, the Markdown table with the issue's speed
targets, the bar chart, and the files (``bench.json``, ``bench.md``, ``bench.png``, ``latest.*``)."""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, logical cores, threads used, GPU and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    import cv2
    import onnxruntime
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__}
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except Exception:
        versions["tensorrt"] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_teacher``: teacher median / row median at the same size (the first teacher row)."""
    for row in rows:
        ref = next(
            (
                r
                for r in rows
                if r["kind"] == "teacher"
                and r.get("median_ms")
                and (r["height"], r["width"]) == (row["height"], row["width"])
            ),
            None,
        )
        row["speedup_vs_teacher"] = (
            ref["median_ms"] / row["median_ms"] if ref and row.get("median_ms") else None
        )
        row["teacher_reference"] = ref["model"] if ref else None


def number(v, digits=1) -> str:
    """A table cell: ``–`` for no value, floats with thousands separators."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown_table(result: dict[str, Any]) -> str:
    """The benchmark as Markdown: machine line, table, target checks."""
    m = result["machine"]
    lines = [
        f"# Benchmark {result['timestamp']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, {m['threads']} threads, GPU: {m['gpu'] or 'none'}; "
        f"torch {m['versions']['torch']}, onnxruntime {m['versions']['onnxruntime']}, "
        f"OpenCV {m['versions']['opencv']}, TensorRT {m['versions']['tensorrt'] or 'not installed'}; "
        f"load average (1 min) {number((m.get('load_average_start') or [None])[0], 2)} at start, "
        f"{number((m.get('load_average') or [None])[0], 2)} at end (> cores: timings inflated by other work).",
        f"Batch 1, {result['settings']['pairs']} real image pairs (scikit-image photos, known homography); "
        f"warm-up excluded; peak memory = resident-set increase while the model is built and run.",
        "",
        "| model | backend | size | median ms | p90 ms | pairs/s | peak MB | × teacher | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        notes = r.get("error") and f"skipped: {r['error']}" or r.get("notes", "")
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['width']}×{r['height']} | {number(r.get('median_ms'))} | "
            f"{number(r.get('p90_ms'))} | {number(r.get('pairs_per_s'))} | {number(r.get('peak_mem_mb'))} | "
            f"{number(r.get('speedup_vs_teacher'), 0 if (r.get('speedup_vs_teacher') or 0) >= 10 else 2)} | {notes} |"
        )
    matcher = [r for r in result["rows"] if r["kind"] == "matcher" and r.get("vs_pair") is not None]
    if matcher:
        lines += [
            "",
            "Matcher rows (whole API calls, interleaved round by round on the same pairs; time over the same "
            "round's full pair: median, p10–p90 of the rounds):",
            "",
            "| row | size | median ms | × full pair | p10–p90 |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for r in matcher:
            lines.append(
                f"| {r['backend']} | {r['width']}×{r['height']} | {number(r['median_ms'])} | {r['vs_pair']:.2f} | "
                f"{r['vs_pair_p10']:.2f}–{r['vs_pair_p90']:.2f} |"
            )
    checks = target_checks(result["rows"])
    if checks:
        lines += ["", "Targets (issues 5 and 24):", ""] + [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


def target_checks(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's speed targets, evaluated on this run's rows (informative; not a test)."""
    out = []

    def find(model, backend, h=480, w=640):
        return next(
            (
                r
                for r in rows
                if r["model"] == model and r["backend"] == backend and (r["height"], r["width"]) == (h, w)
            ),
            None,
        )

    for model, target in (("paper", 19.0), ("fast", 40.0)):
        r = find(model, "onnxruntime")
        if r and r.get("pairs_per_s"):
            ok = "met" if r["pairs_per_s"] >= target else "NOT met"
            out.append(
                f"{model} onnxruntime 640×480: {r['pairs_per_s']:.1f} pairs/s (target ≥ {target:g}): {ok}"
            )
    for refined, base in (("fast_refine", "fast"), ("paper_refine", "paper")):
        r, b = find(refined, "onnxruntime"), find(base, "onnxruntime")
        if r and b and r.get("pairs_per_s") and b.get("pairs_per_s"):
            overhead = b["pairs_per_s"] / r["pairs_per_s"] - 1
            ok = (
                "met"
                if overhead <= 0.25 and (refined != "fast_refine" or r["pairs_per_s"] >= 40)
                else "NOT met"
            )
            out.append(
                f"{refined} onnxruntime 640×480: {r['pairs_per_s']:.1f} pairs/s, {100 * overhead:+.0f} % time over "
                f"{base} (target ≤ +25 %{', ≥ 40 pairs/s' if refined == 'fast_refine' else ''}): {ok}"
            )
    for r in rows:
        target = {"cached": 0.6, "guided": 2.0}.get(r.get("row"))
        if r["kind"] == "matcher" and target is not None and r.get("vs_pair") is not None:
            ok = "met" if r["vs_pair"] <= target else "NOT met"
            out.append(
                f"{r['backend']} {r['width']}×{r['height']}: {r['vs_pair']:.2f}× the full pair "
                f"(p10–p90 {r['vs_pair_p10']:.2f}–{r['vs_pair_p90']:.2f}; target ≤ {target:g}×): {ok}"
            )
    for r in rows:
        if r["kind"] == "student" and r.get("speedup_vs_teacher") is not None and r["backend"] != "torch":
            ok = "met" if r["speedup_vs_teacher"] >= 100 else "NOT met"
            out.append(
                f"{r['model']} {r['backend']} {r['width']}×{r['height']}: {r['speedup_vs_teacher']:.0f}× teacher "
                f"(target ≥ 100×): {ok}"
            )
    return out


def bar_chart(result: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of pairs/s (log scale), one panel per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(r["height"], r["width"]) for r in result["rows"]}, reverse=True)
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(6.5 * len(sizes), 0.45 * len(result["rows"]) / len(sizes) + 2)
    )
    axes = np.atleast_1d(axes)
    colours = {"teacher": "tab:red", "student": "tab:blue", "classical": "tab:gray", "reference": "tab:green"}
    for ax, (h, w) in zip(axes, sizes):
        rows = [r for r in result["rows"] if (r["height"], r["width"]) == (h, w) and r.get("pairs_per_s")]
        labels = [f"{r['model']} / {r['backend']}" for r in rows]
        values = [r["pairs_per_s"] for r in rows]
        ax.barh(labels, values, color=[colours.get(r["kind"], "tab:blue") for r in rows])
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("pairs / s (log)")
        ax.set_title(f"{w}×{h}, batch 1")
    m = result["machine"]
    fig.suptitle(f"{m['cpu']} · {m['threads']} threads · GPU: {m['gpu'] or 'none'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out_dir: Path, latest_dir: Path | None) -> dict[str, Path]:
    """``bench.json``, ``bench.md``, ``bench.png`` in ``out_dir``; copies as ``latest.*`` in ``latest_dir``."""
    from loftr_kd.files import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(out_dir / "bench.json", result),
        "md": write_text(out_dir / "bench.md", markdown_table(result)),
        "png": bar_chart(result, out_dir / "bench.png"),
    }
    if latest_dir is not None:
        latest_dir.mkdir(parents=True, exist_ok=True)
        for ext, p in paths.items():
            shutil.copyfile(p, latest_dir / f"latest.{ext}")
    return paths
