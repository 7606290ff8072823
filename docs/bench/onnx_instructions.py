"""A bare onnxruntime session on the bench pair, for counting its instructions (docs/refinement.md, rule 9).

Runs the .onnx file twice untimed, then ``calls`` more times, at 1 thread, on the pair of
`matcher_blocks.py --raw` (640x480). Under valgrind's cachegrind the instruction count of one call is the
difference of two runs divided by the difference of their calls; it does not depend on the machine's load:

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        python docs/bench/onnx_instructions.py weights/student_paper_refine.onnx 12   # and 2: (Ir12 - Ir2) / 10
"""

import argparse

import numpy as np
from matcher_blocks import bench_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("calls", type=int)
    args = parser.parse_args()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    image0, image1 = bench_pair()
    feed = {
        name: image.astype(np.float32)[None, None] / 255
        for name, image in (("image0", image0), ("image1", image1))
    }
    for _ in range(2 + args.calls):
        session.run(None, feed)
    print(f"{args.onnx}: {2 + args.calls} calls")


if __name__ == "__main__":
    main()
