"""Two ONNX students side by side in one process: blocks of 10 onnxruntime calls at 640x480, 1 thread,
the order alternated per block (weights/MODEL_CARD.md, "Speed").

    OMP_NUM_THREADS=1 python docs/bench/same_graph_blocks.py NEW.onnx OLD.onnx
"""

import sys
import time

import cv2
import numpy as np
import onnxruntime as ort
from skimage import data


def main(new: str, old: str, blocks: int = 6, calls: int = 10) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = {
        n: ort.InferenceSession(p, options, providers=["CPUExecutionProvider"])
        for n, p in (("new", new), ("old", old))
    }
    image = cv2.resize(data.astronaut()[..., 0], (640, 480)).astype(np.float32)[None, None] / 255
    feed = {"image0": image, "image1": np.roll(image, 7, axis=3)}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for block in range(blocks):
        for name in ("new", "old") if block % 2 == 0 else ("old", "new"):
            start = time.perf_counter()
            for _ in range(calls):
                sessions[name].run(None, feed)
            times[name].append((time.perf_counter() - start) / calls * 1000)
    for name, values in times.items():
        print(
            name,
            "ms per call, by block:",
            " ".join(f"{v:.1f}" for v in values),
            f"| median {np.median(values):.1f}",
        )
    print(f"new/old ratio of medians: {np.median(times['new']) / np.median(times['old']):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
