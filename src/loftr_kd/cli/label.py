"""``loftr-kd-label``: label unlabeled pairs with their sparse teacher into the cache training reads
(``conf/label.yaml``; Hydra, so DDP and the SLURM launcher work as for training)."""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from loftr_kd.cli import hydra_command
from loftr_kd.errors import EXIT_SIGTERM


def run(cfg: DictConfig) -> list[Any]:
    """Label every unlabeled source of ``cfg.data`` (the source itself, or each of a mixture's)."""
    import hydra

    datamodule = hydra.utils.instantiate(cfg.data)
    sources = getattr(datamodule, "sources", {"data": datamodule})
    unlabeled = [s for s in sources.values() if getattr(s, "kind", None) == "unlabeled"]
    if not unlabeled:
        raise ValueError(
            "no unlabeled data source to label: use data=unlabeled data.root=FOLDER (or data=mixed)"
        )
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    try:
        caches = [source.label(options) for source in unlabeled]
    except SIGTERMException:
        print(
            "loftr-kd-label: stopped by SIGTERM; the labels written so far are kept, and the same command "
            "labels the rest",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_SIGTERM) from None
    if cfg.get("done_file"):  # a recipe's marker that the labels are complete (recipe `creates:`)
        from loftr_kd.files import write_json

        write_json(cfg.done_file, {"caches": [str(c.folder) for c in caches]})
    return caches


main = hydra_command(
    "loftr-kd-label",
    "label",
    run,
    summary="label unlabeled image pairs with a sparse teacher into the cache training reads",
)


if __name__ == "__main__":
    main()
