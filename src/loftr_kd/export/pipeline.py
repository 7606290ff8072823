"""The one export pipeline: checkpoint -> checked ONNX -> optional INT8 -> TensorRT engine where possible.

Both the end of every training run (``loftr_kd.train``) and ``loftr-kd-export`` call
:func:`run_pipeline` with :class:`ExportSettings`, whose fields are the keys of ``conf/deploy/default.yaml``
(the one schema: training reads it as ``deploy.*``, ``loftr-kd-export`` at its top level).

The checkpoint is only read. An ONNX export or check failure raises ``ExportError`` (the caller decides
whether that ends the command); a missing TensorRT is one line and a skipped engine; a failed engine
build keeps the ONNX file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Smallest largest batch of the split export's TensorRT engines (default_profiles' batch 1..8 for a
# dynamic-batch graph too): the default guided search's waves hold up to 6 hypotheses.
SPLIT_MAX_BATCH = 8
# ONNX opsets the model exports to: 13 is the first whose graph onnxruntime loads with every option (opset
# 11 has no int64 Clip, the refinement's index clamp; opset 12's DequantizeLinear has no per-channel axis,
# so its INT8 file was invalid); 20 is the last that torch's TorchScript exporter writes (the dynamo
# exporter, exporter="dynamo", writes >= 18). 13 is also the newest opset a Jetson Nano's TensorRT 8.2 takes
# (whether it parses this graph is untried: docs/deployment.md).
SUPPORTED_OPSETS = (13, 20)


def _check_keys(cls: type, values: Mapping[str, Any], prefix: str) -> None:
    """Every key of ``values`` is a field of the dataclass ``cls`` (nested settings checked too)."""
    import difflib

    names = {f.name: f for f in fields(cls)}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), list(names), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ValueError(f"{prefix}{key} is not an export setting{hint}")
        nested = {"int8": Int8Settings, "tensorrt": TensorRTSettings}.get(key)
        if nested is not None and isinstance(value, Mapping):
            _check_keys(nested, value, f"{key}.")


@dataclass
class Int8Settings:
    enabled: bool = False  # onnxruntime static INT8 (QDQ) for CPUs, calibrated on real photo pairs
    calibration_pairs: int = 16
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.calibration_pairs < 1:
            raise ValueError(f"int8.calibration_pairs must be >= 1, got {self.calibration_pairs}")


@dataclass
class TensorRTSettings:
    enabled: bool = True  # skipped with one line when tensorrt or a CUDA GPU is missing
    fp16: bool = True
    workspace_mb: int = 1024
    # Optimisation profile of a dynamic-shape file: {"min": [h, w], "opt": [h, w], "max": [h, w],
    # "max_batch": n}; checked (against the file) by the engine build. None: TensorRT's default profile.
    profile: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.workspace_mb < 1:
            raise ValueError(f"tensorrt.workspace_mb must be >= 1, got {self.workspace_mb}")


MAX_EXPORT_SIDE = 4096


@dataclass
class ExportSettings:
    """What to export and which checks and builds follow (``conf/deploy/default.yaml``)."""

    enabled: bool = True
    height: int = 480
    width: int = 640
    batch: int = 1
    dynamic: bool | str = False  # False: static; True: batch, height and width; "batch": batch only
    opset: int = 17
    with_confidence: bool = False
    parity_pairs: int = 4
    split: bool = True  # also the encoder and matcher graphs (export.split), beside the whole one
    atol: float = 1e-4
    min_match_agreement: float = 0.99
    name: str | None = None
    int8: Int8Settings = field(default_factory=Int8Settings)
    tensorrt: TensorRTSettings = field(default_factory=TensorRTSettings)

    def __post_init__(self) -> None:
        if isinstance(self.int8, Mapping):
            self.int8 = Int8Settings(**self.int8)
        if isinstance(self.tensorrt, Mapping):
            self.tensorrt = TensorRTSettings(**self.tensorrt)
        for key in ("height", "width", "batch", "parity_pairs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key}={value!r}: expected an integer")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"export size must be positive, got height={self.height} width={self.width}")
        if max(self.height, self.width) > MAX_EXPORT_SIDE:
            # the (L0, L1) similarity grows with the fourth power of the side: 17 GB at 4096 x 4096
            raise ValueError(
                f"export size height={self.height} width={self.width}: at most {MAX_EXPORT_SIDE} px a side "
                f"(the coarse similarity matrix alone needs tens of GB beyond that)"
            )
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.name is not None and (
            not str(self.name) or Path(str(self.name)).name != str(self.name) or str(self.name) in (".", "..")
        ):
            raise ValueError(
                f"name={self.name!r}: expected a file stem (no folders); out_dir= sets the folder"
            )
        if self.parity_pairs < 1:  # 0 used to mean the default 4, silently
            raise ValueError(
                f"parity_pairs must be >= 1 (the pairs every export is checked on), got {self.parity_pairs}"
            )
        if self.dynamic not in (False, True, "batch"):
            raise ValueError(f"dynamic must be false, true or batch, got {self.dynamic!r}")
        if not (
            isinstance(self.atol, (int, float))
            and not isinstance(self.atol, bool)
            and math.isfinite(self.atol)
            and self.atol > 0
        ):  # was found only after the export; inf would pass every parity check
            raise ValueError(f"atol={self.atol!r}: expected a finite parity tolerance > 0")
        if not 0.0 <= self.min_match_agreement <= 1.0:
            raise ValueError(f"min_match_agreement must be in [0, 1], got {self.min_match_agreement}")
        low, high = SUPPORTED_OPSETS
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not low <= self.opset <= high:
            raise ValueError(
                f"opset={self.opset!r}: the exporter writes ONNX opsets {low} to {high} for this model "
                f"(default 17; TensorRT 10 reads them all, TensorRT 8.2 up to 13)"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ExportSettings:
        """Settings from a plain mapping of export settings only.

        Raises:
            ValueError: a key that is not an export setting (with the closest one), or a bad value.
        """
        _check_keys(cls, values, "")
        return cls(**values)


def run_pipeline(
    checkpoint: str | Path,
    out_dir: str | Path,
    settings: ExportSettings,
    *,
    parity_pairs: Sequence[tuple[Any, ...]] | None = None,
    say: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Export ``checkpoint`` into ``out_dir`` and run what ``settings`` asks for; returns a summary.

    Args:
        parity_pairs: image pairs at any size for the onnxruntime parity check; ``None``: real photos
            with a known warp (``loftr_kd.data.homography.real_image_pairs``).
        say: where the one-line progress messages go (print, or the training log).
        force: replace output files in ``out_dir`` that loftr-kd did not write (never without it).

    Returns:
        ``{"checkpoint", "onnx", "onnx_report", "parity", ["int8", "int8_comparison"],
        "engine" | "engine_skipped" | "engine_error"}``.

    Raises:
        ExportError: the export or one of its checks failed (the checkpoint is untouched).
        OutputExistsError: an output file exists that loftr-kd did not write (before any work).
    """
    from loftr_kd.data.homography import real_image_pairs
    from loftr_kd.export.onnx import export_student
    from loftr_kd.files import check_outputs, check_writable_folder, record_outputs

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    height, width = settings.height, settings.width
    check_writable_folder(out_dir, "out_dir")  # before loading and tracing, not at the first write
    planned = planned_outputs(out_dir, settings)
    check_outputs(planned, force=force, force_hint="force=true")
    if parity_pairs is None:
        parity_pairs = [(a, b) for a, b, _ in real_image_pairs(height, width, settings.parity_pairs, seed=0)]
    try:
        result = export_student(
            checkpoint,
            out_dir,
            height=height,
            width=width,
            batch=settings.batch,
            dynamic=settings.dynamic,
            opset=settings.opset,
            parity_pairs=list(parity_pairs) or None,
            with_confidence=settings.with_confidence,
            atol=settings.atol,
            min_match_agreement=settings.min_match_agreement,
            name=output_name(settings),
        )
        parity = result.report.get("parity") or {}
        summary: dict[str, Any] = {
            "checkpoint": str(checkpoint),
            "onnx": str(result.onnx_path),
            "onnx_report": str(result.report_path),
            "parity": parity,
        }
        say(
            f"Export: ONNX written to {result.onnx_path} and verified (onnx.checker, TensorRT op allow-list, "
            f"onnxruntime parity: match_confidence max diff "
            f"{parity.get('match_confidence_max_abs_diff', float('nan')):.2e}, match_ids equal "
            f"{parity.get('match_ids_equal_fraction', float('nan')):.4f}); report {result.report_path} (+ .md)."
        )
        if settings.split:
            summary.update(_split(result, settings, say))
        if settings.int8.enabled:
            summary.update(_int8(result.onnx_path, settings, say))
        summary.update(_engine(result.onnx_path, settings.tensorrt, say))
        if settings.split and "engine" in summary:
            summary.update(_split_engines(result.onnx_path, settings.tensorrt, say))
    finally:
        record_outputs(planned, "loftr-kd-export")  # what was written, so a rerun may replace it
    return summary


def output_name(settings: ExportSettings) -> str:
    """The file stem of an export: ``name``, else ``student_<height>x<width>``."""
    return settings.name or f"student_{settings.height}x{settings.width}"


def planned_outputs(out_dir: Path, settings: ExportSettings) -> list[Path]:
    """Every file an export with ``settings`` may write into ``out_dir``."""
    from loftr_kd.export.onnx import failed_paths
    from loftr_kd.export.tensorrt import engine_metadata_path
    from loftr_kd.runtime.backend import SPLIT_PARTS, split_path

    onnx_path = out_dir / f"{output_name(settings)}.onnx"
    report = onnx_path.with_name(f"{onnx_path.stem}.export_report.json")
    # <name>.failed.*: where a graph that failed its checks goes, with its report (export_student)
    paths = [onnx_path, report, report.with_suffix(".md"), *failed_paths(onnx_path)]
    if settings.split:
        paths += [split_path(onnx_path, part) for part in SPLIT_PARTS]
    if settings.int8.enabled:
        int8 = onnx_path.with_suffix(".int8.onnx")
        paths += [int8, int8.with_suffix(".json")]
    if settings.tensorrt.enabled:
        engine = onnx_path.with_suffix(".fp16.engine" if settings.tensorrt.fp16 else ".fp32.engine")
        engines = [engine] + ([split_path(engine, part) for part in SPLIT_PARTS] if settings.split else [])
        paths += [p for e in engines for p in (e, engine_metadata_path(e))]
    return paths


def _split(result: Any, settings: ExportSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """The encoder and matcher graphs beside the checked whole graph, checked the same way (report section
    ``split``).

    Raises:
        ExportError: a check of the split export failed (after writing the report).
    """
    from loftr_kd.export import checks
    from loftr_kd.export.onnx import ExportError
    from loftr_kd.export.split import check_split, export_split

    try:
        paths = export_split(
            result.model,
            result.onnx_path,
            dynamic=settings.dynamic,
            opset=settings.opset,
            height=settings.height,
            width=settings.width,
            extra_metadata={"checkpoint": Path(result.report.get("checkpoint", "")).name},
        )
    except Exception as e:
        raise ExportError(f"split export of {result.onnx_path} failed: {type(e).__name__}: {e}") from e
    section = check_split(
        result.model,
        result.onnx_path,
        result.parity_pairs,
        atol=settings.atol,
        min_match_agreement=settings.min_match_agreement,
    )
    result.report["split"] = section
    result.report["errors"] = [*result.report.get("errors", []), *section["errors"]]
    result.report["ok"] = not result.report["errors"]
    checks.write_report(result.report_path, result.report)
    if section["errors"]:
        raise ExportError(
            f"export checks failed for the split export {paths[0].name} / {paths[1].name} (report: "
            f"{result.report_path}): " + "; ".join(section["errors"])
        )
    parity = section.get("parity") or {}
    identical = parity.get("pairs_identical_to_whole_graph", 0)
    versus = (
        "bit for bit the whole graph's"
        if identical == 1
        else f"within {parity.get('max_abs_diff_vs_whole_graph', float('nan')):.1e} of the whole graph's (float "
        "rounding of graphs traced apart"
        + (f"; bit for bit on {100 * identical:.0f} % of the pairs)" if identical else ")")
    )
    say(f"Split export: {paths[0]} and {paths[1]} written and verified (same checks); outputs {versus}.")
    return {"encoder": str(paths[0]), "matcher": str(paths[1]), "split_parity": parity}


def _split_engines(onnx_path: Path, settings: TensorRTSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """TensorRT engines of the encoder and matcher graphs, beside the whole graph's engine; their profile takes
    a batch of at least :data:`SPLIT_MAX_BATCH` (a guided search matches its hypotheses in one call)."""
    import dataclasses

    from loftr_kd.runtime.backend import SPLIT_PARTS, split_path

    if settings.profile:
        batch = max(int(settings.profile.get("max_batch", 1) or 1), SPLIT_MAX_BATCH)
        settings = dataclasses.replace(settings, profile={**settings.profile, "max_batch": batch})
    engines = {}
    for part in SPLIT_PARTS:
        built = _engine(split_path(onnx_path, part), settings, say)
        if "engine" not in built:
            return {f"{part}_engine_{key}": value for key, value in built.items()}
        engines[f"{part}_engine"] = built["engine"]
    return engines


def _int8(onnx_path: Path, settings: ExportSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from loftr_kd.data.homography import real_image_pairs
    from loftr_kd.export.quantize import compare_int8, quantize_int8
    from loftr_kd.files import write_json

    height, width = settings.height, settings.width
    int8_path = onnx_path.with_suffix(".int8.onnx")
    calibration = [
        (a, b) for a, b, _ in real_image_pairs(height, width, settings.int8.calibration_pairs, seed=1)
    ]
    quantize_int8(onnx_path, int8_path, calibration, per_channel=settings.int8.per_channel)
    comparison = compare_int8(onnx_path, int8_path, real_image_pairs(height, width, 8, seed=2))
    write_json(int8_path.with_suffix(".json"), comparison)
    say(
        f"INT8: {int8_path}: {comparison['speedup']:.2f}x vs fp32, agreement "
        f"{comparison['agreement_with_fp32']:.3f}, precision change {comparison.get('precision_change')}"
    )
    return {"int8": str(int8_path), "int8_comparison": comparison}


def _engine(onnx_path: Path, settings: TensorRTSettings, say: Callable[[str], None]) -> dict[str, Any]:
    if not settings.enabled:
        say("TensorRT: skipped (tensorrt.enabled=false).")
        return {"engine_skipped": "tensorrt.enabled=false"}
    from loftr_kd.export.tensorrt import TensorRTUnavailable, build_engine

    engine_path = onnx_path.with_suffix(".fp16.engine" if settings.fp16 else ".fp32.engine")
    try:
        build_engine(
            onnx_path,
            engine_path,
            fp16=settings.fp16,
            workspace_mb=settings.workspace_mb,
            shape_profile=dict(settings.profile) if settings.profile else None,
        )
    except TensorRTUnavailable as why:
        say(f"TensorRT: engine build skipped: {why.reason}")
        return {"engine_skipped": why.reason}
    except Exception as error:  # noqa: BLE001 - a failed build must not lose the checked ONNX file
        say(f"TensorRT: engine build FAILED ({type(error).__name__}: {error}); the ONNX model is kept.")
        return {"engine_error": f"{type(error).__name__}: {error}"}
    say(f"TensorRT: engine written to {engine_path} (+ .json metadata).")
    return {"engine": str(engine_path)}
