"""``loftr-kd-demo --source 0|video.mp4``: live matching against a reference frame (the paper's demo).

Window mode: left the reference frame, right the live frame, matches coloured by confidence and an
FPS counter. Keys: ``s`` sets the reference from the live frame, ``p`` freezes a snapshot with
numbered matches (``p`` again resumes; saved to ``--snapshots`` when given), ``q``/Esc quits.

The student encodes the reference once, when it is set (``Matcher.encode``), so each new frame costs the
encoding of that frame and the matching (the overlay's ms and the timing CSV's ``match_ms``); a model file
without its split export, and ORB/SIFT, match whole pairs.

``--headless --out result.mp4`` runs without a window and writes the annotated video (mp4v) plus the
per-frame timing as ``result.timing.csv`` and a summary ``result.timing.json``. The reference is the
first frame (``--reference-frame N`` picks another).

Ctrl-C or SIGTERM stops a run as the end of the video would: ``--out`` holds the frames processed so far,
the timing is written with ``"interrupted": true``, one line says so, and the exit status is 130 (Ctrl-C)
or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from loftr_kd.cli import ArgumentParser, nonnegative_int, plain_warnings, positive_int
from loftr_kd.cli.match import add_model_arguments

log = logging.getLogger(__name__)

WINDOW = "loftr-kd demo"


@dataclass
class FrameTiming:
    frame: int
    match_ms: float
    total_ms: float
    num_matches: int


@dataclass
class DemoApp:
    """The demo's state and drawing, free of any window or capture (testable headless)."""

    matcher: Callable[[np.ndarray, np.ndarray], dict]
    reference: np.ndarray | None = None
    reference_features: object | None = None  # the reference encoded once (students that can encode)
    fps: float = 0.0
    frozen: np.ndarray | None = None  # snapshot canvas while paused
    timings: list[FrameTiming] = field(default_factory=list)
    last: tuple[np.ndarray, dict] | None = None  # (frame, matches) of the latest step

    def set_reference(self, frame: np.ndarray) -> None:
        """Take ``frame`` as the reference, encoded once where the matcher can (not counted as a frame's cost)."""
        self.reference = frame.copy()
        encodes = getattr(self.matcher, "can_encode", False)
        self.reference_features = self.matcher.encode(self.reference, name="reference") if encodes else None

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Match ``frame`` against the reference; return the annotated side-by-side canvas."""

        if self.reference is None:
            self.set_reference(frame)
        start = time.perf_counter()
        reference = self.reference if self.reference_features is None else self.reference_features
        result = self.matcher(reference, frame)
        match_ms = (time.perf_counter() - start) * 1000.0
        n = len(result["keypoints0"])
        title = f"{self.fps:5.1f} FPS  {match_ms:6.1f} ms  {n} matches"
        canvas = self._draw(frame, result, title)
        total_ms = (time.perf_counter() - start) * 1000.0
        instant = 1000.0 / max(total_ms, 1e-3)
        self.fps = instant if self.fps == 0.0 else 0.9 * self.fps + 0.1 * instant  # smoothed counter
        self.timings.append(FrameTiming(len(self.timings), match_ms, total_ms, n))
        self.last = (frame, result)
        return canvas

    def snapshot(self) -> np.ndarray | None:
        """Canvas of the latest frame with numbered matches (the ``p`` key)."""

        if self.last is None or self.reference is None:
            return None
        frame, result = self.last
        title = f"snapshot: {len(result['keypoints0'])} matches (p: resume, s: set reference, q: quit)"
        return self._draw(frame, result, title, numbered=True)

    def _draw(self, frame: np.ndarray, result: dict, title: str, numbered: bool = False) -> np.ndarray:
        """The reference and ``frame`` side by side with ``result``'s matches."""
        from loftr_kd.visualization import draw_matches

        return draw_matches(
            self.reference,
            frame,
            result["keypoints0"],
            result["keypoints1"],
            confidence=result["confidence"],
            title=title,
            numbered=numbered,
        )

    def handle_key(self, key: int) -> bool:
        """Apply a key press; returns False to quit."""
        key &= 0xFF
        if key in (ord("q"), 27):
            return False
        if key == ord("s") and self.last is not None:
            self.set_reference(self.last[0])
            self.frozen = None
        elif key == ord("p"):
            self.frozen = self.snapshot() if self.frozen is None else None
        return True

    def timing_summary(self) -> dict:
        match = np.array([t.match_ms for t in self.timings]) if self.timings else np.zeros(1)
        total = np.array([t.total_ms for t in self.timings]) if self.timings else np.zeros(1)
        return {
            "frames": len(self.timings),
            "median_match_ms": float(np.median(match)),
            "p90_match_ms": float(np.percentile(match, 90)),
            "median_total_ms": float(np.median(total)),
            "fps": float(1000.0 / max(np.median(total), 1e-6)),
            "mean_matches": float(np.mean([t.num_matches for t in self.timings])) if self.timings else 0.0,
        }


class SourceError(RuntimeError):
    """A camera or video that OpenCV cannot open: the machine's state (a user's error), one line."""


def open_source(source: str) -> cv2.VideoCapture:
    """Camera index (``"0"``) or video file; a clear error when it cannot be opened."""
    if source.isdigit():
        if int(source) > 10_000:  # OpenCV's index is a C int: a larger one was a traceback
            raise SourceError(f"camera index {source} is not a camera (indices are 0, 1, ...)")
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise SourceError(
                f"cannot open camera {source}: is it connected and not used by another program?"
            )
        return capture
    path = Path(source)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a video file")
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} not found")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"cannot open {path} as a video (unsupported codec or corrupt file)")
    return capture


def write_timing_paths(stem: Path) -> tuple[Path, Path]:
    """``<stem>.timing.csv`` and ``<stem>.timing.json``."""
    return stem.with_name(stem.stem + ".timing.csv"), stem.with_name(stem.stem + ".timing.json")


def write_timing(app: DemoApp, stem: Path, extra: dict) -> tuple[Path, Path]:
    """Per-frame CSV and summary JSON next to ``stem`` (``<stem>.timing.csv/json``), written atomically."""
    import io

    from loftr_kd.files import write_json, write_text

    csv_path, json_path = write_timing_paths(stem)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["frame", "match_ms", "total_ms", "num_matches"])
    for t in app.timings:
        writer.writerow([t.frame, f"{t.match_ms:.3f}", f"{t.total_ms:.3f}", t.num_matches])
    write_text(csv_path, buffer.getvalue())
    write_json(json_path, {**extra, **app.timing_summary()})
    return csv_path, json_path


class StreamEndedEarly(ValueError):
    """A video file ended before the frames its container announced (corrupt or truncated)."""


@contextlib.contextmanager
def _named_source(source: Any) -> Iterator[None]:
    """A frame the matcher cannot use (too small, too elongated) is named by its video or camera."""
    from loftr_kd.images import ImageError

    try:
        yield
    except ImageError as error:
        raise ImageError(f"{source}: frames cannot be matched: {error}") from None


def announced_frames(capture: cv2.VideoCapture, source: str) -> int | None:
    """The frame count a video file's container announces; ``None`` for cameras and unknown counts."""
    if source.isdigit():
        return None
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return count if count > 0 else None


PROGRESS_EVERY = 50  # frames between the headless mode's progress lines


def _progress(frames: int, total: int | None, fps: float) -> None:
    """A progress line every :data:`PROGRESS_EVERY` frames (headless runs have no window to watch)."""
    if frames % PROGRESS_EVERY == 0:
        print(f"frame {frames}" + (f" of {total}" if total else "") + f", {fps:.1f} FPS", flush=True)


def run_demo(args: argparse.Namespace) -> dict:
    from loftr_kd.files import check_folder_path, check_outputs, record_outputs, replacing
    from loftr_kd.matcher import build_matcher

    outputs = [args.out, *write_timing_paths(args.out)] if args.out is not None else []
    check_outputs(outputs, force=args.force, force_hint="--force")
    if args.out is not None:
        check_folder_path(Path(args.out).parent, f"--out {args.out}: its folder")
    if any(Path(p).is_file() for p in outputs):  # an earlier run's (or, with --force, anyone's)
        print(
            f"replacing the outputs of an earlier run: {', '.join(str(p) for p in outputs if Path(p).is_file())}"
        )
    capture = open_source(str(args.source))
    announced = announced_frames(capture, str(args.source))
    matcher = build_matcher(
        args.backend,
        weights=args.weights,
        device=args.device,
        threshold=args.threshold,
        threads=args.threads,
        size=args.size,
    )
    app = DemoApp(matcher)
    frames_read = 0
    consumed = 0  # frames taken from the source, skipped reference frames included
    stopped = False  # by --max-frames, a key or a signal, not by the end of the stream
    interrupted: KeyboardInterrupt | None = None  # Ctrl-C, or SIGTERM (loftr_kd.errors.Terminated)
    written = 0  # frames in --out
    with contextlib.ExitStack() as stack:
        stack.callback(capture.release)
        if not args.headless:
            stack.callback(cv2.destroyAllWindows)
        video = None  # (temporary path, writer) while writing --out: renamed into place at the end
        for _ in range(args.reference_frame):
            consumed += bool(capture.read()[0])
        ok, frame = capture.read()
        if not ok and args.reference_frame > 0:
            raise ValueError(
                f"--reference-frame {args.reference_frame} is past the end of {args.source} "
                f"({consumed} frames could be read)"
            )
        if not ok:
            raise ValueError(f"no frame could be read from {args.source}")
        consumed += 1
        with _named_source(args.source):
            app.set_reference(frame)
        try:
            while ok:
                if app.frozen is None:
                    frames_read += 1
                    with _named_source(args.source):
                        canvas = app.step(frame)
                if args.headless:
                    if video is None:
                        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
                        fps = fps if 0 < fps < 240 else 10.0
                        expected = (canvas.shape[1], canvas.shape[0])
                        tmp = stack.enter_context(replacing(args.out, suffix=args.out.suffix or ".mp4"))
                        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, expected)
                        if not writer.isOpened():
                            raise ValueError(
                                f"cannot write the video {args.out} (mp4v codec unavailable, or the folder is "
                                "read-only or full)"
                            )
                        stack.callback(writer.release)  # runs before the rename of `replacing`
                        video = (tmp, writer)
                    if (canvas.shape[1], canvas.shape[0]) != expected:
                        canvas = cv2.resize(canvas, expected)
                    video[1].write(canvas)
                    written += 1
                    _progress(frames_read, args.max_frames or announced, app.fps)
                else:
                    cv2.imshow(WINDOW, app.frozen if app.frozen is not None else canvas)
                    if not app.handle_key(cv2.waitKey(30 if app.frozen is not None else 1)):
                        stopped = True
                        break
                    if app.frozen is not None and args.snapshots is not None:
                        from loftr_kd.files import write_image

                        path = args.snapshots / f"snapshot_{len(app.timings):05d}.png"
                        if not path.exists():
                            write_image(path, app.frozen)
                if args.max_frames and frames_read >= args.max_frames:
                    stopped = True
                    break
                if app.frozen is None:
                    ok, frame = capture.read()
                    consumed += ok
                # The source ending (ok False) ends the loop; a video file that ends before the frames its
                # container announced is reported below, after its outputs are written.
        except KeyboardInterrupt as error:  # the frames so far are kept, as when a video ends
            interrupted, stopped = error, True
            if args.headless:  # a frame matched but not written when the signal came is not timed either
                del app.timings[written:]
    summary = app.timing_summary()
    summary.update(frames_consumed=consumed, frames_announced=announced, interrupted=interrupted is not None)
    early = not stopped and announced is not None and consumed < announced
    wrote = args.headless and video is not None  # an interrupt may come before the first frame is written
    if wrote:
        extra = {
            "source": str(args.source),
            "backend": args.backend,
            "matcher": repr(matcher),
            "video": str(args.out),
            "frames_consumed": consumed,
            "frames_announced": announced,
            "ended_early": early,
            "interrupted": interrupted is not None,
        }
        csv_path, json_path = write_timing(app, args.out, extra)
        record_outputs([args.out, csv_path, json_path], "loftr-kd-demo")
        summary.update(timing_csv=str(csv_path), timing_json=str(json_path))
    figures = (
        f"{summary['frames']} frames, median {summary['median_match_ms']:.1f} ms matching, "
        f"{summary['fps']:.1f} FPS"
    )
    if interrupted is not None:
        from loftr_kd.errors import stopped_by

        how, status = stopped_by(interrupted)
        kept = f"; the frames processed so far are in {args.out} (timing marked interrupted)" if wrote else ""
        print(f"loftr-kd-demo: stopped by {how} after {figures}{kept}", file=sys.stderr, flush=True)
        summary["stopped_by"], summary["exit_status"] = how, status
        return summary
    print(figures + (f"; wrote {args.out}" if args.headless else ""))
    if early:
        raise StreamEndedEarly(
            f"{args.source}: the video ended after {consumed} of the {announced} frames its container "
            "announces (corrupt or truncated file); the frames read were processed"
            + (f" and written to {args.out}" if args.headless else "")
        )
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="loftr-kd-demo",
        description="Live matching of a camera or video against a reference frame. Keys: s = set the "
        "reference, p = freeze a snapshot with numbered matches, q = quit.",
    )
    parser.add_argument("--source", default="0", help="camera index (0, 1, ...) or a video file")
    add_model_arguments(parser)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: all cores for onnx, 1 for torch)",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="long side frames are resized to, aspect kept (default 640)",
    )
    parser.add_argument("--headless", action="store_true", help="no window: write --out and its timing")
    parser.add_argument("--out", type=Path, default=None, help="annotated video (.mp4) in headless mode")
    parser.add_argument(
        "--reference-frame", type=nonnegative_int, default=0, help="index of the reference frame"
    )
    parser.add_argument(
        "--max-frames", type=nonnegative_int, default=0, help="stop after this many frames (0 = all)"
    )
    parser.add_argument("--snapshots", type=Path, default=None, help="folder to save p-key snapshots to")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace --out and its timing files when they exist and loftr-kd did not write them",
    )
    return parser


# Containers OpenCV writes mp4v into (an image suffix made a single picture, reported as a video).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".mkv", ".mov")


def missing_display() -> str | None:
    """Why no window can open here, or ``None``: neither variable set, or a local X display or Wayland
    socket that does not exist (a stale ``DISPLAY`` made Qt abort the process). A remote X display
    (``host:0``, ssh forwarding) is taken on trust."""
    x11, wayland = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
    if not (x11 or wayland):
        return "DISPLAY and WAYLAND_DISPLAY are unset"
    if wayland:
        socket = Path(wayland)
        if not socket.is_absolute():
            socket = Path(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent") / wayland
        if socket.exists():
            return None
    if x11:
        host, _, rest = x11.rpartition(":")
        number = rest.split(".")[0]
        if host not in ("", "unix") or not number.isdigit():
            return None
        if Path(f"/tmp/.X11-unix/X{number}").exists() or _abstract_x_socket(int(number)):
            return None
        return f"DISPLAY={x11}, but no X server listens at /tmp/.X11-unix/X{number}"
    return f"WAYLAND_DISPLAY={wayland}, but no such Wayland socket"


def _abstract_x_socket(number: int) -> bool:
    """An X server listens on Linux's abstract socket ``@/tmp/.X11-unix/X<number>`` (Xorg and Xvfb do; a
    container sharing the host's network sees it without the /tmp/.X11-unix mount)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(f"\0/tmp/.X11-unix/X{number}")
        except OSError:
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    from loftr_kd.errors import exit_status, report

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.headless and args.out is None:
        parser.error("--headless needs --out result.mp4")
    if args.out is not None and not args.headless:  # the window mode writes no video: --out was ignored
        parser.error("--out writes the annotated video of a --headless run; add --headless (or drop --out)")
    if args.out is not None and args.out.suffix.lower() not in VIDEO_SUFFIXES:
        parser.error(
            f"--out {args.out}: the annotated video is written with the mp4v codec, into a "
            f"{', '.join(VIDEO_SUFFIXES)} file (got {args.out.suffix or 'no suffix'})"
        )
    if not args.headless and sys.platform.startswith("linux"):
        missing = missing_display()
        if missing:
            # OpenCV's window would abort the process (Qt: "could not connect to display"), no hint given
            return report(
                "loftr-kd-demo",
                RuntimeError(
                    f"no display to open the demo's window on ({missing}): run with --headless --out "
                    "result.mp4, or where a display is"
                ),
            )
    if args.out is not None and Path(str(args.source)).exists():
        written = [args.out, *write_timing_paths(args.out)]
        if any(p.resolve() == Path(str(args.source)).resolve() for p in written):
            parser.error(
                f"--out {args.out} would overwrite the source video {args.source}; choose another file"
            )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plain_warnings("loftr-kd-demo")
    result: dict = {}
    # SIGTERM, as Ctrl-C, keeps the frames processed so far (run_demo); before the first frame or while
    # finishing, exit_status says "stopped by ..." and exits 130 / 143
    status = exit_status("loftr-kd-demo", lambda: result.update(run_demo(args)), also=(SourceError,))
    if status == 0 and "stopped_by" in result:
        return result["exit_status"]
    return status


if __name__ == "__main__":
    sys.exit(main())
