"""The speed benchmark behind ``loftr-kd-bench``: teacher, students and classical matchers, row by row.

Every row runs the same real image pairs (scikit-image photos with a known homography, offline) at
each size, batch 1. Per row: median and p90 latency of one pair (warm-up runs excluded), pairs/s
(1000 / median), peak memory, and the speed-up over the teacher at the same size. Students run through
the :mod:`loftr_kd.runtime` backends (PyTorch, onnxruntime fp32 static / dynamic-shape / INT8, TensorRT),
their inputs fed once up front so that a timed run is the backend's model call alone.

Peak memory: with ``isolate`` (default) every row runs in a fresh process; its peak resident set
(``VmHWM``) is reset just before the backend is built (weights loaded, session created) and read after
the last run, minus the resident set at that moment — so it counts weights, runtime arenas and
activations, not the interpreter or the libraries. On CUDA, ``gpu_peak_mem_mb`` is
``torch.cuda.max_memory_allocated`` (TensorRT's own workspace is outside torch's allocator).
Without isolation the same figure is measured in-process, where memory freed by earlier rows can be
reused and the delta undercounts; the JSON says which method was used.

``bench(settings)`` does the work on a plain :class:`BenchSettings`; ``loftr_kd.cli.bench`` is the Hydra
entry point.
"""

from __future__ import annotations

import dataclasses
import os
import re
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

from loftr_kd.bench.matching import MATCHER_ROWS, measure_matcher_rows
from loftr_kd.bench.report import add_speedups, machine_info, markdown_table, number, write_outputs
from loftr_kd.runtime import bench_backend

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
# Pretrained matchers a user would pick instead (the teachers extra): seconds per pair on a CPU, timed
# like the teacher (teacher_iters).
REFERENCES = ("xfeat", "xfeat_lighterglue", "disk_lightglue", "aliked_lightglue")
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
    references: tuple[str, ...] = ()
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
    # Matcher rows (loftr_kd.bench.matching): whole API calls, interleaved, at the first of `sizes`;
    # matcher_weights: the student they run (None: the Matcher's default)
    matcher_rows: tuple[str, ...] = ()
    matcher_weights: str | None = None
    out_dir: str | None = None
    latest_dir: str | None = None

    def __post_init__(self) -> None:
        for key in ("sizes", "aspect_sizes"):
            try:
                sizes = tuple((int(h), int(w)) for h, w in getattr(self, key))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{key}={getattr(self, key)!r}: expected a list of [height, width] pairs, e.g. [[480, 640]]"
                ) from None
            object.__setattr__(self, key, sizes)
        for name in (
            "students",
            "backends",
            "aspect_backends",
            "teachers",
            "classical",
            "references",
            "matcher_rows",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "backends", tuple(bench_backend(b) for b in self.backends))
        object.__setattr__(self, "student_checkpoints", dict(self.student_checkpoints))
        unknown = (set(self.backends) | set(self.aspect_backends)) - set(STUDENT_BACKENDS)
        unknown |= set(self.teachers) - set(TEACHERS)
        unknown |= set(self.classical) - set(CLASSICAL)
        unknown |= set(self.references) - set(REFERENCES)
        unknown |= set(self.matcher_rows) - set(MATCHER_ROWS)
        if unknown:
            raise ValueError(f"unknown bench entries {sorted(unknown)}")
        if not self.sizes + self.aspect_sizes:
            raise ValueError(
                "sizes=[] and aspect_sizes=[]: expected at least one [height, width] pair to measure"
            )
        for h, w in self.sizes + self.aspect_sizes:
            if h % 16 or w % 16 or min(h, w) < 32:
                raise ValueError(
                    f"sizes must be multiples of 16 (student stride) of at least 32, got {h}x{w}"
                )
        if self.iters < 1 or self.teacher_iters < 1 or self.pairs < 1:
            raise ValueError("iters, teacher_iters and pairs must be >= 1")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(
                f"threads={self.threads!r}: expected a number of threads >= 1, or null (all cores)"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device={self.device!r}: expected auto, cpu, cuda or cuda:N")


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


def _backend_runner(backend, pairs) -> Callable[[int], Any]:
    """Runs pair ``i`` on a :mod:`loftr_kd.runtime` backend; every pair is fed (to the device) once, here."""
    inputs = [backend.feed(a[None, None], b[None, None]) for a, b, _ in pairs]

    def run(i: int):
        return backend.run(inputs[i % len(inputs)])

    return run


def _teacher_runner(model, pairs, device: str) -> Callable[[int], Any]:
    """Runs pair ``i`` on a teacher (a torch module with the student's call, not a deployed model)."""
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


def _classical_runner(kind: str, pairs, features: int) -> Callable[[int], Any]:
    """The evaluation's own ORB / SIFT (``OpenCVMatcher``), so the speed row and the accuracy row are
    the same matcher."""
    from loftr_kd.matcher import OpenCVMatcher

    matcher = OpenCVMatcher(kind, max_features=features)

    def run(i: int):
        a, b, _ = pairs[i % len(pairs)]
        return matcher(a, b)

    return run


def _reference_runner(name: str, pairs, long_side: int, threads: int) -> Callable[[int], Any]:
    """The evaluation's own pretrained matcher (``build_matcher(name)``) at the row's long side."""
    from loftr_kd.teachers.matchers import build_reference_matcher

    matcher = build_reference_matcher(name, long_side=long_side, threads=threads)

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
    from loftr_kd.teachers import LoFTRTeacher, find_teacher_checkpoint, load_teacher

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
    if kind == "reference":
        return (
            (lambda: None),
            (lambda: _reference_runner(name, pairs, max(h, w), threads)),
            "pretrained, published settings (as loftr-kd-evaluate); timed like the teacher",
        )
    if kind == "teacher":
        device = _torch_device(settings)

        def build_teacher_runner():
            model, note = _teacher_model(name)
            state["note"] = note
            return _teacher_runner(model, pairs, device)

        return (lambda: None), build_teacher_runner, f"device {device}"

    # student
    if backend == "torch":
        device = _torch_device(settings)

        def build_student():
            from loftr_kd.runtime import TorchBackend

            model, note = _student_model(name, h, w, settings)
            state["note"] = note
            return _backend_runner(TorchBackend(model, device=device, threads=threads), pairs)

        return (lambda: None), build_student, f"device {device}"

    if backend.startswith("tensorrt"):
        from loftr_kd.runtime.tensorrt_backend import require_tensorrt

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
            state["model_file"] = quantize_int8(onnx_path, onnx_path.with_suffix(".int8.onnx"), calibration)
        if backend.startswith("tensorrt"):
            from loftr_kd.export.tensorrt import build_engine

            fp16 = backend.endswith("fp16")
            engine = build_engine(onnx_path, onnx_path.with_suffix(f".{backend}.engine"), fp16=fp16)
            state["model_file"] = engine

    def build():
        from loftr_kd.runtime import OnnxBackend, TensorRTBackend

        model_file = state.get("model_file", onnx_path)
        if backend.startswith("tensorrt"):
            return _backend_runner(TensorRTBackend(model_file), pairs)
        return _backend_runner(OnnxBackend(model_file, threads=threads), pairs)

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
    teacher_like = spec["kind"] in ("teacher", "reference")
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
        from loftr_kd.runtime import TensorRTUnavailable

        reason = e.reason if isinstance(e, TensorRTUnavailable) else f"{type(e).__name__}: {e}"
        row.update(median_ms=None, p90_ms=None, pairs_per_s=None, peak_mem_mb=None, error=reason)
        if not isinstance(e, TensorRTUnavailable):
            row["traceback"] = traceback.format_exc(limit=5)
    return row


def _measure_isolated(spec, settings, pairs, measure=None):
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(measure or measure_row, spec, settings, pairs).result()


# ----------------------------------------------------------------------------------------------------
# plan and run


def plan_rows(settings: BenchSettings, threads: int) -> list[dict[str, Any]]:
    """The (model, backend, size) rows, teachers first at every size."""
    specs = []
    for h, w in settings.sizes:
        base = {"height": h, "width": w, "threads": threads}
        specs += [{**base, "kind": "teacher", "model": t, "backend": "torch"} for t in settings.teachers]
        for s in settings.students:
            specs += [{**base, "kind": "student", "model": s, "backend": b} for b in settings.backends]
        specs += [{**base, "kind": "classical", "model": c, "backend": "opencv"} for c in settings.classical]
        specs += [{**base, "kind": "reference", "model": r, "backend": "torch"} for r in settings.references]
    for h, w in settings.aspect_sizes:
        base = {"height": h, "width": w, "threads": threads, "kind": "student"}
        for s in settings.students:
            specs += [{**base, "model": s, "backend": b} for b in settings.aspect_backends]
    return specs


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
    for name in settings.students:  # a missing, corrupt or unknown student is one line now, not a "-" row
        try:
            _student_model(name, *(settings.sizes + settings.aspect_sizes)[0], settings)
        except (FileNotFoundError, KeyError, RuntimeError, ValueError) as error:
            text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            raise ValueError(f"students: {name}: {text}") from error
    planned = plan_rows(settings, threads)
    if not planned and not (settings.matcher_rows and settings.sizes):
        raise ValueError(
            "nothing to measure: every row list is empty (students with backends, teachers, classical, "
            "references, matcher_rows)"
        )
    rows = []
    for spec in planned:
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
                f"  median {row['median_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms, peak {number(row['peak_mem_mb'])} MB"
            )
        rows.append(row)
    for size in settings.sizes[:1] if settings.matcher_rows else ():  # the first size (640x480 by default)
        from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS

        model = Path(settings.matcher_weights or DEFAULT_STUDENT_WEIGHTS).stem
        spec = {"kind": "matcher", "model": model, "height": size[0], "width": size[1], "threads": threads}
        log(f"bench: {model} / Matcher rows {', '.join(settings.matcher_rows)} at {size[1]}x{size[0]} ...")
        if settings.isolate:
            matcher_rows = _measure_isolated(spec, settings, pairs[size], measure_matcher_rows)
        else:
            matcher_rows = measure_matcher_rows(spec, settings, pairs[size])
        for row in matcher_rows:
            shown = "" if row.get("vs_pair") is None else f", {row['vs_pair']:.2f}x the full pair"
            log(
                f"  {row['backend']}: "
                + (
                    f"skipped: {row['error']}"
                    if row.get("error")
                    else f"median {row['median_ms']:.2f} ms{shown}"
                )
            )
        rows += matcher_rows
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
