"""The project's commands (``loftr-kd-*``), and what the Hydra-based ones share."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def hydra_command(
    program: str, config_name: str, work: Callable[[Any], Any]
) -> Callable[[Sequence[str] | None], None]:
    """A console entry point running ``work(cfg)`` on ``conf/<config_name>.yaml`` as a Hydra app.

    A user's mistake is one line on stderr and exit status 2 (``loftr_kd.errors``); the returned
    ``main(argv)`` takes Hydra overrides (``None``: the command line), so tests call it directly.
    """
    import hydra

    from loftr_kd.config import CONFIG_DIR

    def app(cfg) -> None:
        from loftr_kd.errors import debug_enabled, is_user_error, report

        try:
            work(cfg)
        except Exception as error:
            if debug_enabled() or not is_user_error(error):
                raise
            raise SystemExit(report(program, error)) from None

    # Hydra names the job (hydra.job.name, its --help) after the task function's module: the command's.
    app.__module__ = work.__module__
    app = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(app)

    def main(argv: Sequence[str] | None = None) -> None:
        if argv is None:
            app()
            return
        saved = sys.argv
        sys.argv = [program, *argv]
        try:
            app()
        finally:
            sys.argv = saved

    main.__doc__ = f"``{program}``: Hydra overrides in ``argv`` (default: the command line)."
    return main
