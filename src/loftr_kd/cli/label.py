"""``loftr-kd-label``: label unlabeled pairs with their sparse teacher into the cache training reads
(``conf/label.yaml``; Hydra, so DDP and the SLURM launcher work as for training)."""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from loftr_kd.cli import hydra_command
from loftr_kd.errors import EXIT_SIGINT, EXIT_SIGTERM


def run(cfg: DictConfig) -> list[Any]:
    """Label every unlabeled source of ``cfg.data`` (the source itself, or each of a mixture's), with
    ``cfg.threads`` intra-op torch threads (``conf/label.yaml``; ``null``: torch's default)."""
    from loftr_kd.config_check import check_threads
    from loftr_kd.runtime.torch_backend import torch_threads

    threads = cfg.get("threads")
    check_threads(threads)  # as training's
    with torch_threads(threads):  # the thread policy of training (conf/train.yaml), restored afterwards
        return _label(cfg)


def _label(cfg: DictConfig) -> list[Any]:
    """:func:`run` once the thread policy is in place."""
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
        _stopped("SIGTERM", EXIT_SIGTERM)
    except KeyboardInterrupt:  # outside Lightning's predict loop (reading the folder, decoding videos)
        _stopped("Ctrl-C", EXIT_SIGINT)
    except SystemExit as error:
        if isinstance(error.__context__, KeyboardInterrupt):  # Lightning's exit(1) after "graceful shutdown"
            _stopped("Ctrl-C", EXIT_SIGINT)
        raise
    if cfg.get("done_file"):  # a recipe's marker that the labels are complete (recipe `creates:`)
        from loftr_kd.files import write_json

        write_json(cfg.done_file, {"caches": [str(c.folder) for c in caches]})
    return caches


def _stopped(how: str, status: int) -> None:
    """One line saying the labels so far are kept, then exit ``status``."""
    print(
        f"loftr-kd-label: stopped by {how}; the labels written so far are kept, and the same command labels "
        "the rest",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(status) from None


main = hydra_command(
    "loftr-kd-label",
    "label",
    run,
    summary="label unlabeled image pairs with a sparse teacher into the cache training reads",
)


if __name__ == "__main__":
    main()
