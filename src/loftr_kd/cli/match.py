"""``loftr-kd-match IMAGE0 IMAGE1``: match two images, estimate the homography, register them, and say
whether the registration is reliable.

Writes under ``--out``: ``matches.png`` (homography inliers green, the other matches red, the verdict in
the title; inliers only with ``--inliers-only``), ``homography.txt`` (image0 pixels -> image1 pixels),
``registered_overlay.png`` (image1 warped onto image0, 50/50 blend) and ``registered_checkerboard.png``;
``--json FILE`` (and ``matches.json`` in ``--out``) holds ``keypoints0``, ``keypoints1``, ``confidence``,
``inliers``, ``homography``, the verdict (``reliable``, ``verdict``, ``num_inliers``, ``inlier_ratio``:
:func:`loftr_kd.registration.register`) and, for the student, ``guided``: the search's prior and hypothesis.

The student registers through :class:`~loftr_kd.registration.GuidedMatcher` by default (a rotation/zoom
search, then a rewarp pass: docs/guided.md); ``--no-guided`` matches in one pass, ``--rotations full``
searches every 45 degrees (upside-down and sideways photos) or ``--rotations 0,90,180,270`` any list.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from loftr_kd.cli import ArgumentParser, plain_warnings, positive_float, positive_int
from loftr_kd.runtime import MATCHER_BACKEND

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("onnx", "torch", "trt", "orb", "sift", *MATCHER_BACKEND)  # runtime.py: one vocabulary
# --help and the docs name the five backends; the runtime's other spellings (onnxruntime, tensorrt) are taken too.
BACKEND_METAVAR = "{onnx,torch,trt,orb,sift}"
BACKEND_HELP = (
    "the student on onnxruntime (onnx, the default; also spelt onnxruntime), PyTorch (torch) or TensorRT "
    "(trt, also spelt tensorrt), or a classical reference (orb, sift)"
)
WEIGHTS_HELP = (
    "student weights: a .pt/.ckpt from training, an .onnx from loftr-kd-export, or a TensorRT .engine "
    "(default: the shipped student, student_paper_refine.onnx for onnx, .pt for torch)"
)
DEVICE_HELP = "cpu or cuda (torch and onnx backends; default cpu)"
THRESHOLD_HELP = (
    "match-confidence threshold (default: the model's; an exported .onnx/.engine can only raise it)"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the matcher (``--backend``, ``--weights``, ``--device``, ``--threshold``),
    shared by loftr-kd-match and loftr-kd-demo."""
    parser.add_argument(
        "--backend", choices=BACKEND_CHOICES, metavar=BACKEND_METAVAR, default="onnx", help=BACKEND_HELP
    )
    parser.add_argument("--weights", type=Path, default=None, help=WEIGHTS_HELP)
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--threshold", type=float, default=None, help=THRESHOLD_HELP)


# Everything run() may write into --out. A file of one of these names is replaced (or removed when this
# run does not write it) only when loftr-kd wrote it there and it is unchanged (loftr_kd.files manifest).
OUTPUT_NAMES = (
    "matches.png",
    "matches.json",
    "homography.txt",
    "registered_overlay.png",
    "registered_checkerboard.png",
)


def check_output_folder(out: Path, extra: Sequence[Path] = (), force: bool = False) -> list[Path]:
    """The earlier outputs of loftr-kd-match in ``out`` (replaced or removed by this run).

    Other files in the folder are left alone; a file this run would write over that loftr-kd did not
    write (a user's ``homography.txt``) is an error unless ``force``. ``extra`` are further files this run
    writes (``--json``).

    Raises:
        NotADirectoryError: ``out``, or a folder above it, is a file.
        ValueError: an output path holds a file loftr-kd did not write.
    """
    from loftr_kd.files import check_folder_path, check_outputs, is_own_output

    check_folder_path(out, "--out")
    for path in extra:
        check_folder_path(path.parent, f"--json {path}: its folder")
    planned = [out / name for name in OUTPUT_NAMES]
    check_outputs([*planned, *extra], force=force, force_hint="--force")
    return [path for path in planned if is_own_output(path)]


def default_out(image0: Path, image1: Path) -> Path:
    """``outputs/match/<name>`` of a pair: each image's folder and stem, so that the pairs of an HPatches-layout
    folder (``h_0103/1.png h_0103/2.png``) do not all land in ``1_2``."""
    from loftr_kd.paths import OUTPUTS_DIR

    parent0, parent1 = (Path(p).resolve().parent.name for p in (image0, image1))
    if parent0 == parent1:
        name = f"{parent0}_{image0.stem}_{image1.stem}" if parent0 else f"{image0.stem}_{image1.stem}"
    else:
        name = "_".join(part for part in (parent0, image0.stem, parent1, image1.stem) if part)
    return OUTPUTS_DIR / "match" / name


def _reduction(factor: int) -> np.ndarray:
    """The pixel map of a 1/``factor`` decode to the full image: ``x -> (x + 0.5) * factor - 0.5``."""
    shift = (factor - 1) / 2.0
    return np.array([[factor, 0.0, shift], [0.0, factor, shift], [0.0, 0.0, 1.0]])


def _from_reduced(points: np.ndarray, factor: int) -> np.ndarray:
    """Keypoints of a 1/``factor`` decode in the full image's pixels."""
    points = np.asarray(points, np.float64)
    return points if factor == 1 else (points + 0.5) * factor - 0.5


def _homography_text(homography: np.ndarray) -> str:
    """``homography.txt``: the 3x3 matrix as ``np.savetxt`` writes it."""
    import io

    buffer = io.StringIO()
    np.savetxt(buffer, homography)
    return buffer.getvalue()


def warp_onto(image0: np.ndarray, image1: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """image1 resampled in image0's frame, for ``homography`` mapping image0 pixels to image1 pixels."""
    h0, w0 = image0.shape[:2]
    return cv2.warpPerspective(image1, homography, (w0, h0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def overlay(image0: np.ndarray, warped1: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """50/50 blend of image0 and the registered image1."""
    return cv2.addWeighted(_bgr(image0), 1.0 - alpha, _bgr(warped1), alpha, 0.0)


def checkerboard(image0: np.ndarray, warped1: np.ndarray, tile: int = 32) -> np.ndarray:
    """Alternating tiles of image0 and the registered image1 (edges continue across tiles when aligned)."""
    a, b = _bgr(image0), _bgr(warped1)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    mask = ((yy // tile + xx // tile) % 2).astype(bool)
    out = a.copy()
    out[mask] = b[mask]
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any stored image (uint16, int32, float in [0, 1] or [0, 255]) as uint8 for drawing."""
    from loftr_kd.images import value_scale

    if image.dtype == np.uint8:
        return image
    unit = np.asarray(image, np.float32) / np.float32(value_scale(image))
    return np.clip(unit * 255.0 + 0.5, 0, 255).astype(np.uint8)


def rotations_argument(text: str) -> str | tuple[float, ...]:
    """``--rotations``: a preset name (``default``, ``full``) or degrees separated by commas."""
    from loftr_kd.registration import ROTATION_PRESETS

    if text in ROTATION_PRESETS:
        return text
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a preset ({', '.join(ROTATION_PRESETS)}) nor degrees separated by commas "
            "(e.g. 0,90,180,270)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="loftr-kd-match",
        description="Match two images with the distilled LoFTR student (the shipped one refines its matches "
        "to sub-pixel positions; or ORB/SIFT), estimate the homography image0 -> image1 and register image1 "
        "onto image0.",
        epilog="Bad input ends in one error line and exit status 2; LOFTR_KD_DEBUG=1 shows the traceback.",
    )
    parser.add_argument("image0", type=Path, help="first image (any size, gray or colour)")
    parser.add_argument("image1", type=Path, help="second image")
    add_model_arguments(parser)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: all cores for onnx, 1 for torch, which slows down badly with more "
        "threads while other programs use the CPU)",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="long side the images are resized to, aspect kept (default: the model's, 640); not for "
        "static ONNX/TensorRT files, which letterbox into their fixed input",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default outputs/match/<folder>_<img0>_<img1> under the current folder)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write the matches and homography to this JSON file"
    )
    parser.add_argument(
        "--ransac", choices=("magsac", "ransac"), default="magsac", help="robust estimator (default magsac)"
    )
    parser.add_argument(
        "--ransac-threshold", type=positive_float, default=3.0, help="inlier threshold in pixels (default 3)"
    )
    parser.add_argument(
        "--guided",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="student: register through a rotation/zoom search and a rewarp pass (default on for the student; "
        "AUC@5 on held-out photos 16 -> 51, docs/guided.md); --no-guided matches in one pass, as a static-shape "
        ".onnx/.engine always does. Not for orb/sift",
    )
    parser.add_argument(
        "--rotations",
        type=rotations_argument,
        default=None,
        metavar="PRESET|DEGREES",
        help="rotations of image1 the guided search tries: 'default' (0,-45,45), 'full' (every 45 degrees: "
        "upside-down and sideways photos, at more cost) or degrees separated by commas (0,90,180,270)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace output files that loftr-kd did not write (a user's file of the same name); without "
        "it such files are never replaced",
    )
    parser.add_argument(
        "--inliers-only",
        action="store_true",
        help="draw only the homography inliers (default: all, outliers red)",
    )
    parser.add_argument(
        "--tile", type=positive_int, default=32, help="checkerboard tile size in pixels (default 32)"
    )
    return parser


def run(args: argparse.Namespace) -> dict:
    """Match, estimate, write the outputs; returns the JSON record."""
    from loftr_kd.files import record_outputs, remove_own_output, write_image, write_text
    from loftr_kd.images import read_image_for_matching, to_gray_float
    from loftr_kd.matcher import CLASSICAL_METHODS, Matcher, build_matcher
    from loftr_kd.registration import GuidedMatcher, register, with_guidance
    from loftr_kd.visualization import draw_matches

    out = args.out or default_out(args.image0, args.image1)
    inputs = {Path(p).resolve() for p in (args.image0, args.image1, args.weights) if p is not None}
    if args.json is not None and args.json.resolve() in inputs:
        raise ValueError(f"--json {args.json} would overwrite an input file; choose another file")
    previous = check_output_folder(out, [args.json] if args.json is not None else [], force=args.force)
    (image0, factor0), (image1, factor1) = map(read_image_for_matching, (args.image0, args.image1))
    for path, image in ((args.image0, image0), (args.image1, image1)):
        to_gray_float(image, name=str(path))  # NaN, range and dtype problems named with the file
    kwargs = {"device": args.device, "threshold": args.threshold, "threads": args.threads, "size": args.size}
    guided = args.guided if args.guided is not None else args.backend not in CLASSICAL_METHODS
    if args.rotations is not None:
        if args.guided is False:
            raise ValueError("--rotations sets the guided search's rotations; drop --no-guided to use them")
        guided = {"rotations": args.rotations}  # orb/sift: with_guidance says they have no guided mode
    matcher = build_matcher(args.backend, weights=args.weights, **kwargs)
    if args.rotations is not None and isinstance(matcher, Matcher) and not matcher.dynamic:
        raise ValueError(
            f"--rotations needs guided registration, and {matcher.weights.name} has a static input: give its "
            "checkpoint (.ckpt/.pt) or an export with `loftr-kd-export dynamic=true`, or drop --rotations"
        )
    matcher = with_guidance(matcher, guided)
    guided = isinstance(matcher, GuidedMatcher)  # a static-shape file falls back to one pass, with a warning
    if hasattr(matcher, "input_shape"):  # too small / too elongated: named with the file
        for path, image in ((args.image0, image0), (args.image1, image1)):
            matcher.input_shape(*image.shape[:2], name=str(path))
    result = matcher(image0, image1)
    k0, k1, conf = result["keypoints0"], result["keypoints1"], result["confidence"]
    # Keypoints and the homography in the pixels of the files (images above 24 MP are decoded reduced).
    full0, full1 = _from_reduced(k0, factor0), _from_reduced(k1, factor1)
    shape0 = tuple(int(side) * factor0 for side in image0.shape[:2])  # the file's pixels
    registration = register(full0, full1, shape0, method=args.ransac, threshold=args.ransac_threshold)
    homography, inliers = registration.homography, registration.inliers

    out.mkdir(parents=True, exist_ok=True)
    shown = inliers if args.inliers_only else np.ones(len(k0), bool)
    verdict = "RELIABLE" if registration.reliable else "UNRELIABLE"
    title = (
        f"{args.backend}{' guided' if guided else ''}: {verdict}, {registration.num_inliers} inliers (green) "
        f"of {registration.num_matches} matches"
    )
    canvas = draw_matches(
        to_uint8(image0), to_uint8(image1), k0[shown], k1[shown], correct=inliers[shown], title=title
    )
    record = {
        "image0": str(args.image0),
        "image1": str(args.image1),
        "backend": args.backend,
        "matcher": repr(matcher),
        "keypoints0": np.asarray(full0, float).round(3).tolist(),
        "keypoints1": np.asarray(full1, float).round(3).tolist(),
        "confidence": np.asarray(conf, float).round(5).tolist(),
        "inliers": inliers.astype(bool).tolist(),
        "homography": homography.tolist() if homography is not None else None,
        "homography_maps": "image0 pixels -> image1 pixels (x, y, 1)",
        "ransac": {"method": args.ransac, "threshold_px": args.ransac_threshold},
        **registration.record(),
    }
    if guided:  # the search's prior and the hypothesis it came from (loftr_kd.registration)
        from loftr_kd.registration import HYPOTHESIS_KEY, PRIOR_KEY

        rotation, scale, search_inliers, final_pass = result[HYPOTHESIS_KEY].tolist()
        prior = _reduction(factor1) @ result[PRIOR_KEY] @ np.linalg.inv(_reduction(factor0))
        record["guided"] = {
            "prior_homography": prior.tolist() if np.all(np.isfinite(prior)) else None,
            "rotation_deg": rotation,
            "zoom": scale,
            "search_inliers": int(search_inliers),
            "rewarped": final_pass == 2,
        }
    text = json.dumps(record)
    written: list[Path] = []
    try:  # what was written is recorded as loftr-kd's also when a later write fails: a rerun replaces it
        written.append(write_image(out / "matches.png", canvas))
        if homography is not None:
            written.append(write_text(out / "homography.txt", _homography_text(homography)))
            shown_h = np.linalg.inv(_reduction(factor1)) @ homography @ _reduction(factor0)
            warped = warp_onto(to_uint8(image0), to_uint8(image1), shown_h)
            written.append(write_image(out / "registered_overlay.png", overlay(to_uint8(image0), warped)))
            written.append(
                write_image(
                    out / "registered_checkerboard.png", checkerboard(to_uint8(image0), warped, args.tile)
                )
            )
        written.append(write_text(out / "matches.json", text))
        if args.json is not None:
            written.append(write_text(args.json, text))
    finally:
        record_outputs(written, "loftr-kd-match")
    stale = [p for p in previous if p not in written]
    for path in stale:  # an earlier output this run does not replace would contradict it
        remove_own_output(path)
    if previous:
        print(f"replaced the outputs of a previous loftr-kd-match run in {out}")
    print(f"{args.backend}{' guided' if guided else ''}: {registration.reason}; outputs in {out}")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 with a one-line message on bad input)."""
    from loftr_kd.errors import exit_status

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plain_warnings("loftr-kd-match")
    return exit_status("loftr-kd-match", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
