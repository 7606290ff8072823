"""The project's commands (``loftr-kd-*``), and the one way the Hydra-based ones are built."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def hydra_command(
    program: str,
    config_name: str,
    work: Callable[[Any], Any],
    *,
    exit_codes: Mapping[type[BaseException], int] | None = None,
) -> Callable[[Sequence[str] | None], Any]:
    """A console entry point running ``work(cfg)`` on ``conf/<config_name>.yaml`` as a Hydra app.

    A user's mistake is one line on stderr (and in the run's log file) with exit status 2
    (``loftr_kd.errors``); ``exit_codes`` maps other exception types to their own one-line exit
    status (``loftr-kd-export``: a failed export check is 1). ``work``'s return value is the app's, so
    sweepers see a training's objective. The returned ``main(argv)`` takes Hydra overrides (``None``:
    the command line), so tests call it directly.
    """
    import hydra

    from loftr_kd.config import CONFIG_DIR

    codes = dict(exit_codes or {})

    def app(cfg) -> Any:
        from loftr_kd.errors import debug_enabled, is_user_error, one_line, report, root_cause

        try:
            return work(cfg)
        except Exception as error:
            code = next((c for kind, c in codes.items() if isinstance(root_cause(error), kind)), None)
            if debug_enabled() or (code is None and not is_user_error(error)):
                raise
            status = report(program, error)  # stderr
            _log_to_run_files(one_line(root_cause(error)))
            raise SystemExit(status if code is None else code) from None

    # Hydra names the job (hydra.job.name, its --help) after the task function's module: the command's.
    app.__module__ = work.__module__
    app = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(app)

    def main(argv: Sequence[str] | None = None) -> Any:
        if argv is None:
            return app()
        saved = sys.argv
        sys.argv = [program, *argv]
        try:
            return app()
        finally:
            sys.argv = saved

    main.__doc__ = f"``{program}``: Hydra overrides in ``argv`` (default: the command line)."
    return main


def _log_to_run_files(line: str) -> None:
    """The error line in the run's log file too (Hydra's file handler), not on the console again."""
    log = logging.getLogger("loftr_kd")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
