"""``loftr-kd-evaluate``: compare students (weights x backends) and ORB/SIFT on HPatches homographies,
relative pose from a pair list, and coarse ground truth of validation scenes (Hydra app, config
``conf/evaluate.yaml``); with no benchmark given, on the held-out photo pairs, built on first use. The work
is done by :func:`evaluate`, callable without Hydra's entry point."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from loftr_kd.classical import opencv_threads
from loftr_kd.cli import hydra_command
from loftr_kd.files import record_outputs, write_json, write_text

log = logging.getLogger(__name__)


def build_methods(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Matchers named in ``cfg.methods``; students with missing weights are skipped when allowed."""
    from loftr_kd.matcher import REFERENCE_METHODS, Matcher, build_matcher
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
        own_size = "size" in spec
        if not own_size and backend in REFERENCE_METHODS:
            spec["size"] = cfg.get("size")
        try:
            matcher = build_matcher(backend, weights=weights, **spec)
            if isinstance(matcher, Matcher) and not own_size and cfg.get("size") is not None:
                if matcher.dynamic:
                    # every method at the same long side: a checkpoint's own would be its training size
                    matcher.size = int(cfg.size)
                elif matcher.size != int(cfg.size):
                    log.info("%s: static input %d px long, not size=%s", name, matcher.size, cfg.size)
            methods[name] = with_guidance(matcher, guided)
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


def provenance(cfg: DictConfig, methods: dict[str, Any]) -> dict[str, Any]:
    """What the results were computed with: commit, packages and machine (the CPU threads given), each
    method's weights file and SHA-256 (a path alone names whatever the file holds today) and the protocol
    settings that change rankings (the robust estimators, the sizes)."""
    from loftr_kd.bench.report import machine_info
    from loftr_kd.files import sha256_file
    from loftr_kd.rundir import run_metadata

    weights, digests = {}, {}
    for name, method in methods.items():
        path = getattr(getattr(method, "matcher", method), "weights", None)  # a guided one wraps its matcher
        if isinstance(path, Path) and path.is_file():
            if path not in digests:  # the guided and one-pass student read one file: hashed once
                digests[path] = sha256_file(path)
            weights[name] = {"path": str(path), "sha256": digests[path]}
    h, p, c = cfg.homography, cfg.pose, cfg.coarse
    return {
        **run_metadata(),
        "machine": machine_info(cfg.get("threads")),
        "weights": weights,
        "protocol": {
            "size": cfg.get("size"),
            "homography": {
                "estimator": h.ransac,
                "threshold_px": h.ransac_threshold,
                "short_side": h.short_side,
            },
            "pose": {"estimator": "essential matrix, RANSAC (OpenCV)", "threshold_px": p.ransac_threshold_px},
            "coarse": {"height": c.height, "width": c.width},
        },
    }


def provenance_lines(run: dict[str, Any]) -> str:
    """The Markdown footer of :func:`provenance`: protocol, machine, commit and weights, one line each."""
    protocol, machine = run["protocol"], run["machine"]
    h, p, c = protocol["homography"], protocol["pose"], protocol["coarse"]
    lines = [
        "",
        f"Protocol: long side {protocol['size']} px; homography {h['estimator']} at {h['threshold_px']:g} px "
        f"(short side {h['short_side']}); pose {p['estimator']} at {p['threshold_px']:g} px; coarse ground "
        f"truth at {c['width']}x{c['height']}.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, threads {machine['threads'] or 'default'}, GPU "
        f"{machine['gpu'] or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
        + f"; commit {(run.get('git_commit') or 'unknown')[:12]}{' (modified)' if run.get('git_dirty') else ''}.",
    ]
    lines += [f"Weights of {n}: {w['path']} (sha256 {w['sha256'][:16]})." for n, w in run["weights"].items()]
    return "\n".join(lines) + "\n"


def heldout_pairs(heldout: DictConfig) -> Path:
    """The held-out photo pairs at ``heldout.root``, built there on first use (``loftr-kd-evaluate`` with no
    benchmark set).

    Raises:
        ValueError: the folder holds something other than the complete pairs (nothing in it is touched).
    """
    from loftr_kd.data.homography import write_photo_set_pairs

    root = Path(str(heldout.root))
    folders = [root / f"h_{i:04d}" for i in range(int(heldout.pairs))]
    lost = next(
        (f / name for f in folders for name in ("1.png", "2.png", "H_1_2") if not (f / name).is_file()), None
    )
    beyond = root / f"h_{int(heldout.pairs):04d}"
    if lost is None and not beyond.exists():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        what = (
            f"more than the {heldout.pairs} held-out photo pairs ({beyond.name})"
            if lost is None
            else (f"something other than the {heldout.pairs} held-out photo pairs (no {lost})")
        )
        raise ValueError(
            f"heldout.root={root} holds {what}; nothing in it was touched: rebuild the pairs with "
            f"loftr-kd-homographies --photo-set {heldout.photo_set} --out {root} --pairs {heldout.pairs} "
            f"--seed {heldout.seed}, or evaluate the folder as it is with homography.root={root}"
        )
    print(f"building the {heldout.pairs} held-out photo pairs in {root} (once)", flush=True)
    written = write_photo_set_pairs(str(heldout.photo_set), root, int(heldout.pairs), seed=int(heldout.seed))
    # recorded as loftr-kd-homographies records its pairs, so its README command may rebuild them in place
    record_outputs(
        [path for pair in written for path in sorted(Path(pair).iterdir())], "loftr-kd-homographies"
    )
    return root


def _scene_names(root: str, names: Any) -> list[str] | None:
    """``pose.scene_names``: ``None`` = the set's validation scenes; ``all`` = every scene (a set made only
    for testing, e.g. synthetic scenes of another seed); or a list of names."""
    if names is None:
        return None
    if names == "all":
        from loftr_kd.data.blendedmvs import find_scenes

        scenes = find_scenes(root)
        if not scenes:
            raise ValueError(f"pose.scenes={root}: no scene folders there (pose.scene_names=all)")
        return scenes
    if isinstance(names, str):
        raise ValueError(f"pose.scene_names must be null, 'all' or a list of scene names, got {names!r}")
    return [str(n) for n in names]


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


def check_benchmark_settings(cfg: DictConfig) -> None:
    """The counts and thresholds of every benchmark (before any work: a zero count gave an empty report,
    a negative threshold an AUC of 0, both without a word).

    Raises:
        ValueError: one line naming the setting and what it needs.
    """
    import math

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    heldout = cfg.get("heldout") or {}
    for key, least in (("pairs", 1), ("seed", 0)):
        value = heldout.get(key)
        if key in heldout and not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            raise ValueError(f"heldout.{key}={value!r}: expected an integer >= {least}")
    for group in ("homography", "pose", "coarse"):
        settings = cfg.get(group) or {}
        count = settings.get("max_pairs")
        if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
            raise ValueError(f"{group}.max_pairs={count!r}: expected a number of pairs >= 1, or null for all")
        for key in ("thresholds", "precision_thresholds"):
            values = settings.get(key)
            if values is None:
                continue
            listed = list(values) if OmegaConf.is_list(values) or isinstance(values, (list, tuple)) else None
            if not listed or not all(number(v) and v > 0 for v in listed):
                raise ValueError(f"{group}.{key}={values!r}: expected a non-empty list of numbers > 0")
        for key in ("ransac_threshold", "correct_threshold", "ransac_threshold_px", "epipolar_threshold"):
            value = settings.get(key)
            if value is not None and not (number(value) and value > 0):
                raise ValueError(f"{group}.{key}={value!r}: expected a number > 0")


def evaluate(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every configured benchmark for every method; write the reports to ``out_dir``
    (default: the Hydra run directory). Returns the results dict."""
    from loftr_kd import evaluation as ev

    check_benchmark_settings(cfg)
    out_dir = Path(out_dir) if out_dir is not None else Path(cfg.paths.output_dir)
    previous = [n for n in ("results.json", "results.md", "per_method") if (out_dir / n).exists()]
    if previous:
        raise ValueError(
            f"{out_dir} already holds evaluation results ({', '.join(previous)}); an evaluation never "
            "overwrites them: give a new hydra.run.dir (or leave it to the default)"
        )
    h, p, c = cfg.homography, cfg.pose, cfg.coarse
    homography_root = h.get("root")
    if not (homography_root or p.get("pairs") or p.get("scenes") or c.get("root")):
        homography_root = heldout_pairs(cfg.heldout)
    homography_pairs = pose_pairs = None
    if homography_root:
        homography_pairs = ev.load_hpatches(homography_root, h.get("sequences"))[: h.get("max_pairs")]
    if p.get("pairs"):
        pose_pairs = ev.load_pose_pairs(p.pairs, p.get("image_root"))[: p.get("max_pairs")]
    elif p.get("scenes"):  # the held-out scenes of a BlendedMVS-layout set (synthetic or real)
        pose_pairs = ev.pose_pairs_from_scenes(
            p.scenes,
            _scene_names(p.scenes, p.get("scene_names")),
            max_pairs=p.get("max_pairs"),
            seed=cfg.seed,
        )
    coarse = _coarse_batches(cfg)
    with opencv_threads(cfg.get("threads")):  # OpenCV's own pool (ORB, SIFT, MAGSAC) follows threads too
        return _evaluate(cfg, out_dir, homography_pairs, pose_pairs, coarse)


def _evaluate(
    cfg: DictConfig, out_dir: Path, homography_pairs: Any, pose_pairs: Any, coarse: Any
) -> dict[str, Any]:
    """:func:`evaluate` once the benchmarks are loaded: every method on each, then the reports."""
    from loftr_kd import evaluation as ev

    h, p, c = cfg.homography, cfg.pose, cfg.coarse
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
    results["run"] = provenance(cfg, methods)
    results["config"] = OmegaConf.to_container(cfg, resolve=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    markdown = ev.markdown_report(results) + provenance_lines(results["run"])
    if skipped:
        markdown += "\nSkipped: " + "; ".join(f"{n} ({why})" for n, why in skipped.items()) + "\n"
    write_text(out_dir / "results.md", markdown)
    ev.plot_auc_curves(results, out_dir)
    print(markdown)
    print(f"results in {out_dir}")
    return results


main = hydra_command(
    "loftr-kd-evaluate",
    "evaluate",
    evaluate,
    summary="compare the student (guided and one pass) with ORB and SIFT on homography pairs, relative pose and coarse ground truth; without arguments, on the held-out photo pairs",
)


if __name__ == "__main__":
    main()
