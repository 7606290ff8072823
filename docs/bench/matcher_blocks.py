"""Whole `Matcher` calls of several students side by side in one process (weights/MODEL_CARD.md, "Speed").

Each student runs in onnxruntime (a .pt/.ckpt is exported on load, as `Matcher(..., backend="onnx")` does)
at 640x480, one pass; blocks of `calls` calls per student, the order rotated per block so that none always
runs first. Prints each student's block times, its median and its speed relative to the first one named.

    OMP_NUM_THREADS=1 python docs/bench/matcher_blocks.py --threads 2 \
        seed=weights/student_paper.pt default=weights/student_paper_refine.onnx previous=stage2.onnx
"""

import argparse
import time

import cv2
import numpy as np
from skimage import data

from loftr_kd import Matcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("students", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    students = dict(item.split("=", 1) for item in args.students)
    matchers = {
        name: Matcher(path, backend="onnx", threads=args.threads, size=640) for name, path in students.items()
    }
    image0 = cv2.resize(data.astronaut()[..., 0], (640, 480))
    image1 = np.roll(image0, 7, axis=1)
    for matcher in matchers.values():
        for _ in range(3):
            matcher(image0, image1)
    names = list(matchers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for block in range(args.blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(args.calls):
                matchers[name](image0, image1)
            times[name].append((time.perf_counter() - start) / args.calls * 1000)
    reference = names[0]
    for name in names:
        median = float(np.median(times[name]))
        print(
            f"{name}: ms per call by block {' '.join(f'{t:.1f}' for t in times[name])} | median {median:.1f}"
            f" | speed vs {reference} {np.median(times[reference]) / median:.2f}x"
        )


if __name__ == "__main__":
    main()
