"""How the entry points report a user's mistake: one line, the traceback behind ``LOFTR_KD_DEBUG=1``.

A bad input (missing or corrupt file, a data folder that must not be touched, a wrong config value) is
reported as ``<program>: error: <file>: <problem>; <what to do>`` on stderr with exit status 2. With
``LOFTR_KD_DEBUG=1`` (or Hydra's own ``HYDRA_FULL_ERROR=1``) the exception propagates with its full
traceback instead. Programming errors (``TypeError``, ``AttributeError`` ...) always show the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator

DEBUG_VARIABLES = ("LOFTR_KD_DEBUG", "HYDRA_FULL_ERROR")
EXIT_USAGE = 2
EXIT_SIGTERM = 128 + 15  # stopped by SIGTERM after writing a resumable checkpoint (the shell's convention)
EXIT_SIGINT = 128 + 2  # stopped by Ctrl-C (the shell's convention)
# What a data source does with a bad file (data.on_bad_data): stop naming it, or leave it out with a warning.
ON_BAD_DATA = ("raise", "skip")
# The machine's state, not a bug: a read-only, full or forbidden location.
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (:func:`sigterm_raises`), so ``finally`` blocks remove partial outputs
    as they do on Ctrl-C; the entry points report it in one line with :data:`EXIT_SIGTERM`."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread; elsewhere a no-op)."""

    def handler(signum, frame):
        raise Terminated("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_by(error: KeyboardInterrupt) -> tuple[str, int]:
    """How a command was stopped, for its one line and its exit status: ``("SIGTERM", 143)`` for
    :class:`Terminated`, else ``("Ctrl-C", 130)``."""
    return ("SIGTERM", EXIT_SIGTERM) if isinstance(error, Terminated) else ("Ctrl-C", EXIT_SIGINT)


def user_stacklevel() -> int:
    """``warnings.warn``'s stacklevel of the nearest caller outside loftr_kd and torch (``Module.__call__``), so
    a warning raised deep in the package points at the user's line, whichever public door it came through.
    Call it in the function that calls ``warnings.warn``."""
    frame, level = sys._getframe(1), 1  # the frame that calls warnings.warn
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("loftr_kd.", "torch.")):
        frame, level = frame.f_back, level + 1
    return level


def debug_enabled() -> bool:
    """True when ``LOFTR_KD_DEBUG`` or ``HYDRA_FULL_ERROR`` is set to something other than 0/empty."""
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_VARIABLES)


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many steps in a row had a NaN or infinite loss (each was skipped, so the
    weights and checkpoints are those of the last finite step); the message says where and what to check."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input", reported in one line (imports kept light)."""
    # where it is defined, not loftr_kd.matcher (which imports this module: a cycle)
    from loftr_kd.runtime.backend import MatcherError

    return (
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        MatcherError,
        NonFiniteLossError,
    )


def _is_write_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in WRITE_ERRNOS


def root_cause(error: BaseException) -> BaseException:
    """The user's error inside wrappers (Hydra's InstantiationException, Lightning, DataLoader)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ == "InstantiationException" and error.__cause__ is not None:
            error = error.__cause__
            continue
        break
    return error


def one_line(error: BaseException) -> str:
    """The last meaningful line of an error message (a DataLoader worker's message holds a traceback)."""
    if _is_write_error(error):
        where = error.filename or "the output location"
        if error.errno in (errno.EACCES, errno.EPERM):
            # The same errno comes from reading a file without read permission: say neither read nor write.
            return (
                f"cannot access {where}: {error.strerror}; check its permissions (and its folder's), "
                "or choose another location"
            )
        what = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only",
            errno.EFBIG: "the file is too large for the file system",
        }[error.errno]
        return (
            f"cannot write {where}: {error.strerror} ({what}); choose another output location or free space"
        )
    text = str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "Traceback (most recent call last)" not in text:
        return "; ".join(lines)
    # A DataLoader worker's message embeds its traceback; the last line is
    # "loftr_kd.data.blendedmvs_io.BlendedMVSFormatError: <file>: <problem>".
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Refused): ", "", lines[-1])


def is_user_error(error: BaseException) -> bool:
    cause = root_cause(error)
    return isinstance(cause, user_error_types()) or _is_write_error(cause)


def report(program: str, error: BaseException) -> int:
    """Print the one line for ``error`` on stderr; return the exit status (2)."""
    cause = root_cause(error)
    print(f"{program}: error: {one_line(cause)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def exit_status(program: str, call: Callable[[], object], also: tuple[type[BaseException], ...] = ()) -> int:
    """Run an argparse command's work: 0 when it returns; a user's error (or one of ``also``) is
    :func:`report`'s one line and exit status 2; Ctrl-C and SIGTERM are one line and 130 / 143 (the work's
    ``finally`` blocks remove what it was writing); anything else, or anything under :func:`debug_enabled`,
    propagates with its traceback."""
    try:
        with sigterm_raises():
            call()
    except KeyboardInterrupt as error:
        if debug_enabled():
            raise
        how, status = stopped_by(error)
        print(f"{program}: stopped by {how}", file=sys.stderr, flush=True)
        return status
    except Exception as error:
        if debug_enabled() or not (is_user_error(error) or isinstance(error, also)):
            raise
        return report(program, error)
    return 0


__all__ = [
    "DEBUG_VARIABLES",
    "EXIT_SIGINT",
    "ON_BAD_DATA",
    "Terminated",
    "sigterm_raises",
    "stopped_by",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "debug_enabled",
    "exit_status",
    "is_user_error",
    "one_line",
    "report",
    "root_cause",
    "user_stacklevel",
]
