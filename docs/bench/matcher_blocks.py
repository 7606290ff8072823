"""Several students side by side in one process, timed in blocks (weights/MODEL_CARD.md, "Speed").

Whole `Matcher` calls by default: each student runs in onnxruntime (a .pt/.ckpt is exported on load, as
`Matcher(..., backend="onnx")` does) at 640x480, one pass. `--raw` times bare onnxruntime sessions of
.onnx files instead (one pair fed as is: no resizing, no post-processing). Blocks of `calls` calls per
student, the order rotated per block so that none always runs first. Prints each student's block times,
its median and its speed relative to the first one named.

    OMP_NUM_THREADS=1 python docs/bench/matcher_blocks.py --threads 2 \
        seed=weights/student_paper.pt default=weights/student_paper_refine.onnx previous=stage2.onnx
    OMP_NUM_THREADS=1 python docs/bench/matcher_blocks.py --raw --threads 1 --blocks 6 new=NEW.onnx old=OLD.onnx
"""

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
from skimage import data


def bench_pair() -> tuple[np.ndarray, np.ndarray]:
    """The timed pair: scikit-image's astronaut (red channel) at 640x480 and the same shifted by 7 px."""
    image0 = cv2.resize(data.astronaut()[..., 0], (640, 480))
    return image0, np.roll(image0, 7, axis=1)


def matcher_call(path: str, threads: int, image0: np.ndarray, image1: np.ndarray) -> Callable[[], object]:
    """One whole `Matcher` call on the pair."""
    from loftr_kd import Matcher

    matcher = Matcher(path, backend="onnx", threads=threads, size=640)
    return lambda: matcher(image0, image1)


def raw_call(path: str, threads: int, image0: np.ndarray, image1: np.ndarray) -> Callable[[], object]:
    """One bare onnxruntime session run on the pair (float images in [0, 1], shape (1, 1, H, W))."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {
        name: image.astype(np.float32)[None, None] / 255
        for name, image in (("image0", image0), ("image1", image1))
    }
    return lambda: session.run(None, feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("students", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--raw", action="store_true", help="bare onnxruntime sessions of .onnx files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    image0, image1 = bench_pair()
    make_call = raw_call if args.raw else matcher_call
    calls = {
        name: make_call(path, args.threads, image0, image1)
        for name, path in (item.split("=", 1) for item in args.students)
    }
    for call in calls.values():
        for _ in range(3):
            call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for block in range(args.blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(args.calls):
                calls[name]()
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
