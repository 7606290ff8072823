"""``loftr-kd-export``: Hydra entry point over ``export_student``, ``quantize_int8`` and ``build_engine``.

``run_export(cfg)`` does the work on a composed ``conf/export.yaml`` (tests call it with ``compose``);
``main`` only wraps it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from loftr_kd.config import CONFIG_DIR, register_resolvers


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export, check, optionally quantise and build an engine; returns a summary dict.

    Raises:
        ExportError: export or a check failed (the checkpoint is untouched).
    """
    from loftr_kd.export.checks import atomic_write_text, real_image_pairs
    from loftr_kd.export.onnx import export_student
    from loftr_kd.export.tensorrt import TensorRTUnavailable, build_engine

    out_dir = Path(cfg.out_dir)
    height, width = int(cfg.height), int(cfg.width)
    pairs = real_image_pairs(height, width, int(cfg.parity_pairs), seed=0)
    result = export_student(
        Path(cfg.ckpt_path),
        out_dir,
        height=height,
        width=width,
        batch=int(cfg.batch),
        dynamic=cfg.dynamic,
        opset=int(cfg.opset),
        parity_pairs=[(a, b) for a, b, _ in pairs] or None,
        with_confidence=bool(cfg.with_confidence),
        atol=float(cfg.atol),
        min_match_agreement=float(cfg.min_match_agreement),
        name=cfg.name,
    )
    parity = result.report.get("parity") or {}
    print(f"ONNX: {result.onnx_path}")
    print(
        f"  checks passed: onnx.checker, TensorRT op allow-list, parity match_confidence max diff {parity.get('match_confidence_max_abs_diff', float('nan')):.2e}, "
        f"match_ids equal {parity.get('match_ids_equal_fraction', float('nan')):.4f}"
    )
    print(f"  report: {result.report_path} (+ .md)")
    summary: dict[str, Any] = {"onnx": str(result.onnx_path), "report": str(result.report_path)}

    if cfg.int8.enabled:
        from loftr_kd.export.quantize import compare_int8, quantize_int8

        int8_path = result.onnx_path.with_suffix(".int8.onnx")
        calibration = [
            (a, b) for a, b, _ in real_image_pairs(height, width, int(cfg.int8.calibration_pairs), seed=1)
        ]
        quantize_int8(result.onnx_path, int8_path, calibration, per_channel=bool(cfg.int8.per_channel))
        validation = real_image_pairs(height, width, 8, seed=2)
        comparison = compare_int8(result.onnx_path, int8_path, validation)
        atomic_write_text(int8_path.with_suffix(".json"), json.dumps(comparison, indent=2) + "\n")
        print(
            f"INT8: {int8_path}: {comparison['speedup']:.2f}x vs fp32, agreement "
            f"{comparison['agreement_with_fp32']:.3f}, precision change {comparison.get('precision_change')}"
        )
        summary["int8"] = str(int8_path)
        summary["int8_comparison"] = comparison

    if cfg.tensorrt.enabled:
        precision = "fp16" if cfg.tensorrt.fp16 else "fp32"
        engine_path = result.onnx_path.with_suffix(f".{precision}.engine")
        try:
            build_engine(
                result.onnx_path,
                engine_path,
                fp16=bool(cfg.tensorrt.fp16),
                workspace_mb=int(cfg.tensorrt.workspace_mb),
                shape_profile=OmegaConf.to_container(cfg.tensorrt.profile)
                if cfg.tensorrt.get("profile")
                else None,
            )
            print(f"TensorRT: {engine_path} (+ .json metadata)")
            summary["engine"] = str(engine_path)
        except TensorRTUnavailable as why:
            print(f"TensorRT: engine build skipped: {why.reason}")
            summary["engine_skipped"] = why.reason
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """``loftr-kd-export ckpt_path=...`` (see conf/export.yaml)."""
    from loftr_kd.export.onnx import ExportError

    register_resolvers()
    try:
        run_export(cfg)
    except ExportError as error:
        print(f"export failed: {error}")
        raise SystemExit(1) from error


if __name__ == "__main__":
    main()
