"""How far refined matches move between backends and thread counts (docs/usage.md, "Reproducibility").

Matches the held-out photo pairs with the shipped student on onnxruntime and torch, at 1 and 2 threads,
and compares ``keypoints1`` of the matches both runs found (same ``keypoints0``)::

    OMP_NUM_THREADS=1 .venv/bin/python tools/backend_agreement.py [--pairs data/photo_homographies_heldout] [--count 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from loftr_kd import Matcher
from loftr_kd.images import read_image


def compare(first: list[dict], second: list[dict]) -> str:
    common = moved = over_1px = 0
    worst = 0.0
    for a, b in zip(first, second):
        points_a = {tuple(k): p for k, p in zip(a["keypoints0"].round(3), a["keypoints1"])}
        points_b = {tuple(k): p for k, p in zip(b["keypoints0"].round(3), b["keypoints1"])}
        shared = points_a.keys() & points_b.keys()
        distance = np.array([np.linalg.norm(points_a[k] - points_b[k]) for k in shared])
        common += len(shared)
        moved += int((distance > 0.01).sum())
        over_1px += int((distance > 1).sum())
        worst = max(worst, float(distance.max(initial=0.0)))
    return f"{common} matches in both, {moved} moved > 0.01 px, {over_1px} > 1 px, the most by {worst:.1f} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=Path("data/photo_homographies_heldout"))
    parser.add_argument("--count", type=int, default=30)
    args = parser.parse_args()
    folders = sorted(p for p in args.pairs.iterdir() if (p / "1.png").is_file())[: args.count]
    if not folders:
        parser.error(
            f"{args.pairs}: no pair folders (<pair>/1.png, 2.png); build them with loftr-kd-evaluate"
        )
    pairs = [(read_image(f / "1.png"), read_image(f / "2.png")) for f in folders]
    runs = {}
    for backend in ("onnx", "torch"):
        for threads in (1, 2):
            matcher = Matcher(backend=backend, threads=threads)
            runs[backend, threads] = [matcher(a, b) for a, b in pairs]
    print(f"{len(pairs)} pairs of {args.pairs}")
    for x, y in (
        (("onnx", 1), ("onnx", 2)),
        (("torch", 1), ("torch", 2)),
        (("onnx", 1), ("torch", 1)),
        (("onnx", 2), ("torch", 2)),
    ):
        print(f"{x[0]} {x[1]} thread(s) vs {y[0]} {y[1]}: {compare(runs[x], runs[y])}")


if __name__ == "__main__":
    main()
