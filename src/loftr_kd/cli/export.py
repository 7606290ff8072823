"""``loftr-kd-export``: Hydra entry point over the one export pipeline (``loftr_kd.export.pipeline``).

``run_export(cfg)`` does the work on a composed ``conf/export.yaml`` (tests call it with ``compose``);
``main`` only wraps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from loftr_kd.config import CONFIG_DIR, register_resolvers


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export, check, optionally quantise and build an engine; returns the pipeline's summary.

    Raises:
        ExportError: export or a check failed (the checkpoint is untouched).
    """
    from dataclasses import fields

    from loftr_kd.export.pipeline import ExportSettings, run_pipeline

    keys = [f.name for f in fields(ExportSettings) if f.name in cfg]
    settings = ExportSettings.from_mapping(
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    )
    return run_pipeline(Path(cfg.ckpt_path), Path(cfg.out_dir), settings)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """``loftr-kd-export ckpt_path=...`` (see conf/export.yaml)."""
    from loftr_kd.errors import debug_enabled, report
    from loftr_kd.export.onnx import ExportError

    register_resolvers()
    try:
        run_export(cfg)
    except (ExportError, ValueError) as error:
        if debug_enabled():
            raise
        status = report("loftr-kd-export", error)  # one line on stderr
        # A failed export or check is exit status 1 (as before); a bad setting is 2 (usage).
        raise SystemExit(1 if isinstance(error, ExportError) else status) from None


if __name__ == "__main__":
    main()
