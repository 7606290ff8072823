"""Throughput of the depth-pair loader (+ coarse ground truth) in pairs per second.

    loftr-kd-bench-loader --root data/synthetic
    loftr-kd-bench-loader --root /tmp/toy --make-toy   # writes 768x576 toy scenes first

Ground truth is ``loftr_kd.supervision.coarse_ground_truth`` at strides 8 and 16 (teacher and student),
run on the CPU as a stand-in for the training device (on a GPU it is much cheaper). See
:func:`benchmark` for the two measurements (CPU cost per pair, and wall clock of the real pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

from loftr_kd.cli import ArgumentParser
from loftr_kd.data.blendedmvs import BlendedMVSPairDataset, find_scenes
from loftr_kd.data.sampling import EpochPairSampler
from loftr_kd.data.synthetic import write_toy_dataset
from loftr_kd.files import describe_entries

PROG = "loftr-kd-bench-loader"


def _gt_available() -> str | None:
    try:
        import loftr_kd.supervision  # noqa: F401
    except ImportError as e:
        return f"not measured ({e})"
    return None


def benchmark(
    root: str | os.PathLike,
    height: int = 480,
    width: int = 640,
    batch_size: int = 8,
    num_workers: int = 2,
    pairs: int = 256,
    strides: Sequence[int] = (8, 16),
    ground_truth: bool = True,
) -> dict:
    """Loader throughput, two ways.

    * CPU cost per pair (``time.process_time`` in one process, one torch thread): loading and ground
      truth separately, over whole batches covering the first ``min(pairs, 64)`` pairs (``cpu_pairs``:
      the pairs loaded, which the times are divided by). Robust to other processes sharing the cores;
      ``est_pairs_per_s_per_idle_core`` is what one unloaded core would sustain.
    * Wall clock of the real pipeline: DataLoader with ``num_workers`` workers, ground truth on each batch
      in the main process (with the current torch thread count) — what this machine delivers right now.
      The first batch is left out (worker start-up), so with ``pairs <= batch_size`` the wall-clock
      figures are ``None`` and ``notes`` says why.

    Raises:
        ValueError: ``batch_size`` or ``pairs`` below 1.
        FileNotFoundError: no scenes under ``root``.
    """
    if batch_size < 1 or pairs < 1:
        raise ValueError(f"batch_size and pairs must be at least 1, got {batch_size} and {pairs}")
    scenes = find_scenes(root)
    if not scenes:
        raise FileNotFoundError(f"{root}: no scenes (use --make-toy to write some)")
    t0 = time.perf_counter()
    dataset = BlendedMVSPairDataset(root, scenes, height, width)
    index_s = time.perf_counter() - t0
    gt_missing = _gt_available() if ground_truth else "not requested"
    result = {
        "root": str(root),
        "scenes": len(scenes),
        "pairs_in_index": len(dataset),
        "index_seconds": round(index_s, 3),
        "size": f"{width}x{height}",
        "batch_size": batch_size,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    order = EpochPairSampler(len(dataset), pairs, seed=0).epoch_indices(0)

    # --- CPU cost per pair, single process ---
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.process_time()
    batches = []
    for k in range(0, min(pairs, 64), batch_size):  # whole batches: the last one may go past 64
        batches.append(default_collate([dataset[int(i)] for i in order[k : k + batch_size]]))
    cpu_pairs = sum(batch["image0"].shape[0] for batch in batches)  # what was loaded and is divided by
    load_ms = 1000 * (time.process_time() - start) / cpu_pairs
    result["cpu_pairs"] = cpu_pairs
    result["cpu_ms_per_pair_load"] = round(load_ms, 2)
    total_ms = load_ms
    if gt_missing is None:
        from loftr_kd.supervision import coarse_ground_truth

        coarse_ground_truth(batches[0], strides[0])  # warm-up
        start = time.process_time()
        for batch in batches:
            for stride in strides:
                coarse_ground_truth(batch, stride)
        gt_ms = 1000 * (time.process_time() - start) / cpu_pairs
        result["cpu_ms_per_pair_gt"] = round(gt_ms, 2)
        result["gt_strides"] = list(strides)
        total_ms += gt_ms
    else:
        result["ground_truth"] = gt_missing
    result["est_pairs_per_s_per_idle_core"] = round(1000 / total_ms, 1)
    torch.set_num_threads(threads)
    del batches

    # --- wall clock of the real pipeline ---
    def run(with_gt: bool) -> float:
        sampler = EpochPairSampler(len(dataset), pairs, seed=1)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
        iterator = iter(loader)
        next(iterator)  # exclude worker start-up
        count, start = 0, time.perf_counter()
        for batch in iterator:
            if with_gt:
                from loftr_kd.supervision import coarse_ground_truth

                for stride in strides:
                    coarse_ground_truth(batch, stride)
            count += batch["image0"].shape[0]
        return count / (time.perf_counter() - start)

    if pairs <= batch_size:
        # The first batch is left out (worker start-up): one batch leaves nothing to time.
        result["wall_load_pairs_per_s"] = None
        if gt_missing is None:
            result["wall_load_plus_gt_pairs_per_s"] = None
        result["notes"] = [
            f"wall clock not measured: --pairs {pairs} is one batch of --batch-size {batch_size} and the "
            "first batch is left out (worker start-up); use --pairs of at least two batches"
        ]
        return result
    result["wall_load_pairs_per_s"] = round(run(False), 1)
    if gt_missing is None:
        result["wall_load_plus_gt_pairs_per_s"] = round(run(True), 1)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root in the BlendedMVS layout")
    parser.add_argument(
        "--make-toy", action="store_true", help="write toy 768x576 scenes to --root if it has none"
    )
    parser.add_argument("--height", type=int, default=480, help="image height (default 480)")
    parser.add_argument("--width", type=int, default=640, help="image width (default 640)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch (default 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--pairs", type=int, default=256, help="pairs per measurement (default 256)")
    parser.add_argument("--no-gt", action="store_true", help="measure loading only")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads of the main process (default: torch's)"
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every option checked before any work.

    Raises:
        ValueError: the option and what is wrong with it.
    """
    from loftr_kd.images import MIN_TRAINING_SIDE

    for option, value, least in (
        ("--height", args.height, MIN_TRAINING_SIDE),
        ("--width", args.width, MIN_TRAINING_SIDE),
        ("--batch-size", args.batch_size, 1),
        ("--num-workers", args.num_workers, 0),
        ("--pairs", args.pairs, 1),
    ):
        if value < least:
            unit = f" (the shorter side of a training image needs {least} px)" if least > 1 else ""
            raise ValueError(f"{option} must be at least {least}, got {value}{unit}")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise ValueError(f"--torch-threads must be at least 1, got {args.torch_threads}")
    root = Path(args.root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--root {root} is a file, not a folder of scenes in the BlendedMVS layout")
    if find_scenes(root):
        return
    if not args.make_toy:
        what = "does not exist" if not root.exists() else "holds no scenes (<scene>/cams/pair.txt)"
        raise FileNotFoundError(
            f"--root {root} {what}; give a data root in the BlendedMVS layout, or pass --make-toy to "
            "write toy scenes into a new or empty folder"
        )
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if entries:
        raise ValueError(
            f"--root {root} holds no scenes but other files ({describe_entries(entries)}); --make-toy writes only into a new or "
            "empty folder and never replaces files: choose a new or empty folder"
        )


def run(args: argparse.Namespace) -> None:
    """Check the options, make the toy scenes if asked, measure, print the notes and the JSON."""
    check_args(args)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.make_toy and not find_scenes(args.root):
        write_toy_dataset(args.root, scenes=2, views=8)
    result = benchmark(
        args.root,
        args.height,
        args.width,
        args.batch_size,
        args.num_workers,
        args.pairs,
        ground_truth=not args.no_gt,
    )
    for note in result.get("notes", []):
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(json.dumps(result, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """``loftr-kd-bench-loader --root DIR``: loader throughput in pairs per second.

    Returns the exit status: 0, or 2 with one line on stderr for a bad input (``loftr_kd.errors``).
    """
    from loftr_kd.errors import exit_status

    args = build_parser().parse_args(argv)
    return exit_status(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
