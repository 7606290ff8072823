"""The student profiler behind ``loftr-kd-profile``: presets timed in onnxruntime, whole model and per stage
(backbone / transformer / matching).

Each preset (``conf/student/<name>.yaml``, random weights: speed does not depend on them) is fused for
inference (``CoarseLoFTRStudent.prepare_for_inference``), exported with the
TorchScript exporter at opset 17, and run in onnxruntime on CPU, batch 1. Besides the whole model, three
sub-graphs are exported and timed on their own:

- ``backbone``: both images stacked, ``(2, 1, H, W) -> (2, C, h, w)`` (the model runs one pass per pair);
- ``transformer``: position encoding + coarse transformer, ``(1, C, h, w) x 2 -> (1, L, C) x 2``;
- ``matching``: similarity, dual softmax, mutual nearest neighbours, ``(1, L, C) x 2 -> match_ids, conf``.

All sessions are timed **interleaved** (round-robin, one run each per repeat) in one process, so
machine load hits every preset alike: on a shared machine compare the ratios to the first preset, and
read the absolute numbers as upper bounds. onnxruntime's thread spinning is off in every session
(:func:`interleaved_session`), as in the student search's latency measurement. Reported per graph: median and minimum wall time, median
process CPU time (all onnxruntime threads; less sensitive to other processes than wall time).
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loftr_kd.config import CONFIG_DIR, preset_values
from loftr_kd.models.student import CoarseLoFTRStudent, build_student, count_parameters
from loftr_kd.runtime import op_histogram, ort_session, time_sessions

CONF_DIR = CONFIG_DIR / "student"


def load_preset(name: str, height: int, width: int, fuse: bool = True) -> CoarseLoFTRStudent:
    """Build ``conf/student/<name>.yaml`` (without Hydra) for ``height x width``, fused for inference.

    ``name`` may carry field overrides after ``+``, values in YAML syntax:
    ``fast+block_depths=[1,2,3]+initial_dim=16``.
    """
    import yaml

    preset, *overrides = name.split("+")
    values = preset_values(preset, CONF_DIR.parent)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"preset override {override!r} in {name!r} is not key=value")
        values[key] = yaml.safe_load(value)
    values.update(input_height=height, input_width=width)
    model = build_student(**values).eval()
    return model.prepare_for_inference(inplace=True) if fuse else model


def _full_graph(model: CoarseLoFTRStudent) -> nn.Module:
    """The exported student, with every output the shipped graph has (refined positions included)."""
    from loftr_kd.export.onnx import ExportWrapper

    return ExportWrapper(model)


class _Backbone(nn.Module):
    """Backbone on a stacked pair ``(2B, 1, H, W) -> (2B, C, h, w)``."""

    def __init__(self, model: CoarseLoFTRStudent) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


class _Transformer(nn.Module):
    """Position encoding + coarse transformer ``(B, C, h, w) x 2 -> (B, L, C) x 2``."""

    def __init__(self, model: CoarseLoFTRStudent) -> None:
        super().__init__()
        self.pos_encoding, self.loftr_coarse = model.pos_encoding, model.loftr_coarse

    def forward(self, feat_c0: torch.Tensor, feat_c1: torch.Tensor):
        feat0 = self.pos_encoding(feat_c0).flatten(2).transpose(1, 2)  # (B, L, C)
        feat1 = self.pos_encoding(feat_c1).flatten(2).transpose(1, 2)  # (B, L, C)
        return self.loftr_coarse(feat0, feat1)


class _Matching(nn.Module):
    """Dual-softmax matching ``(B, L, C) x 2 -> match_ids (int32), match_confidence``."""

    def __init__(self, model: CoarseLoFTRStudent) -> None:
        super().__init__()
        self.coarse_matching = model.coarse_matching

    def forward(self, feat0: torch.Tensor, feat1: torch.Tensor):
        out = self.coarse_matching(feat0, feat1)
        return out.match_ids.to(torch.int32), out.match_confidence


def stage_graphs(model: CoarseLoFTRStudent) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """The whole model and its three stages, each with an example input (batch 1)."""
    cfg = model.config
    height, width, (h, w), channels = cfg.input_height, cfg.input_width, cfg.grid, cfg.d_model
    image = torch.rand(1, 1, height, width)
    return {
        "full": (_full_graph(model), (image, torch.rand(1, 1, height, width))),
        "backbone": (_Backbone(model), (torch.rand(2, 1, height, width),)),
        "transformer": (
            _Transformer(model),
            (torch.randn(1, channels, h, w), torch.randn(1, channels, h, w)),
        ),
        "matching": (_Matching(model), (torch.randn(1, h * w, channels), torch.randn(1, h * w, channels))),
    }


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """TorchScript-exporter ONNX at opset 17 (as ``loftr_kd.export.onnx``), static shapes."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            inputs,
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=True,
            input_names=[f"input{i}" for i in range(len(inputs))],
        )
    return path


STAGE_OF_NODE = (("backbone", "backbone"), ("loftr_coarse", "transformer"), ("pos_encoding", "transformer"))
STAGE_OF_NODE += (("coarse_matching", "matching"),)


def _stage_of(name: str, backbone_scopes: frozenset[str]) -> str:
    """The stage of a node by its (PyTorch module) name. The exporter drops the ``backbone`` scope of the
    whole graph's backbone nodes (``/model/layer1/...``, ``/model/conv1_1/...``), so they are also told by
    their first scope being one of the backbone's children (``_N`` / ``.N`` suffixes stripped)."""
    import re

    scope = name.split("/")[2] if name.startswith("/") and name.count("/") > 2 else ""
    if re.sub(r"([._]\d+)+$", "", scope) in backbone_scopes:  # layer1_1 (a second call), layers.0 (a list)
        return "backbone"
    return next((stage for part, stage in STAGE_OF_NODE if part in name), "other")


def op_profile(
    paths: dict[Any, tuple[Path, dict[str, np.ndarray]]],
    threads: int,
    repeats: int,
    backbone_scopes: dict[Any, frozenset[str]] | None = None,
) -> dict:
    """Per-stage sums of onnxruntime's own per-node kernel times (median over runs) in the whole graph.

    Kernel times exclude time a thread spends descheduled between nodes and Python overhead, so on a
    loaded machine they are much steadier than wall time; with ``threads=1`` they are close to the
    single-core work of each stage. Nodes are assigned to stages by their (PyTorch module) names
    (:func:`_stage_of`; ``backbone_scopes``: each graph's backbone child modules).
    """
    import json as _json

    sessions = {
        key: (
            interleaved_session(path, threads, profile_prefix=f"{path.with_suffix('')}_prof{threads}"),
            feeds,
        )
        for key, (path, feeds) in paths.items()
    }
    for _ in range(repeats):  # interleaved, as time_interleaved
        for session, feeds in sessions.values():
            session.run(None, feeds)
    result = {}
    for key, (session, _) in sessions.items():
        per_node: dict[str, list[float]] = {}
        for event in _json.loads(Path(session.end_profiling()).read_text()):
            name = event.get("name", "")
            if event.get("cat") == "Node" and name.endswith("_kernel_time"):
                per_node.setdefault(name, []).append(event["dur"] / 1e3)
        stages = {"backbone": 0.0, "transformer": 0.0, "matching": 0.0, "other": 0.0}
        scopes = (backbone_scopes or {}).get(key, frozenset())
        for name, durations in per_node.items():
            stages[_stage_of(name, scopes)] += float(np.median(durations))
        stages["total"] = sum(stages.values())
        result[key] = stages
    return result


def interleaved_session(path: Path, threads: int, profile_prefix: str | None = None) -> Any:
    """An onnxruntime session for round-robin timing: thread spinning off, as the student search times
    (``loftr_kd.search.latency``, ``runtime.time_onnx``): an idle session's spinning threads would steal
    the cores of the session being timed and bias the ratios between graphs."""
    return ort_session(path, threads=threads, profile_prefix=profile_prefix, spinning=False)


def profile(
    presets: list[str], sizes: list[tuple[int, int]], threads: int, repeats: int, workdir: Path
) -> dict[str, Any]:
    """Export every preset x size x stage, time them interleaved, return rows plus machine info."""
    torch.set_num_threads(1)  # tracing only; keep the CPU for onnxruntime
    sessions: dict[tuple[str, int, int, str], tuple[Any, dict[str, np.ndarray]]] = {}
    full_graphs: dict[tuple[str, int, int], tuple[Path, dict[str, np.ndarray]]] = {}
    info: dict[tuple[str, int, int], dict[str, Any]] = {}
    backbone_scopes: dict[tuple[str, int, int], frozenset[str]] = {}
    for name in presets:
        fuse = not name.endswith(":unfused")
        preset = name.split(":")[0]
        for height, width in sizes:
            model = load_preset(preset, height, width, fuse=fuse)
            info[(name, height, width)] = {
                "params": count_parameters(model),
                "backbone_params": count_parameters(model.backbone),
            }
            backbone_scopes[(name, height, width)] = frozenset(n for n, _ in model.backbone.named_children())
            for stage, (module, inputs) in stage_graphs(model).items():
                path = export_graph(
                    module, inputs, workdir / f"{len(info)}_{int(fuse)}_{height}x{width}_{stage}.onnx"
                )
                if stage == "full":
                    ops = op_histogram(path)
                    info[(name, height, width)]["ops"] = ops
                session = interleaved_session(path, threads)
                feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
                sessions[(name, height, width, stage)] = (session, feeds)
                if stage == "full":
                    full_graphs[(name, height, width)] = (path, feeds)
    load_before = os.getloadavg()
    timings = time_sessions(sessions, repeats)
    kernel_rows = []
    for profile_threads in sorted({1, threads}):
        kernels = op_profile(full_graphs, profile_threads, repeats, backbone_scopes)
        for (name, height, width), stages in kernels.items():
            base = kernels[(presets[0], height, width)]["total"]
            kernel_rows.append(
                {"preset": name, "height": height, "width": width, "threads": profile_threads, **stages}
                | {f"ratio_vs_{presets[0]}": stages["total"] / base}
            )
    load_after = os.getloadavg()
    rows = []
    for (name, height, width, stage), timing in timings.items():
        base = timings[(presets[0], height, width, stage)]
        rows.append(
            {
                "preset": name,
                "height": height,
                "width": width,
                "stage": stage,
                **timing,
                "pairs_per_s_median": 1e3 / timing["median_ms"] if stage == "full" else None,
                "pairs_per_s_best": 1e3 / timing["min_ms"] if stage == "full" else None,
                f"ratio_median_vs_{presets[0]}": timing["median_ms"] / base["median_ms"],
                f"ratio_min_vs_{presets[0]}": timing["min_ms"] / base["min_ms"],
                f"ratio_cpu_vs_{presets[0]}": timing["cpu_median_ms"] / base["cpu_median_ms"],
            }
        )
    import onnxruntime as ort

    return {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": threads,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "loadavg_1m_before": load_before[0],
            "loadavg_1m_after": load_after[0],
            "repeats": repeats,
            "onnxruntime_spinning": False,  # interleaved_session
        },
        "models": {f"{n}@{h}x{w}": v for (n, h, w), v in info.items()},
        "rows": rows,
        "kernel_rows": kernel_rows,
    }


def _conv_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Inference-form conv (bias) + ReLU, padding ``kernel // 2`` for odd kernels."""
    padding = kernel // 2 if kernel % 2 else 0
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups), nn.ReLU()]


def _separable(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """Depthwise 3x3 + pointwise 1x1, each with ReLU."""
    return _conv_relu(c_in, c_in, 3, stride, groups=c_in) + _conv_relu(c_in, c_out, 1)


def backbone_variants() -> dict[str, nn.Module]:
    """Candidate backbones in inference form (all ``(N, 1, H, W) -> (N, 32, H/16, W/16)``)."""
    from loftr_kd.models.fast_backbone import FastBackbone

    def fused(block_dims: tuple[int, ...], depths: tuple[int, ...]) -> nn.Module:
        return FastBackbone(8, block_dims, depths).reparameterize()

    patchify = [*_conv_relu(1, 16, 4, 4), *_conv_relu(16, 16), *_conv_relu(16, 32, 3, 2), *_conv_relu(32, 32)]
    patchify += [*_conv_relu(32, 32, 3, 2)] + [m for _ in range(3) for m in _conv_relu(32, 32)]
    separable = [*_conv_relu(1, 8, 3, 2), *_separable(8, 16, 2), *_separable(16, 16), *_separable(16, 32, 2)]
    separable += [*_separable(32, 32), *_separable(32, 32, 2)] + [
        m for _ in range(3) for m in _separable(32, 32)
    ]
    return {
        "paper (resnet_fpn)": load_preset("paper", 480, 640).backbone,
        "fast (1,1,3) fused": fused((16, 32, 32), (1, 1, 3)),
        "fast (1,1,3) unfused": load_preset("fast", 480, 640, fuse=False).backbone,
        "fast (1,1,2) fused": fused((16, 32, 32), (1, 1, 2)),
        "fast (0,1,3) fused": fused((16, 32, 32), (0, 1, 3)),
        "fast (1,2,3) fused": fused((16, 32, 32), (1, 2, 3)),
        "4x4/4 patchify stem, 16 ch": nn.Sequential(*patchify, nn.Conv2d(32, 32, 1, bias=False)),
        "depthwise-separable, same layout": nn.Sequential(*separable, nn.Conv2d(32, 32, 1, bias=False)),
        "24-channel 1/8 stage": fused((16, 24, 32), (1, 1, 3)),
    }


def profile_backbone_variants(height: int, width: int, repeats: int, workdir: Path) -> str:
    """1-thread kernel time of each :func:`backbone_variants` entry on a stacked pair, as Markdown."""
    torch.set_num_threads(1)
    graphs, params = {}, {}
    images = torch.rand(2, 1, height, width)
    for index, (name, module) in enumerate(backbone_variants().items()):
        path = export_graph(module.eval(), (images,), workdir / f"variant{index}.onnx")
        graphs[name] = (path, {"input0": images.numpy()})
        params[name] = count_parameters(module)
    kernels = op_profile(graphs, 1, repeats)
    reference = next(iter(kernels.values()))["total"]
    lines = [
        f"backbone only, both images ({height}x{width}), 1-thread onnxruntime kernel time:",
        "",
        "| backbone variant | params (inference form) | ms | ratio vs paper |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, stages in kernels.items():
        total = stages["total"]
        lines.append(f"| {name} | {params[name]:,} | {total:.2f} | {total / reference:.3f} |")
    return "\n".join(lines)


def markdown(result: dict[str, Any], reference: str) -> str:
    """A Markdown table of the rows."""
    lines = [
        f"| preset | size | stage | median ms | min ms | CPU ms | pairs/s (median / best) | "
        f"ratio vs {reference} (median / min / CPU) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        pairs = (
            f"{row['pairs_per_s_median']:.1f} / {row['pairs_per_s_best']:.1f}"
            if row["stage"] == "full"
            else ""
        )
        lines.append(
            f"| {row['preset']} | {row['height']}x{row['width']} | {row['stage']} | {row['median_ms']:.2f} | "
            f"{row['min_ms']:.2f} | {row['cpu_median_ms']:.2f} | {pairs} | "
            f"{row[f'ratio_median_vs_{reference}']:.3f} / {row[f'ratio_min_vs_{reference}']:.3f} / "
            f"{row[f'ratio_cpu_vs_{reference}']:.3f} |"
        )
    lines += [
        "",
        "onnxruntime kernel time per stage (ms, sum of per-node medians in the whole graph):",
        "",
        f"| preset | size | threads | backbone | transformer | matching | other | total | ratio vs {reference} |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["kernel_rows"]:
        lines.append(
            f"| {row['preset']} | {row['height']}x{row['width']} | {row['threads']} | {row['backbone']:.2f} | "
            f"{row['transformer']:.2f} | {row['matching']:.2f} | {row['other']:.2f} | {row['total']:.2f} | "
            f"{row[f'ratio_vs_{reference}']:.3f} |"
        )
    return "\n".join(lines)


def report_text(result: dict[str, Any], reference: str) -> str:
    """What ``loftr-kd-profile`` prints: the machine, every model's size and Einsum count, the tables."""
    machine = result["machine"]
    lines = [
        f"onnxruntime {machine['onnxruntime']}, {machine['threads']} threads, {machine['cores']} cores visible, "
        f"{machine['repeats']} interleaved repeats; 1-min load average {machine['loadavg_1m_before']:.1f} -> "
        f"{machine['loadavg_1m_after']:.1f}"
    ]
    for key, model in result["models"].items():
        einsum = model["ops"].get("Einsum", 0)
        lines.append(
            f"{key}: {model['params']:,} params (backbone {model['backbone_params']:,}); Einsum ops: {einsum}"
        )
    return "\n".join([*lines, markdown(result, reference)])
