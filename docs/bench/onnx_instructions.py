"""A bare onnxruntime session on the bench pair, for counting its instructions (docs/refinement.md, rule 9).

Runs the .onnx file twice untimed, then ``calls`` more times, at 1 thread, on the pair of
`matcher_blocks.py --raw` (640x480). Under valgrind's cachegrind the instruction count of one call is the
difference of two runs divided by the difference of their calls; it does not depend on the machine's load:

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        python docs/bench/onnx_instructions.py weights/student_paper_refine.onnx 12   # and 2: (Ir12 - Ir2) / 10
"""

import argparse

from matcher_blocks import bench_pair, raw_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("calls", type=int)
    args = parser.parse_args()
    call = raw_call(args.onnx, 1, *bench_pair())  # the bare session `matcher_blocks.py --raw` times
    for _ in range(2 + args.calls):
        call()
    print(f"{args.onnx}: {2 + args.calls} calls")


if __name__ == "__main__":
    main()
