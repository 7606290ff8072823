"""``loftr-kd-export``: Hydra entry point over the one export pipeline (``loftr_kd.export.pipeline``).

``run_export(cfg)`` does the work on a composed ``conf/export.yaml`` (tests call it with ``compose``);
``main`` only wraps it. :func:`check_export_config` runs before Hydra creates the run folder (the
``ClaimRunDir`` callback of ``conf/export.yaml``), so a missing ``ckpt_path`` or an impossible setting is
one line and leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from loftr_kd.cli import hydra_command

# conf/export.yaml's own keys; every other top-level key is an export setting (ExportSettings).
COMMAND_KEYS = ("ckpt_path", "out_dir", "force", "threads", "paths", "hydra", "task_name")


def export_settings(cfg: DictConfig) -> Any:
    """The :class:`ExportSettings` of a composed ``conf/export.yaml``.

    Raises:
        ValueError: a top-level key that is neither a setting of the command nor an export setting.
    """
    from loftr_kd.export.pipeline import ExportSettings

    names = {f.name for f in fields(ExportSettings)}
    unknown = [k for k in cfg if k not in names and k not in COMMAND_KEYS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), sorted(names | set(COMMAND_KEYS)), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"{unknown[0]} is not a setting of loftr-kd-export{hint}")
    keys = [k for k in names if k in cfg]
    return ExportSettings.from_mapping(OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True))


def resolve_checkpoint(ckpt_path: Any) -> Path:
    """``ckpt_path`` as given: a checkpoint file, or a training run folder (its best checkpoint, else
    ``last.ckpt``), as training's ``ckpt_path=`` takes a run folder.

    Raises:
        ValueError: no ``ckpt_path``, or a folder without checkpoints.
        FileNotFoundError: no such file or folder.
    """
    if ckpt_path in (None, "", "???"):
        raise ValueError(
            "ckpt_path is required: loftr-kd-export ckpt_path=<checkpoint file or training run folder> "
            "(e.g. ckpt_path=weights/student_paper_refine.pt)"
        )
    path = Path(str(ckpt_path))
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        chosen = best[-1] if best else folder / "last.ckpt"
        if not chosen.is_file():
            raise ValueError(f"ckpt_path={path}: a folder without best-*.ckpt or last.ckpt in {folder}")
        print(f"Export: taking {chosen} from the run folder {path}.")
        return chosen
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file or run folder")
    return path


def check_export_config(cfg: DictConfig) -> None:
    """Everything checkable before any work (``ClaimRunDir`` runs it before the run folder exists)."""
    from loftr_kd.config_check import check_threads

    export_settings(cfg)
    check_threads(cfg.get("threads"))
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        resolve_checkpoint(None)
    resolve_checkpoint(cfg.ckpt_path)


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export, check, optionally quantise and build an engine; returns the pipeline's summary.

    Raises:
        ExportError: export or a check failed (the checkpoint is untouched).
        ValueError: a bad setting, or an output file that loftr-kd did not write (``force=true``).
    """
    from loftr_kd.errors import sigterm_raises
    from loftr_kd.export.pipeline import run_pipeline
    from loftr_kd.runtime.sessions import default_threads
    from loftr_kd.runtime.torch_backend import torch_threads

    check_export_config(cfg)
    checkpoint = resolve_checkpoint(cfg.ckpt_path)
    settings = export_settings(cfg)
    threads = cfg.get("threads")
    # SIGTERM, as Ctrl-C, removes the graph being written or checked.
    with sigterm_raises(), torch_threads(threads), default_threads(threads):
        return run_pipeline(checkpoint, Path(cfg.out_dir), settings, force=bool(cfg.get("force", False)))


def _export_error() -> type[BaseException]:
    from loftr_kd.export.onnx import ExportError

    return ExportError


# A failed export or check is exit status 1 (the checkpoint is fine); a bad setting or file is 2 (usage).
main = hydra_command(
    "loftr-kd-export",
    "export",
    run_export,
    summary="export a checkpoint or training run folder to ONNX (checked), optionally INT8 and a TensorRT engine (docs/deployment.md)",
    exit_codes={_export_error(): 1},
)


if __name__ == "__main__":
    main()
