"""``loftr-kd-bench`` / ``make bench``: speed of the teacher, the students and classical matchers.

Every row runs the same real image pairs (scikit-image photos with a known homography, offline) at
each size, batch 1. Per row: median and p90 latency of one pair (warm-up runs excluded), pairs/s
(1000 / median), peak memory, and the speed-up over the teacher at the same size.

Peak memory: with ``isolate`` (default) every row runs in a fresh process; its peak resident set
(``VmHWM``) is reset just before the backend is built (weights loaded, session created) and read after
the last run, minus the resident set at that moment — so it counts weights, runtime arenas and
activations, not the interpreter or the libraries. On CUDA, ``gpu_peak_mem_mb`` is
``torch.cuda.max_memory_allocated`` (TensorRT's own workspace is outside torch's allocator).
Without isolation the same figure is measured in-process, where memory freed by earlier rows can be
reused and the delta undercounts; the JSON says which method was used.

``bench(settings)`` does the work on a plain ``BenchSettings``; ``main`` is the Hydra wrapper.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

STUDENT_BACKENDS = (
    "torch",
    "onnxruntime",
    "onnxruntime-dynamic",
    "onnxruntime-int8",
    "tensorrt-fp32",
    "tensorrt-fp16",
)
TEACHERS = ("teacher", "loftr_full")
CLASSICAL = ("orb", "sift")
ROW_KEYS = (
    "model",
    "backend",
    "height",
    "width",
    "median_ms",
    "p90_ms",
    "pairs_per_s",
    "peak_mem_mb",
    "speedup_vs_teacher",
)


@dataclass(frozen=True)
class BenchSettings:
    """What to measure. Sizes are ``(height, width)``."""

    sizes: tuple[tuple[int, int], ...] = ((480, 640), (240, 320))
    # other aspect ratios, students only, for ``aspect_backends``: what dynamic shapes cost against a
    # static file exported at that size
    aspect_sizes: tuple[tuple[int, int], ...] = ()
    aspect_backends: tuple[str, ...] = ("onnxruntime", "onnxruntime-dynamic")
    students: tuple[str, ...] = ("paper",)
    student_checkpoints: dict[str, str] = field(default_factory=dict)
    backends: tuple[str, ...] = STUDENT_BACKENDS
    teachers: tuple[str, ...] = ("teacher",)
    classical: tuple[str, ...] = CLASSICAL
    pairs: int = 4
    iters: int = 20
    warmup: int = 3
    teacher_iters: int = 3
    teacher_warmup: int = 1
    threads: int | None = None
    device: str = "auto"  # torch rows: "cpu", "cuda" or "auto" (cuda when available)
    isolate: bool = True
    calibration_pairs: int = 8
    features: int = 2000  # ORB/SIFT keypoints per image
    config_dir: str | None = None  # where student/<preset>.yaml live (default: the repo's conf/)
    out_dir: str | None = None
    latest_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(tuple(int(v) for v in s) for s in self.sizes))
        object.__setattr__(self, "aspect_sizes", tuple(tuple(int(v) for v in s) for s in self.aspect_sizes))
        for name in ("students", "backends", "aspect_backends", "teachers", "classical"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        from loftr_kd.runtime import bench_backend

        object.__setattr__(self, "backends", tuple(bench_backend(b) for b in self.backends))
        object.__setattr__(self, "student_checkpoints", dict(self.student_checkpoints))
        unknown = (set(self.backends) | set(self.aspect_backends)) - set(STUDENT_BACKENDS)
        unknown |= set(self.teachers) - set(TEACHERS)
        unknown |= set(self.classical) - set(CLASSICAL)
        if unknown:
            raise ValueError(f"unknown bench entries {sorted(unknown)}")
        for h, w in self.sizes + self.aspect_sizes:
            if h % 16 or w % 16:
                raise ValueError(f"sizes must be multiples of 16 (student stride), got {h}x{w}")
        if self.iters < 1 or self.teacher_iters < 1 or self.pairs < 1:
            raise ValueError("iters, teacher_iters and pairs must be >= 1")


# ----------------------------------------------------------------------------------------------------
# memory


def _status_kb(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


class PeakMemory:
    """Peak resident-set increase over a section (Linux ``VmHWM`` reset via ``clear_refs``)."""

    def __init__(self) -> None:
        self.baseline_kb = _status_kb("VmRSS")
        self.method = "VmHWM"
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            import resource

            self.method = "ru_maxrss"
            self.baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_mb(self) -> float | None:
        if self.baseline_kb is None:
            return None
        if self.method == "VmHWM":
            peak = _status_kb("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return None if peak is None else max(peak - self.baseline_kb, 0) / 1024.0


# ----------------------------------------------------------------------------------------------------
# runners: build(...) -> callable(pair_index) that runs one pair


def _student_model(name: str, height: int, width: int, settings: BenchSettings):
    """A student preset (conf/student/<name>.yaml) at the size, with checkpoint weights when given."""
    from loftr_kd.models.student import build_student, load_student

    ckpt = settings.student_checkpoints.get(name)
    if ckpt:
        model = load_student(ckpt, input_height=height, input_width=width)
        return model.prepare_for_inference(inplace=True), f"weights {Path(ckpt).name}"
    if Path(name).suffix in (".pt", ".ckpt"):
        model = load_student(name, input_height=height, input_width=width)
        return model.prepare_for_inference(inplace=True), f"weights {Path(name).name}"
    from loftr_kd.config import preset_values

    values = preset_values(name, settings.config_dir)
    values.update(input_height=height, input_width=width)
    return build_student(**values).prepare_for_inference(inplace=True), "random init (timing only)"


def _torch_device(settings: BenchSettings) -> str:
    import torch

    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def _torch_runner(model, pairs, device: str) -> Callable[[int], Any]:
    import torch

    model = model.to(device).eval()
    tensors = [
        (torch.from_numpy(a)[None, None].to(device), torch.from_numpy(b)[None, None].to(device))
        for a, b, _ in pairs
    ]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run(i: int):
        a, b = tensors[i % len(tensors)]
        with torch.inference_mode():
            out = model(a, b)
        sync()
        return out

    return run


def _ort_runner(onnx_path: Path, pairs, threads: int) -> Callable[[int], Any]:
    from loftr_kd.runtime import ort_session

    session = ort_session(onnx_path, threads=threads)
    feeds = [{"image0": a[None, None], "image1": b[None, None]} for a, b, _ in pairs]

    def run(i: int):
        return session.run(None, feeds[i % len(feeds)])

    return run


def _trt_runner(engine_path: Path, pairs) -> Callable[[int], Any]:
    import torch

    from loftr_kd.export.tensorrt import TensorRTRunner

    runner = TensorRTRunner(engine_path)
    tensors = [
        (torch.from_numpy(a)[None, None].cuda(), torch.from_numpy(b)[None, None].cuda()) for a, b, _ in pairs
    ]

    def run(i: int):
        a, b = tensors[i % len(tensors)]
        out = runner(a, b)
        torch.cuda.synchronize()
        return out

    return run


def _classical_runner(kind: str, pairs, features: int) -> Callable[[int], Any]:
    """The evaluation's own ORB / SIFT (``OpenCVMatcher``), so the speed row and the accuracy row are
    the same matcher."""
    from loftr_kd.matcher import OpenCVMatcher

    matcher = OpenCVMatcher(kind, max_features=features)

    def run(i: int):
        a, b, _ = pairs[i % len(pairs)]
        return matcher(a, b)

    return run


def _teacher_model(kind: str):
    from loftr_kd.paths import WEIGHTS_DIR

    if kind == "loftr_full":
        import kornia.feature

        model = kornia.feature.LoFTR(pretrained=None).eval()

        class Full:  # kornia's forward takes a dict
            def to(self, device):
                model.to(device)
                return self

            def eval(self):
                return self

            def __call__(self, a, b):
                return model({"image0": a, "image1": b})

        return Full(), "kornia LoFTR with fine stage, random init (timing only)"
    from loftr_kd.models.teacher import LoFTRTeacher, find_teacher_checkpoint, load_teacher

    ckpt = find_teacher_checkpoint(WEIGHTS_DIR)
    if ckpt is not None:
        return load_teacher(ckpt), f"coarse LoFTR teacher, weights {ckpt.name}"
    return LoFTRTeacher(
        temp_bug_fix=False
    ).eval(), "coarse LoFTR teacher (stride 8), random init (timing only)"


# ----------------------------------------------------------------------------------------------------
# one row


def _prepare_and_build(spec: dict[str, Any], settings: BenchSettings, pairs, workdir: Path):
    """Returns (prepare(), build() -> runner, notes). ``prepare`` is excluded from memory and time."""
    kind, name, backend = spec["kind"], spec["model"], spec["backend"]
    h, w = spec["height"], spec["width"]
    threads = spec["threads"]
    state: dict[str, Any] = {}
    spec["_state"] = state

    if kind == "classical":
        return (
            (lambda: None),
            (lambda: _classical_runner(name, pairs, settings.features)),
            "OpenCV: ORB cross-check BF, SIFT Lowe ratio 0.8 (as loftr-kd-evaluate)",
        )
    if kind == "teacher":
        device = _torch_device(settings)

        def build_teacher_runner():
            model, note = _teacher_model(name)
            state["note"] = note
            return _torch_runner(model, pairs, device)

        return (lambda: None), build_teacher_runner, f"device {device}"

    # student
    if backend == "torch":
        device = _torch_device(settings)

        def build_student():
            model, note = _student_model(name, h, w, settings)
            state["note"] = note
            return _torch_runner(model, pairs, device)

        return (lambda: None), build_student, f"device {device}"

    if backend.startswith("tensorrt"):
        from loftr_kd.export.tensorrt import require_tensorrt

        require_tensorrt()  # fail fast, before exporting
    onnx_path = workdir / f"{Path(name).stem}_{h}x{w}.onnx"
    dynamic = backend == "onnxruntime-dynamic"

    def prepare():
        from loftr_kd.data.homography import real_image_pairs
        from loftr_kd.export.onnx import export_onnx

        # a dynamic file is exported once, at the first size, and run at every size
        export_h, export_w = settings.sizes[0] if dynamic and settings.sizes else (h, w)
        model, note = _student_model(name, export_h, export_w, settings)
        state["note"] = note + (f"; dynamic H/W file traced at {export_w}x{export_h}" if dynamic else "")
        export_onnx(model, onnx_path, height=export_h, width=export_w, dynamic=dynamic)
        if backend == "onnxruntime-int8":
            from loftr_kd.export.quantize import quantize_int8

            calibration = [(a, b) for a, b, _ in real_image_pairs(h, w, settings.calibration_pairs, seed=101)]
            state["int8"] = quantize_int8(onnx_path, onnx_path.with_suffix(".int8.onnx"), calibration)
        if backend.startswith("tensorrt"):
            from loftr_kd.export.tensorrt import build_engine

            fp16 = backend.endswith("fp16")
            state["engine"] = build_engine(onnx_path, onnx_path.with_suffix(f".{backend}.engine"), fp16=fp16)

    def build():
        if backend in ("onnxruntime", "onnxruntime-dynamic"):
            return _ort_runner(onnx_path, pairs, threads)
        if backend == "onnxruntime-int8":
            return _ort_runner(state["int8"], pairs, threads)
        return _trt_runner(state["engine"], pairs)

    notes = "onnxruntime CPU" if backend.startswith("onnxruntime") else "TensorRT"
    if backend == "onnxruntime-int8":
        notes += ", static INT8 QDQ per-channel (Conv/MatMul)"
    return prepare, build, notes


def measure_row(spec: dict[str, Any], settings: BenchSettings, pairs) -> dict[str, Any]:
    """Measure one (model, backend, size); returns a row (``error`` set instead of numbers on failure)."""
    import cv2
    import torch

    threads = spec["threads"]
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    row = {k: spec.get(k) for k in ("model", "backend", "height", "width")}
    row.update(threads=threads, kind=spec["kind"])
    teacher_like = spec["kind"] == "teacher"
    iters = settings.teacher_iters if teacher_like else settings.iters
    warmup = settings.teacher_warmup if teacher_like else settings.warmup
    try:
        with tempfile.TemporaryDirectory(prefix="loftr_kd_bench_") as tmp:
            prepare, build, notes = _prepare_and_build(spec, settings, pairs, Path(tmp))
            prepare()
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            memory = PeakMemory()
            run = build()
            for i in range(warmup):
                run(i)
            times = []
            for i in range(iters):
                t0 = time.perf_counter()
                run(i)
                times.append((time.perf_counter() - t0) * 1e3)
            peak = memory.peak_mb()
            state = spec.get("_state", {})
            median = statistics.median(times)
            row.update(
                median_ms=median,
                p90_ms=float(np.percentile(times, 90)),
                pairs_per_s=1000.0 / median if median > 0 else None,
                peak_mem_mb=peak,
                peak_mem_method=memory.method
                + (" (isolated process)" if settings.isolate else " (in-process)"),
                gpu_peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                iterations=iters,
                warmup=warmup,
                notes="; ".join(x for x in (notes, state.get("note", "")) if x),
            )
    except Exception as e:
        from loftr_kd.export.tensorrt import TensorRTUnavailable

        reason = e.reason if isinstance(e, TensorRTUnavailable) else f"{type(e).__name__}: {e}"
        row.update(median_ms=None, p90_ms=None, pairs_per_s=None, peak_mem_mb=None, error=reason)
        if not isinstance(e, TensorRTUnavailable):
            row["traceback"] = traceback.format_exc(limit=5)
    return row


def _measure_isolated(spec, settings, pairs):
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(measure_row, spec, settings, pairs).result()


# ----------------------------------------------------------------------------------------------------
# machine, plan, outputs


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


def plan_rows(settings: BenchSettings, threads: int) -> list[dict[str, Any]]:
    """The (model, backend, size) rows, teachers first at every size."""
    specs = []
    for h, w in settings.sizes:
        base = {"height": h, "width": w, "threads": threads}
        specs += [{**base, "kind": "teacher", "model": t, "backend": "torch"} for t in settings.teachers]
        for s in settings.students:
            specs += [{**base, "kind": "student", "model": s, "backend": b} for b in settings.backends]
        specs += [{**base, "kind": "classical", "model": c, "backend": "opencv"} for c in settings.classical]
    for h, w in settings.aspect_sizes:
        base = {"height": h, "width": w, "threads": threads, "kind": "student"}
        for s in settings.students:
            specs += [{**base, "model": s, "backend": b} for b in settings.aspect_backends]
    return specs


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


def _fmt(v, digits=1) -> str:
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
        f"load average (1 min) {_fmt((m.get('load_average_start') or [None])[0], 2)} at start, "
        f"{_fmt((m.get('load_average') or [None])[0], 2)} at end (> cores: timings inflated by other work).",
        f"Batch 1, {result['settings']['pairs']} real image pairs (scikit-image photos, known homography); "
        f"warm-up excluded; peak memory = resident-set increase while the model is built and run.",
        "",
        "| model | backend | size | median ms | p90 ms | pairs/s | peak MB | × teacher | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        notes = r.get("error") and f"skipped: {r['error']}" or r.get("notes", "")
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['width']}×{r['height']} | {_fmt(r.get('median_ms'))} | "
            f"{_fmt(r.get('p90_ms'))} | {_fmt(r.get('pairs_per_s'))} | {_fmt(r.get('peak_mem_mb'))} | "
            f"{_fmt(r.get('speedup_vs_teacher'), 0 if (r.get('speedup_vs_teacher') or 0) >= 10 else 2)} | {notes} |"
        )
    checks = target_checks(result["rows"])
    if checks:
        lines += ["", "Targets (issue 5):", ""] + [f"- {c}" for c in checks]
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
    colours = {"teacher": "tab:red", "student": "tab:blue", "classical": "tab:gray"}
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


def bench(settings: BenchSettings, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and write its outputs; returns the result dict (``machine``, ``rows``, ...)."""
    from loftr_kd.data.homography import real_image_pairs
    from loftr_kd.paths import OUTPUTS_DIR

    threads = int(settings.threads or os.cpu_count() or 1)
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    timestamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = Path(settings.out_dir) if settings.out_dir else OUTPUTS_DIR / "bench" / timestamp
    latest_dir = Path(settings.latest_dir) if settings.latest_dir else out_dir.parent
    pairs = {
        size: real_image_pairs(size[0], size[1], settings.pairs, seed=7)
        for size in dict.fromkeys(settings.sizes + settings.aspect_sizes)
    }
    rows = []
    for spec in plan_rows(settings, threads):
        size = (spec["height"], spec["width"])
        log(f"bench: {spec['model']} / {spec['backend']} at {size[1]}x{size[0]} ...")
        if settings.isolate:
            row = _measure_isolated(spec, settings, pairs[size])
        else:
            row = measure_row(spec, settings, pairs[size])
        if row.get("error"):
            log(f"  skipped: {row['error']}")
        else:
            log(
                f"  median {row['median_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms, peak {_fmt(row['peak_mem_mb'])} MB"
            )
        rows.append(row)
    add_speedups(rows)
    result = {
        "timestamp": timestamp,
        "machine": {**machine_info(threads), "load_average_start": load_start},
        "settings": {
            k: v for k, v in dataclasses.asdict(settings).items() if k not in ("out_dir", "latest_dir")
        },
        "rows": rows,
    }
    paths = write_outputs(result, out_dir, latest_dir)
    result["outputs"] = {k: str(v) for k, v in paths.items()}
    log(markdown_table(result))
    log(f"bench: wrote {paths['json']}, {paths['md']}, {paths['png']} (and latest.* in {latest_dir})")
    return result


def settings_from_config(cfg) -> BenchSettings:
    """``BenchSettings`` from a composed ``conf/bench.yaml`` (``quick`` shrinks every count)."""
    from omegaconf import OmegaConf

    names = [f.name for f in dataclasses.fields(BenchSettings)]
    # Only our keys are resolved: `paths`/`hydra` interpolate Hydra's runtime, absent under compose().
    kwargs = {
        k: OmegaConf.to_container(OmegaConf.create({"v": cfg[k]}), resolve=True)["v"]
        for k in names
        if k in cfg
    }
    quick = bool(cfg.get("quick", False))
    if quick:
        kwargs.update(iters=2, warmup=1, teacher_iters=1, teacher_warmup=0, pairs=1, calibration_pairs=2)
    return BenchSettings(**kwargs)


def _hydra_main():
    import hydra

    from loftr_kd.config import CONFIG_DIR, register_resolvers

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
    def main(cfg) -> None:
        from loftr_kd.errors import debug_enabled, is_user_error, report

        register_resolvers()
        try:
            settings = settings_from_config(cfg)
        except Exception as error:  # a bad setting: one line and exit status 2 (loftr_kd.errors)
            if debug_enabled() or not is_user_error(error):
                raise
            raise SystemExit(report("loftr-kd-bench", error)) from None
        bench(settings)

    return main


def main() -> None:
    """``loftr-kd-bench`` (see conf/bench.yaml)."""
    _hydra_main()()


if __name__ == "__main__":
    main()
