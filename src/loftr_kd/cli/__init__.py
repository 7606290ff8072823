"""The project's commands (``loftr-kd-*``), and the one way the Hydra-based ones are built."""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn


def hydra_command(
    program: str,
    config_name: str,
    work: Callable[[Any], Any],
    *,
    summary: str = "",
    exit_codes: Mapping[type[BaseException], int] | None = None,
) -> Callable[[Sequence[str] | None], Any]:
    """A console entry point running ``work(cfg)`` on ``conf/<config_name>.yaml`` as a Hydra app.

    A user's mistake is one line on stderr (and in the run's log file) with exit status 2
    (``loftr_kd.errors``); ``exit_codes`` maps other exception types to their own one-line exit
    status (``loftr-kd-export``: a failed export check is 1). ``work``'s return value is the app's, so
    sweepers see a training's objective. The returned ``main(argv)`` takes Hydra overrides (``None``:
    the command line), so tests call it directly. ``--help`` prints ``summary`` (plain text), the config
    groups this command's config uses (only those) and its composed config.
    """
    import hydra

    from loftr_kd.config import CONFIG_DIR

    codes = dict(exit_codes or {})

    def app(cfg) -> Any:
        from loftr_kd.errors import debug_enabled, is_user_error, one_line, report, root_cause

        try:
            return work(cfg)
        except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM where the command turns it into one
            if debug_enabled():
                raise
            from loftr_kd.errors import stopped_by

            how, status = stopped_by(error)
            print(f"{program}: stopped by {how}", file=sys.stderr, flush=True)
            _log_to_run_files(f"stopped by {how}")
            _discard_empty_run()  # stopped while starting: no empty run folder left behind
            raise SystemExit(status) from None
        except Exception as error:
            code = next((c for kind, c in codes.items() if isinstance(root_cause(error), kind)), None)
            if debug_enabled() or (code is None and not is_user_error(error)):
                raise
            status = report(program, error)  # stderr
            _log_to_run_files(one_line(root_cause(error)))
            _discard_empty_run()
            raise SystemExit(status if code is None else code) from None

    # Hydra names the job (hydra.job.name, its --help) after the task function's module: the command's.
    app.__module__ = work.__module__
    app = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(app)

    def main(argv: Sequence[str] | None = None) -> Any:
        args = sys.argv[1:] if argv is None else list(argv)
        if "--help" in args or "-h" in args:
            print(help_text(program, summary, config_name, [a for a in args if a not in ("--help", "-h")]))
            return None
        from loftr_kd.errors import debug_enabled

        unknown = None
        if not debug_enabled():  # with the debug flag, Hydra's own error and traceback
            unknown = unknown_group_option(args, config_name) or unknown_setting(config_name, args)
        if unknown:  # Hydra's own message is a dozen lines and exit 1
            from loftr_kd.errors import EXIT_USAGE

            print(f"{program}: error: {unknown}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USAGE)
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


def unknown_group_option(overrides: Sequence[str], config_name: str | None = None) -> str | None:
    """The first ``group=option`` override (``student=fst``) naming no ``conf/<group>/<option>.yaml``, as a
    line naming the options there (the closest first); ``None`` when every one exists.

    With ``config_name``, a group that config does not use (``student=`` for ``export``) is left to Hydra,
    which says so, unless the override adds it (``+group=option``).

    Only plain names are checked (a sweep's ``student=paper,fast`` name by name); quoted or bracketed values,
    interpolations, sweep functions and ``null`` are left to Hydra, and so is everything when the configs
    may come from elsewhere too (``--config-dir``/``--config-path``, ``hydra.searchpath``, a
    ``conf/local`` config).
    """
    import difflib
    import re

    from loftr_kd.config import CONFIG_DIR

    elsewhere = ("--config-dir", "-cd", "--config-path", "-cp")
    if any(a.split("=")[0] in elsewhere or "hydra.searchpath" in a for a in overrides):
        return None
    if any((Path(CONFIG_DIR) / "local").glob("*.yaml")):
        return None
    for override in overrides:
        match = re.fullmatch(
            r"[+~]{0,2}([a-z_]+(?:/[a-z_]+)*)=([A-Za-z0-9_./-]+(?:,[A-Za-z0-9_./-]+)*)", override
        )
        if match is None or match.group(1).startswith("hydra"):
            continue
        group, value = match.groups()
        folder = Path(CONFIG_DIR) / group
        if not folder.is_dir():
            continue
        options = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
        for option in value.split(","):
            if option == "null" or option in options:
                continue
            if (
                config_name is not None
                and not override.startswith("+")
                and group not in _groups_of(config_name)
            ):
                return None  # Hydra: "Could not override '<group>'. No match in the defaults list."
            close = difflib.get_close_matches(option, options, n=1)
            hint = f" (did you mean {group}={close[0]}?)" if close else ""
            return f"{group}={option}: no such option of {group}{hint}; choose one of {', '.join(options)}"
    return None


def _compose(config_name: str, overrides: Sequence[str] = (), hydra_config: bool = False) -> Any:
    """``config_name`` composed with ``overrides`` outside any Hydra app (Hydra's global state cleared before
    and after), for the checks and the help that run before the command's own Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from loftr_kd.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose(config_name, overrides=list(overrides), return_hydra_config=hydra_config)
    finally:
        GlobalHydra.instance().clear()


@functools.cache
def _groups_of(config_name: str) -> frozenset[str]:
    """The config groups ``config_name``'s defaults list uses (composed once; only on an error's path)."""
    cfg = _compose(config_name, hydra_config=True)
    return frozenset(str(group) for group in cfg.hydra.runtime.choices)


def unknown_setting(config_name: str, overrides: Sequence[str]) -> str | None:
    """The first override of a key the composed config lacks (``trainer.max_epoch=3``), as a line naming the
    closest key and the ``+`` that adds a new one; ``None`` when the config composes. Composed once more
    (about 0.1 s), only for a plain command line: with a Hydra flag (``-m``, ``--cfg``, ``--config-path``, ...)
    everything is left to Hydra, and so is any other composition error."""
    import difflib
    import re

    if not overrides or any(a.startswith("-") for a in overrides):
        return None
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from loftr_kd.config import CONFIG_DIR

    try:
        _compose(config_name, overrides)
        return None
    except Exception as error:  # noqa: BLE001 - a line Hydra cannot parse, a defaults-list error: Hydra's own
        match = re.match(r"Could not override '([^']+)'", str(error))
        if (
            not isinstance(error, ConfigCompositionException)
            or match is None
            or "defaults list" in str(error)
        ):
            return None
    key = match.group(1)

    if (Path(CONFIG_DIR) / key).is_dir():  # a config group (deploy=, student=) the config does not take
        return None
    override = next((o for o in overrides if o.split("=", 1)[0].lstrip("~+") == key), key)
    parent, _, leaf = key.rpartition(".")
    try:
        node = _compose(config_name, [o for o in overrides if o != override])
        node = OmegaConf.select(node, parent) if parent else node
        known = [str(k) for k in node] if OmegaConf.is_dict(node) else []
    except Exception:  # noqa: BLE001 - the hint is a courtesy; the line stands without it
        known = []
    if leaf in known:  # the key exists: what fails is inside its value (a mapping with a new key): Hydra's
        return None
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    return f"{override}: {key} is not a setting of this config{hint}; a new key needs a leading +"


def help_text(program: str, summary: str, config_name: str, overrides: Sequence[str] = ()) -> str:
    """``--help`` of a Hydra command: what it does, the config groups of *its* config (Hydra's own help
    lists every group of conf/, training's included) and the composed config."""
    from omegaconf import OmegaConf

    from loftr_kd.config import CONFIG_DIR

    cfg = _compose(config_name, [o for o in overrides if not o.startswith("-")], hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    groups = sorted(g for g in choices if not g.startswith("hydra") and (CONFIG_DIR / g).is_dir())
    lines = [f"{program}: {summary}" if summary else program, ""]
    lines += [
        f"Usage: {program} [key=value ...]  (Hydra overrides: key=value sets, +key=value adds, ~key removes;",
        "       --cfg job prints the composed config, -m runs a sweep)",
        "",
    ]
    if groups:
        lines.append("Config groups (group=option; the current choice first):")
        for group in groups:
            options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
            current = choices[group]
            shown = [str(current)] + [o for o in options if o != current] if current in options else options
            lines.append(f"  {group}: {', '.join(shown)}" + ("" if current in options else " (none chosen)"))
        lines.append("")
    config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    lines += [f"Config (conf/{config_name}.yaml):", OmegaConf.to_yaml(config, resolve=False).rstrip()]
    lines += [
        "",
        "A bad input is one line on stderr and exit status 2; LOFTR_KD_DEBUG=1 shows the traceback.",
    ]
    return "\n".join(lines)


def _discard_empty_run() -> None:
    """A run that failed before writing anything leaves no empty run folder behind (the error is on stderr)."""
    from hydra.core.hydra_config import HydraConfig

    from loftr_kd.rundir import discard_if_empty

    try:
        folder = HydraConfig.get().runtime.output_dir
    except ValueError:  # not inside a Hydra run
        return
    logs = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    names = tuple(Path(h.baseFilename).name for h in logs if Path(h.baseFilename).parent == Path(folder))
    if not names or not discard_if_empty(folder, names):
        return
    for handler in logs:  # a closed FileHandler would create its file again on the next record
        if Path(handler.baseFilename).parent == Path(folder):
            logging.getLogger().removeHandler(handler)
            handler.close()


def _log_to_run_files(line: str) -> None:
    """The error line in the run's log file too (Hydra's file handler), not on the console again."""
    log = logging.getLogger("loftr_kd")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, ``<prog>: error: <message> (<prog> --help: the
    options)``, exit status 2, as every other bad input of the commands (argparse's own prints its usage
    block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help: the options)\n")


def _argument_type(parse: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type=`` parsing with ``parse`` and refusing values ``ok`` rejects: argparse then reports
    ``argument --x: <value> is not <what>`` in one line, exit 2."""
    import argparse

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if parse is int else 'a number'}"
            ) from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return check


# a count or size (>= 1); an index, or a count where 0 means all (>= 0); a finite number > 0 (NaN, inf refused)
positive_int = _argument_type(int, lambda v: v >= 1, ">= 1")
nonnegative_int = _argument_type(int, lambda v: v >= 0, ">= 0")
positive_float = _argument_type(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def plain_warnings(program: str) -> None:
    """Warnings of a command line as one line, ``<program>: warning: <message>`` (Python's default adds the
    source file, line and code of the warning's caller: noise to a user)."""
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{program}: warning: {message}\n"
