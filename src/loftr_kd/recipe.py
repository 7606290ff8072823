"""Multi-stage recipes: one named experiment that rebuilds a shipped model from a fresh clone (data
generation, every training stage, export) and can be stopped and continued at any point.

A recipe is a list of steps, run in order, each as its own process (the same commands a user types):

- ``command``: a program and its arguments (``loftr-kd-synth ...``); done once its ``creates`` path exists.
- ``train``: ``loftr-kd-train`` overrides; the run lands in ``<out_dir>/<step>-<attempt>``. A stage whose
  attempt wrote ``summary.json`` is done; an interrupted one is resumed into the next attempt directory
  with ``ckpt_path=<previous attempt>`` (a run directory is never overwritten).
- ``ship``: a finished stage's best checkpoint (optionally with a new ``match_threshold`` and
  ``refine_query``, ``refine_points``, ``border_removal``) -> ``<name>.pt``
  (``save_student``) and ``<name>.onnx`` with its encoder and matcher graphs
  (``loftr-kd-export``, its checks and report), copied to ``ship_to`` when set.

Arguments may name earlier results: ``{<step>.best_checkpoint}``, ``{<step>.run_dir}``, ``{out_dir}``.
``recipe.json`` in ``out_dir`` (written atomically after every step) records each step's command, wall
time, start and end, and the hardware it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loftr_kd.errors import sigterm_raises, stopped_by
from loftr_kd.files import replacing, write_json

PathLike = str | os.PathLike
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\.(best_checkpoint|run_dir)\}")


# How long a step's process may take to stop after a passed-on Ctrl-C or SIGTERM (a training finishes its
# batch, writes its checkpoint and exits): generous, a slow batch on a CPU takes tens of seconds.
STOP_WAIT_S = 300

# The inference settings a ship step may set (load_student's keyword arguments of the same names).
SHIP_SETTINGS = ("match_threshold", "refine_query", "refine_points", "border_removal")


class RecipeError(ValueError):
    """A recipe is malformed or one of its steps failed (the message names the step)."""


@dataclass(frozen=True)
class Step:
    """One step of a recipe (exactly one of ``command``, ``train``, ``ship`` is set)."""

    name: str
    command: tuple[str, ...] = ()
    creates: str | None = None
    train: tuple[str, ...] = ()
    ship: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name or ""):
            raise RecipeError(f"step name {self.name!r}: use letters, digits and underscores")
        kinds = [k for k in ("command", "train", "ship") if getattr(self, k)]
        if len(kinds) != 1:
            raise RecipeError(
                f"step {self.name}: needs exactly one of command, train, ship (has {kinds or 'none'})"
            )
        if self.command and not self.creates:
            raise RecipeError(
                f"step {self.name}: a command step needs `creates` (the path that marks it done)"
            )
        if self.ship and "from" not in self.ship:
            raise RecipeError(f"step {self.name}: ship needs `from: <train step>`")

    @property
    def kind(self) -> str:
        return "command" if self.command else "train" if self.train else "ship"

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> Step:
        unknown = set(spec) - {"name", "command", "creates", "train", "ship"}
        if unknown:
            raise RecipeError(f"step {spec.get('name')}: unknown keys {sorted(unknown)}")
        return cls(
            name=str(spec.get("name")),
            command=tuple(str(a) for a in spec.get("command") or ()),
            creates=None if spec.get("creates") is None else str(spec["creates"]),
            train=tuple(str(a) for a in spec.get("train") or ()),
            ship=dict(spec.get("ship") or {}),
        )


def hardware() -> dict[str, Any]:
    """What a step ran on: CPU model and cores, torch threads, GPU (when one is visible)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _program(name: str, bin_dir: Path) -> str:
    """A ``loftr-kd-*`` program of this installation (beside the running Python), else from PATH."""
    local = bin_dir / name
    return str(local) if local.exists() else name


class Recipe:
    """Runs ``steps`` into ``out_dir``; see the module docstring."""

    def __init__(
        self,
        steps: Sequence[Step],
        out_dir: PathLike,
        *,
        ship_to: PathLike | None = None,
        bin_dir: PathLike | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise RecipeError(f"step names must be unique: {names}")
        self.steps = list(steps)
        self.out_dir = Path(out_dir)
        from loftr_kd.files import check_folder_path

        check_folder_path(self.out_dir, "recipe.out_dir")
        self.ship_to = Path(ship_to) if ship_to else None
        self.bin_dir = Path(bin_dir) if bin_dir else Path(sys.executable).parent
        self.env = dict(os.environ, **(env or {}))
        self.state_path = self.out_dir / "recipe.json"
        self.state: dict[str, Any] = {"steps": {}}
        if self.state_path.is_file():
            try:
                self.state = json.loads(self.state_path.read_text())
            except json.JSONDecodeError as error:
                raise RecipeError(
                    f"{self.state_path}: not valid JSON ({error}); move it away to start over"
                ) from error

    # ------------------------------------------------------------------------------------ state
    def _attempts(self, step: Step) -> list[Path]:
        return sorted(
            (
                p
                for p in self.out_dir.glob(f"{step.name}-*")
                if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()
            ),
            key=lambda p: int(p.name.rsplit("-", 1)[1]),
        )

    def finished_run(self, name: str) -> Path | None:
        """The attempt directory of train step ``name`` that finished (holds ``summary.json``)."""
        step = self.step(name)
        done = [p for p in self._attempts(step) if (p / "summary.json").is_file()]
        return done[-1] if done else None

    def best_checkpoint(self, name: str) -> Path:
        run = self.finished_run(name)
        if run is None:
            raise RecipeError(f"step {name} has not finished: no {self.out_dir}/{name}-*/summary.json")
        summary = json.loads((run / "summary.json").read_text())
        best = summary.get("best_checkpoint")
        if not best or not Path(best).is_file():
            raise RecipeError(f"{run}/summary.json: best_checkpoint {best!r} is not a file")
        return Path(best)

    def step(self, name: str) -> Step:
        """The step called ``name``.

        Raises:
            RecipeError: no such step (the message lists them).
        """
        for step in self.steps:
            if step.name == name:
                return step
        raise RecipeError(f"no step named {name!r} (steps: {', '.join(s.name for s in self.steps)})")

    def _resolve(self, text: str) -> str:
        def value(match: re.Match) -> str:
            name, what = match.groups()
            if what == "best_checkpoint":
                return str(self.best_checkpoint(name))
            run = self.finished_run(name)
            if run is None:
                raise RecipeError(f"{{{name}.run_dir}}: step {name} has not finished")
            return str(run)

        return _PLACEHOLDER.sub(value, text).replace("{out_dir}", str(self.out_dir))

    def is_done(self, step: Step) -> bool:
        if step.kind == "command":
            return Path(self._resolve(step.creates)).exists()
        if step.kind == "train":
            return self.finished_run(step.name) is not None
        name = step.ship.get("name", "student")
        built = [self.out_dir / f"{name}.pt", self.out_dir / f"{name}.onnx"]
        if not all(path.is_file() for path in built):
            return False
        # shipping to a folder that does not hold these exact files yet is still to do
        return self.ship_to is None or all(
            (self.ship_to / path.name).is_file()
            and (self.ship_to / path.name).read_bytes() == path.read_bytes()
            for path in built
        )

    def _record(self, step: Step, **entry: Any) -> None:
        self.state["steps"].setdefault(step.name, {}).update(entry)
        write_json(self.state_path, self.state)

    # ------------------------------------------------------------------------------------ running
    def plan(self) -> list[tuple[Step, str]]:
        """``(step, "done" | "resume" | "run")`` for every step, without running anything."""
        out = []
        for step in self.steps:
            if self.is_done(step):
                status = "done"
            elif step.kind == "train" and self._attempts(step):
                status = "resume"
            else:
                status = "run"
            out.append((step, status))
        return out

    def _run_process(self, step: Step, argv: list[str]) -> None:
        log_path = self.out_dir / f"{step.name}.log"
        print(f"[recipe] {step.name}: {' '.join(argv)}  (log: {log_path})", flush=True)
        with open(log_path, "a") as log:
            returncode = _run_child(step, argv, log, self.env)
        if returncode != 0:
            tail = log_path.read_text().strip().splitlines()[-5:]
            raise RecipeError(
                f"step {step.name} failed (exit {returncode}); last lines of {log_path}:\n  "
                + "\n  ".join(tail)
            )

    def _train_argv(self, step: Step) -> list[str]:
        attempts = self._attempts(step)
        number = int(attempts[-1].name.rsplit("-", 1)[1]) + 1 if attempts else 1
        run_dir = self.out_dir / f"{step.name}-{number}"
        argv = [_program("loftr-kd-train", self.bin_dir), *(self._resolve(a) for a in step.train)]
        resumable = [
            p for p in attempts if (p / "checkpoints").is_dir() and any((p / "checkpoints").glob("*.ckpt"))
        ]
        if resumable:
            argv.append(f"ckpt_path={resumable[-1]}")
        argv.append(f"hydra.run.dir={run_dir}")
        return argv

    def _ship(self, step: Step) -> list[str]:
        from loftr_kd.models.student import load_student, save_student
        from loftr_kd.runtime.backend import SPLIT_PARTS, split_path

        spec = dict(step.ship)
        name = str(spec.get("name", "student"))
        source = self.best_checkpoint(str(spec["from"]))
        height, width = int(spec.get("height", 480)), int(spec.get("width", 640))
        # inference settings chosen at shipping (the threshold on validation data, see the recipe's notes; where
        # image0's points sit, how many per matched cell, the border cells without matches): None keeps the stored
        settings = {key: spec.get(key) for key in SHIP_SETTINGS}
        student = load_student(source, input_height=height, input_width=width, **settings)
        pt = save_student(student, self.out_dir / f"{name}.pt")
        export_dir = self.out_dir / f"{step.name}_export"
        if export_dir.exists():
            shutil.rmtree(export_dir)  # an interrupted export: its files are rebuilt from the .pt
        argv = [
            _program("loftr-kd-export", self.bin_dir),
            f"ckpt_path={pt}",
            f"name={name}",
            f"height={height}",
            f"width={width}",
            f"hydra.run.dir={export_dir}",
            *(str(a) for a in spec.get("export", ())),
        ]
        self._run_process(step, argv)
        whole = export_dir / f"{name}.onnx"
        if not whole.is_file():
            raise RecipeError(f"step {step.name}: loftr-kd-export wrote no {whole.name} in {export_dir}")
        # the whole graph and, where the export wrote them, its encoder and matcher graphs beside it
        exported = [whole] + [p for p in (split_path(whole, part) for part in SPLIT_PARTS) if p.is_file()]
        onnx = [_copy_atomically(path, self.out_dir / path.name) for path in exported]
        shipped = [str(pt), *map(str, onnx)]
        if self.ship_to is not None:  # the shipped files are replaced whole or not at all
            shipped += [str(_copy_atomically(path, self.ship_to / path.name)) for path in (pt, *onnx)]
        return [*argv, f"# from {source}; wrote {', '.join(shipped)}"]

    def _run_step(self, step: Step) -> None:
        entry = self.state["steps"].get(step.name, {})
        # an interrupted step's time counts towards its total; a step run again from scratch starts at 0
        previous = float(entry.get("wall_s", 0.0)) if entry.get("status") == "interrupted" else 0.0
        started = time.time()
        self._record(step, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), hardware=hardware())
        try:
            if step.kind == "command":
                program, *args = (self._resolve(a) for a in step.command)
                argv = [_program(program, self.bin_dir), *args]
                self._run_process(step, argv)
                if not Path(self._resolve(step.creates)).exists():
                    raise RecipeError(f"step {step.name} finished but did not create {step.creates}")
            elif step.kind == "train":
                argv = self._train_argv(step)
                self._run_process(step, argv)
            else:
                argv = self._ship(step)
        except BaseException:  # Ctrl-C or a failure: keep the time spent, the next run continues
            self._record(step, status="interrupted", wall_s=round(previous + time.time() - started, 1))
            raise
        wall = time.time() - started
        self._record(
            step,
            status="done",
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            wall_s=round(previous + wall, 1),
            last_command=argv,
        )
        print(f"[recipe] {step.name}: done in {wall / 60:.1f} min", flush=True)

    def run(self, until: str | None = None) -> dict[str, Any]:
        """Run every step that is not done, in order (stopping after ``until`` when given).

        Ctrl-C and SIGTERM (``kill``, a batch system's time limit) are passed on to the running step's
        process as they came (a training then saves ``interrupted.ckpt`` on SIGTERM and marks its run
        interrupted); the recipe waits for it to stop (at most :data:`STOP_WAIT_S` seconds, or until a second
        signal: then it is killed), records the step's time so far and raises :class:`KeyboardInterrupt`
        (:class:`loftr_kd.errors.Terminated` for SIGTERM). The next run resumes the step.
        """
        if until is not None:
            self.step(until)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with sigterm_raises():
            self._run_all(until)
        return self.state

    def _run_all(self, until: str | None) -> None:
        for step in self.steps:
            if self.is_done(step):
                print(f"[recipe] {step.name}: done, skipped", flush=True)
            else:
                self._run_step(step)
            if step.name == until:
                break


def _copy_atomically(source: Path, target: Path) -> Path:
    with replacing(target, suffix=target.suffix) as tmp:
        shutil.copyfile(source, tmp)
    return target


def _run_child(step: Step, argv: list[str], log: Any, env: Mapping[str, str]) -> int:
    """Run a step's process to its end and return its exit status; Ctrl-C or SIGTERM (raised here as
    ``KeyboardInterrupt``) is passed on to it and waited for, then raised on."""
    # Its own session: a terminal's Ctrl-C reaches the recipe alone, which passes it on exactly once (a
    # second SIGINT would cut the training's own shutdown short).
    child = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        return child.wait()
    except KeyboardInterrupt as error:
        how, _ = stopped_by(error)
        child.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        print(
            f"[recipe] {step.name}: {how} passed on; waiting up to {STOP_WAIT_S} s for it to stop",
            flush=True,
        )
        try:
            child.wait(timeout=STOP_WAIT_S)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second signal: stop now
            child.kill()
            child.wait()
            print(f"[recipe] {step.name}: killed (it did not stop by itself)", flush=True)
        raise


def steps_from_config(specs: Sequence[Mapping[str, Any]]) -> list[Step]:
    """Steps from a recipe's ``steps`` list (plain dicts)."""
    if not specs:
        raise RecipeError("recipe.steps is empty")
    if (
        isinstance(specs, (str, bytes))
        or not isinstance(specs, Sequence)
        or not all(isinstance(spec, Mapping) for spec in specs)
    ):
        raise RecipeError(f"recipe.steps={specs!r}: expected a list of steps (mappings with name, kind, ...)")
    return [Step.from_mapping(spec) for spec in specs]


__all__ = ["Recipe", "RecipeError", "Step", "hardware", "steps_from_config"]
