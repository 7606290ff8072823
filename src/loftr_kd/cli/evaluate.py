"""``loftr-kd-evaluate``: compare students (weights x backends) and ORB/SIFT on HPatches homographies,
relative pose from a pair list, and coarse ground truth of validation scenes (Hydra app, config
``conf/evaluate.yaml``). The work is done by :func:`evaluate`, callable without Hydra's entry point."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from loftr_kd.cli import hydra_command
from loftr_kd.files import write_json, write_text

log = logging.getLogger(__name__)


def build_methods(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Matchers named in ``cfg.methods``; students with missing weights are skipped when allowed."""
    from loftr_kd.matcher import build_matcher
    from loftr_kd.registration import with_guidance

    methods, skipped = {}, {}
    for name, spec in (cfg.methods or {}).items():
        if spec is None:
            continue
        spec = OmegaConf.to_container(spec, resolve=True)
        backend = spec.pop("backend", "onnx")
        weights = spec.pop("weights", None)
        guided = spec.pop("guided", None)
        if "threads" not in spec and "num_threads" not in spec:
            spec["threads"] = cfg.get("threads")
        try:
            methods[name] = with_guidance(build_matcher(backend, weights=weights, **spec), guided)
        except ValueError as err:
            raise ValueError(f"methods.{name}: {err}") from None
        except FileNotFoundError as err:
            if not cfg.get("skip_missing_weights", True):
                raise
            log.warning("skipping %s: %s", name, err)
            skipped[name] = str(err)
    if not methods:
        raise ValueError(f"no method to evaluate (skipped: {skipped or 'none configured'})")
    return methods, skipped


def _coarse_batches(cfg: DictConfig):
    """Factory of validation batches for the coarse benchmark (None when not configured)."""
    if not cfg.coarse.get("root"):
        return None
    from loftr_kd.data.datamodule import PairDataModule

    module = PairDataModule(
        kind=cfg.coarse.kind,
        root=cfg.coarse.root,
        height=cfg.coarse.height,
        width=cfg.coarse.width,
        batch_size=cfg.coarse.batch_size,
        num_workers=0,
        val_pairs=cfg.coarse.max_pairs,
        seed=cfg.seed,
    )
    module.setup("validate")
    return module.val_dataloader


def evaluate(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every configured benchmark for every method; write the reports to ``out_dir``
    (default: the Hydra run directory). Returns the results dict."""
    from loftr_kd import evaluation as ev

    out_dir = Path(out_dir) if out_dir is not None else Path(cfg.paths.output_dir)
    previous = [n for n in ("results.json", "results.md", "per_method") if (out_dir / n).exists()]
    if previous:
        raise ValueError(
            f"{out_dir} already holds evaluation results ({', '.join(previous)}); an evaluation never "
            "overwrites them: give a new hydra.run.dir (or leave it to the default)"
        )
    h, p, c = cfg.homography, cfg.pose, cfg.coarse
    if not (h.get("root") or p.get("pairs") or p.get("scenes") or c.get("root")):
        raise ValueError(
            "nothing to evaluate: set homography.root, pose.pairs, pose.scenes and/or coarse.root"
        )
    homography_pairs = pose_pairs = None
    if h.get("root"):
        homography_pairs = ev.load_hpatches(h.root, h.get("sequences"))[: h.get("max_pairs")]
    if p.get("pairs"):
        pose_pairs = ev.load_pose_pairs(p.pairs, p.get("image_root"))[: p.get("max_pairs")]
    elif p.get("scenes"):  # the held-out scenes of a BlendedMVS-layout set (synthetic or real)
        pose_pairs = ev.pose_pairs_from_scenes(p.scenes, max_pairs=p.get("max_pairs"), seed=cfg.seed)
    coarse = _coarse_batches(cfg)
    methods, skipped = build_methods(cfg)

    results: dict[str, Any] = {"methods": {}, "skipped": skipped}
    for name, matcher in methods.items():
        results["methods"][name] = ev.run_evaluation(
            {name: matcher},
            out_dir / "per_method" / name,
            homography_pairs=homography_pairs,
            pose_pairs=pose_pairs,
            coarse_batches=coarse,
            coarse_stride=getattr(matcher, "stride", c.stride),
            homography_kwargs={
                "thresholds": list(h.thresholds),
                "precision_thresholds": list(h.precision_thresholds),
                "ransac": h.ransac,
                "ransac_threshold": h.ransac_threshold,
                "short_side": h.short_side,
                "correct_threshold": h.get("correct_threshold", 5.0),
            },
            pose_kwargs={
                "thresholds": list(p.thresholds),
                "ransac_threshold_px": p.ransac_threshold_px,
                "epipolar_threshold": p.epipolar_threshold,
            },
        )["methods"][name]
    results["config"] = OmegaConf.to_container(cfg, resolve=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    markdown = ev.markdown_report(results)
    if skipped:
        markdown += "\nSkipped: " + "; ".join(f"{n} ({why})" for n, why in skipped.items()) + "\n"
    write_text(out_dir / "results.md", markdown)
    ev.plot_auc_curves(results, out_dir)
    print(markdown)
    print(f"results in {out_dir}")
    return results


main = hydra_command("loftr-kd-evaluate", "evaluate", evaluate)


if __name__ == "__main__":
    main()
