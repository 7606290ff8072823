"""loftr-kd as a library: the wheel built from the checkout carries the Hydra configs and the shipped weights,
and the README's Python snippet and the commands work from a fresh virtual environment in any folder.

The venv is new, but it reuses this environment's installed dependencies (torch, onnxruntime, ... through
a ``.pth`` line) instead of downloading them: what is tested is the wheel, not PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import cv2
import pytest

from loftr_kd.paths import IN_CHECKOUT, REPO_ROOT

pytestmark = pytest.mark.skipif(not IN_CHECKOUT, reason="builds the wheel from a checkout")

# What a wheel is built from (everything else in the checkout is not part of the package).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "src", "conf", "weights")


def _run(args, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, bin folder, env)`` of a fresh venv holding only the wheel (its dependencies borrowed)."""
    work = tmp_path_factory.mktemp("packaging")
    tree = work / "tree"  # a clean copy: the build's own files never land in the checkout
    for name in SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOFTR_KD_ROOT")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work),
            ".",
        ],
        tree,
        env,
    )
    (wheel,) = work.glob("loftr_kd-*.whl")
    prefix = work / "venv"
    venv.create(prefix, with_pip=False, symlinks=True)
    python = prefix / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, env
    )
    # This environment's dependencies, after the venv's own site-packages (its loftr_kd wins).
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib.stdout.strip(), "borrowed_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-index", str(wheel)], work, env)
    return python, prefix / "bin", env


def _photo_pair(folder: Path) -> tuple[Path, Path]:
    """Two views of a scikit-image photograph: image1 rotated by 10 degrees and zoomed 1.1x."""
    import skimage.data

    image0 = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    rotate = cv2.getRotationMatrix2D((255.5, 255.5), 10.0, 1.1)
    image1 = cv2.warpAffine(image0, rotate, (512, 512))
    paths = folder / "a.png", folder / "b.png"
    for path, image in zip(paths, (image0, image1)):
        cv2.imwrite(str(path), image)
    return paths


def test_the_readme_snippet_runs_from_the_wheel_without_torch(installed, tmp_path):
    python, _, env = installed
    a, b = _photo_pair(tmp_path)
    snippet = textwrap.dedent(
        f"""
        import json, sys
        import cv2
        from loftr_kd import Matcher
        matcher = Matcher()
        image0, image1 = cv2.imread({str(a)!r}), cv2.imread({str(b)!r})
        result = matcher(image0, image1)
        import loftr_kd
        print(json.dumps({{"matches": len(result["keypoints0"]), "package": loftr_kd.__file__,
                          "weights": str(matcher.weights), "torch": "torch" in sys.modules}}))
        """
    )
    done = _run([str(python), "-c", snippet], tmp_path, env)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    site = str(python.parent.parent)
    assert record["package"].startswith(site)  # the wheel's package, not the checkout's
    assert record["weights"].startswith(site) and record["weights"].endswith("student_paper_refine.onnx")
    assert record["matches"] > 50
    assert not record["torch"]  # the onnxruntime path never imports torch


def test_commands_run_from_any_folder_and_write_under_it(installed, tmp_path):
    python, bin_dir, env = installed
    a, b = _photo_pair(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    _run([str(bin_dir / "loftr-kd-match"), str(a), str(b)], work, env)
    (record,) = (work / "outputs" / "match").glob("*/matches.json")  # under the current folder
    record = json.loads(record.read_text())
    assert record["reliable"] is True and record["num_inliers"] >= 15
    # the Hydra commands compose their configs from the wheel's package data
    done = _run([str(bin_dir / "loftr-kd-train"), "--cfg", "job", "--resolve"], work, env)
    paths = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in done.stdout.splitlines()[1:7])}
    assert paths["data_dir"] == str(work / "data") and paths["log_dir"] == str(work / "outputs")
    assert paths["weights_dir"].startswith(str(python.parent.parent))  # the wheel's weights


def test_the_sweep_extra_makes_a_database_study_work(tmp_path):
    """The `sweep` extra holds in this environment, and with it optuna's database storage (the one a search
    can be continued from, `hydra.sweeper.storage=sqlite:///...`) works: hydra-optuna-sweeper needs optuna
    2.x, whose storage stopped with a bare AssertionError on SQLAlchemy 2."""
    from importlib.metadata import version

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    requirement = pytest.importorskip("packaging.requirements").Requirement
    optuna = pytest.importorskip("optuna")
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {r.name.lower(): r for r in map(requirement, extras["sweep"])}
    assert not pins["sqlalchemy"].specifier.contains("2.0.0")
    for name, pin in pins.items():
        assert pin.specifier.contains(version(name), prereleases=True), f"{name} {version(name)} is not {pin}"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="pins")
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    assert len(optuna.load_study(study_name="pins", storage=storage).trials) == 2
