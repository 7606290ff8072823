"""Every documented command works as written: the shell commands of README.md and docs/*.md are collected
and each one's program and options are checked against the real parser (argparse commands) or config (Hydra
commands: composed with its overrides, then checked as the command checks it); the cheap ones run. File
names the docs give for a run's outputs are the ones the code writes.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomllib
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from loftr_kd.config import CONFIG_DIR, register_resolvers
from loftr_kd.paths import IN_CHECKOUT, REPO_ROOT

pytestmark = pytest.mark.skipif(not IN_CHECKOUT, reason="reads the checkout's docs")

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]  # command -> "module:function"
# The Hydra commands: command -> its config (conf/<name>.yaml).
HYDRA = {
    "loftr-kd-train": "train",
    "loftr-kd-export": "export",
    "loftr-kd-evaluate": "evaluate",
    "loftr-kd-bench": "bench",
    "loftr-kd-recipe": "recipe",
    "loftr-kd-label": "label",
}
# make targets that run a command: target -> (command, arguments the target adds before ARGS)
MAKE_TARGETS = {
    "train": ("loftr-kd-train", []),
    "export": ("loftr-kd-export", []),
    "evaluate": ("loftr-kd-evaluate", []),
    "bench": ("loftr-kd-bench", []),
    "synth": ("loftr-kd-synth", []),
    "default-model": ("loftr-kd-recipe", ["experiment=student_default"]),
}
# Programs of other projects the docs show (their options are theirs to check).
EXTERNAL = {"trtexec", "nohup", "tensorboard"}


@dataclass(frozen=True)
class Command:
    """One documented command: where it is written, and its words."""

    where: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


def fenced_blocks(path: Path) -> Iterator[tuple[int, str, str]]:
    """``(line number, language, text)`` of each fenced code block of a Markdown file."""
    lines = path.read_text().splitlines()
    start, language, body = None, "", []
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            if start is None:
                start, language, body = number, line.strip()[3:].strip(), []
            else:
                yield start, language, "\n".join(body)
                start = None
        elif start is not None:
            body.append(line)


def _words(line: str) -> list[list[str]]:
    """The simple commands of one shell line (``;``, ``&&``, ``|`` separate them), without redirections,
    leading ``VAR=value`` assignments, ``nohup`` and loop keywords."""
    line = re.sub(r"\s\d*>>?&?\s*\S+", " ", line)  # > file, 2>&1
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in (";", "&&", "||", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for words in commands:
        while words and (
            re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]) or words[0] in ("nohup", "do", "then")
        ):
            words = words[1:]
        if words and words[0] not in ("for", "done", "fi"):
            out.append(words)
    return out


def _is_program(word: str) -> bool:
    return word in SCRIPTS or word in ("make", "pip", "python", "python3") or word in EXTERNAL


def documented_commands() -> list[Command]:
    """Every command of the shell blocks of the README and docs/*.md that runs a program of ours, make, pip
    or python (a diagram's or an error message's lines are no commands)."""
    found = []
    for path in DOCS:
        for start, language, text in fenced_blocks(path):
            if language not in ("bash", "sh", "shell"):
                continue  # diagrams, file layouts, outputs
            text = re.sub(r"\\\n\s*", " ", text)  # continuation lines
            for offset, line in enumerate(text.splitlines()):
                first = [w for w in line.split() if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*|nohup|do", w)][:1]
                if not first or not _is_program(first[0].removeprefix(".venv/bin/")):
                    continue  # a diagram's, an output's or a comment's line
                for words in _words(line):
                    program = words[0].removeprefix(".venv/bin/")
                    if _is_program(program):
                        where = f"{path.relative_to(REPO_ROOT)}:{start + offset + 1}"
                        # <run>, <time>: a value of the reader's; a lone "...": "and so on"
                        args = [re.sub(r"<[\w -]+>", "PLACEHOLDER", w) for w in words[1:] if w != "..."]
                        found.append(Command(where, (program, *args)))
    return found


COMMANDS = documented_commands()


# ------------------------------------------------------------------------------------ the checks
def _parser(program: str):
    """The argparse parser of an argparse command (its module's ``build_parser``)."""
    module = importlib.import_module(SCRIPTS[program].split(":")[0])
    assert hasattr(module, "build_parser"), f"{program}: its module has no build_parser()"
    return module.build_parser()


def check_argparse(program: str, args: list[str]) -> None:
    try:
        _parser(program).parse_args(args)
    except SystemExit as error:
        raise AssertionError(
            f"{program} {shlex.join(args)}: rejected by its parser (exit {error.code})"
        ) from None


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep (``a,b``, ``range(...)``) reduced to its first value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={first}")
        else:
            out.append(text)
    return out


def compose_for(program: str, args: list[str]):
    """The config a Hydra command composes from its documented arguments (Hydra's own flags understood)."""
    overrides, multirun, rest = [], False, list(args)
    while rest:
        word = rest.pop(0)
        if word in ("-m", "--multirun"):
            multirun = True
        elif word in ("--cfg", "-c", "-p", "--package", "--config-path", "-cp", "--config-name", "-cn"):
            rest.pop(0)
        elif word in ("--resolve", "--help", "-h", "--info"):
            continue
        else:
            assert not word.startswith("-"), f"{program}: unknown flag {word}"
            overrides.append(word)
    if multirun:
        overrides = _first_of_sweeps(overrides)
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(HYDRA[program], overrides=overrides, return_hydra_config=True)
    # ${hydra:runtime.output_dir} resolves as in a run (into a folder nothing is written to)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/nonexistent/run"
    HydraConfig.instance().set_config(cfg)
    return cfg


def check_hydra(program: str, args: list[str]) -> None:
    if "--config-path" in args or "-cp" in args:  # make rerun: a run's saved config, composed at run time
        return
    try:
        cfg = compose_for(program, args)
    except Exception as error:  # noqa: BLE001 - Hydra's ConfigCompositionException, MissingConfigException, ...
        raise AssertionError(f"{program} {shlex.join(args)}: {type(error).__name__}: {error}") from None
    # then the checks the command itself makes before any work
    if program == "loftr-kd-train":
        from loftr_kd.config_check import check_train_config

        check_train_config(cfg)
    elif program == "loftr-kd-export":
        from loftr_kd.cli.export import export_settings

        export_settings(cfg)
    elif program == "loftr-kd-bench":
        from loftr_kd.cli.bench import settings_from_config

        settings_from_config(cfg)
    elif program == "loftr-kd-evaluate":
        check_methods(cfg)


def check_methods(cfg) -> None:
    """Each evaluation method's settings are settings of its matcher (without loading any weights)."""
    import inspect

    from omegaconf import OmegaConf

    from loftr_kd.matcher import CLASSICAL_METHODS, Matcher, OpenCVMatcher
    from loftr_kd.registration import GuidedSettings

    student = set(inspect.signature(Matcher.__init__).parameters) - {"self"}
    classical = set(inspect.signature(OpenCVMatcher.__init__).parameters) - {"self"}
    for name, spec in (cfg.methods or {}).items():
        if spec is None:
            continue
        spec = OmegaConf.to_container(spec, resolve=False)
        backend = spec.pop("backend", "onnx")
        GuidedSettings.from_value(spec.pop("guided", None))
        known = classical if backend in CLASSICAL_METHODS else student
        unknown = set(spec) - known - {"weights", "threads"}
        assert not unknown, f"methods.{name}: {sorted(unknown)} are not settings of its matcher"


def check_make(args: list[str]) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z_-]+):.*?## ", makefile, re.M))
    variables = dict(word.split("=", 1) for word in args if "=" in word)
    named = [word for word in args if "=" not in word]
    for target in named or ["help"]:
        assert target in targets, f"make {target}: no such target (make help lists {sorted(targets)})"
        if target in MAKE_TARGETS:
            program, fixed = MAKE_TARGETS[target]
            check(program, [*fixed, *shlex.split(variables.get("ARGS", ""))])
        if target == "rerun":
            assert "RUN" in variables, "make rerun needs RUN=<run folder>"


def check_pip(args: list[str]) -> None:
    """``pip install -e ".[extra]"``: the extras exist; wheels pinned in the docs are the Makefile's."""
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for word in args:
        for extra in re.findall(r"\.\[([\w,-]+)\]", word):
            assert set(extra.split(",")) <= extras, f"pip install {word}: extras are {sorted(extras)}"
        if "==" in word:
            assert word in (REPO_ROOT / "Makefile").read_text(), f"pip install {word}: not the Makefile's pin"


def check_python(args: list[str]) -> None:
    """``python -m loftr_kd...`` is the command; ``python -c CODE`` compiles and its loftr_kd imports exist."""
    if args[:1] == ["-m"]:
        module = args[1]
        if module.startswith("loftr_kd"):
            program = next((p for p, target in SCRIPTS.items() if target.split(":")[0] == module), None)
            assert program is not None, f"python -m {module}: no command of that module"
            check(program, args[2:])
        return
    if args[:1] == ["-c"]:
        code = args[1]
        compile(code, "<docs>", "exec")
        for module, names in re.findall(r"from (loftr_kd[\w.]*) import ([\w, ]+)", code):
            imported = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(imported, name), f"python -c: {module} has no {name}"


def check(program: str, args: list[str]) -> None:
    if program == "make":
        check_make(args)
    elif program == "pip":
        check_pip(args)
    elif program in ("python", "python3"):
        check_python(args)
    elif program in HYDRA:
        check_hydra(program, args)
    elif program in SCRIPTS:
        check_argparse(program, args)
    else:
        assert program in EXTERNAL, f"{program}: not a command of loftr-kd"


def test_the_docs_hold_commands_to_check():
    programs = {c.words[0] for c in COMMANDS}
    assert (
        len(COMMANDS) > 80 and {"make", "loftr-kd-train", "loftr-kd-match", "loftr-kd-evaluate"} <= programs
    )


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_fits_its_parser_or_config(command: Command):
    check(command.words[0], list(command.words[1:]))


# ------------------------------------------------------------------------------------ the cheap ones run
def test_the_readme_example_pair_is_made_by_its_command_and_registers(tmp_path, monkeypatch, capsys):
    """The README's example, as written, in a fresh folder: the one command that makes the held-out pairs,
    then loftr-kd-match on h_0103 (reliable, a few px from the exact homography)."""
    import json

    from loftr_kd.cli import homography, match
    from loftr_kd.evaluation import corner_error

    readme = (REPO_ROOT / "README.md").read_text()
    make = next(c for c in COMMANDS if c.words[0] == "loftr-kd-homographies" and "--photo-set" in c.words)
    run = next(c for c in COMMANDS if c.words[0] == "loftr-kd-match" and any("h_0103" in w for w in c.words))
    assert make.where.startswith("README.md") and run.where.startswith("README.md")
    monkeypatch.chdir(tmp_path)
    homography.main(list(make.words[1:]))
    assert match.main([*run.words[1:], "--threads", "2"]) == 0
    folder = Path(run.words[1]).parent
    record = json.loads(
        next((tmp_path / "outputs" / "match").glob(f"{folder.name}_*/matches.json")).read_text()
    )
    truth = np.loadtxt(folder / "H_1_2")
    assert record["reliable"] is True
    assert corner_error(np.array(record["homography"]), truth, 640, 480) < 5.0
    assert "outputs/match/h_0103_1_2" in capsys.readouterr().out
    assert f"{record['num_inliers']} RANSAC inliers" in readme or "RANSAC inliers" in readme


def test_help_flags_and_config_printing_run(capsys):
    """``--cfg job`` (the README) and every command's ``--help``: plain text (no RST markup), and a Hydra
    command lists only its own config groups."""
    from loftr_kd.cli import help_text
    from loftr_kd.cli.train import main as train

    train(["--cfg", "job"])
    assert "optimized_metric: val/student/f1" in capsys.readouterr().out
    for program in SCRIPTS:
        text = help_text(program, "", HYDRA[program]) if program in HYDRA else _parser(program).format_help()
        assert "``" not in text and ":mod:" not in text and ":func:" not in text, program

    def groups(text: str) -> set[str]:
        section = text.split("Config groups", 1)[1].split("\n\n", 1)[0] if "Config groups" in text else ""
        return set(re.findall(r"^  (\w+):", section, re.M))

    assert groups(help_text("loftr-kd-evaluate", "", "evaluate")) == {"paths"}  # training's groups stay out
    assert groups(help_text("loftr-kd-recipe", "", "recipe")) == {"experiment", "paths"}
    assert {"data", "student", "teacher"} <= groups(help_text("loftr-kd-train", "", "train"))


def test_make_help_lists_the_targets_the_docs_use():
    done = subprocess.run(["make", "help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    used = {
        c.words[1] for c in COMMANDS if c.words[0] == "make" and len(c.words) > 1 and "=" not in c.words[1]
    }
    assert used <= set(re.findall(r"(\S+)\s", re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)))


# ------------------------------------------------------------------------------------ file names
def _run_outputs() -> list[Callable[[str], bool]]:
    """What a training run writes into its folder (conf/callbacks, loftr_kd.train, the export)."""
    from omegaconf import OmegaConf

    from loftr_kd.rundir import RUN_FILES
    from loftr_kd.train import RESUMABLE_NAMES

    callbacks = OmegaConf.load(CONFIG_DIR / "callbacks" / "default.yaml")
    names = [str(c.filename) for c in callbacks.values() if "filename" in c]
    patterns = [re.escape(n).replace(r"\{epoch:03d\}", r"(\d{3}|NNN)") + r"\.ckpt" for n in names]
    patterns += [re.escape(n) for n in RESUMABLE_NAMES]
    checkpoints = re.compile(r"checkpoints/(" + "|".join(patterns) + r")")
    tops = {name.rstrip("/") for name in RUN_FILES}
    return [
        lambda rest: rest in ("", "checkpoints", "checkpoints/") or bool(checkpoints.fullmatch(rest)),
        lambda rest: rest.split("/")[0] in tops - {"checkpoints"},
    ]


def test_file_names_in_the_docs_are_those_a_run_writes():
    """``outputs/train/runs/<run>/...``: checkpoints/best-epochNNN.ckpt, last.ckpt, ... (no best.ckpt, no
    student.pt: never written)."""
    accepted = _run_outputs()
    wrong = []
    for path in [*DOCS, REPO_ROOT / "weights" / "README.md", REPO_ROOT / "weights" / "MODEL_CARD.md"]:
        for match in re.finditer(r"outputs/train/runs/[^/\s`)\"']+/?([^\s`)\"',]*)", path.read_text()):
            rest = match.group(1).rstrip(".")
            if not any(accept(rest) for accept in accepted):
                wrong.append(f"{path.relative_to(REPO_ROOT)}: {match.group(0)}")
    assert not wrong, "files a run never writes: " + "; ".join(wrong)


def test_a_hydra_override_given_to_make_as_a_variable_is_refused():
    """`make rerun RUN=<run> ckpt_path=<run>` (what a resume hint used to print) made ckpt_path a make
    variable: the run started again from scratch, without a word."""
    stamp = ".venv/.installed"  # never rebuilt here (-o, the Makefile's own name of it)
    for target in ("train", "rerun"):
        done = subprocess.run(
            ["make", "-s", "-o", str(stamp), target, "RUN=x", "ckpt_path=/some/run", "LOFTR_KD_ROOT=/y"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert (
            f'ckpt_path: not a make setting; Hydra overrides go in ARGS, e.g. make {target} RUN=x ARGS="ckpt_path=/some/run"'
            in (done.stdout)
        )
