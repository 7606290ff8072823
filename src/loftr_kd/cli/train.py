"""``loftr-kd-train`` / ``make train``: Hydra over :func:`loftr_kd.train.train` (``conf/train.yaml``)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from loftr_kd.config import CONFIG_DIR
from loftr_kd.errors import debug_enabled, is_user_error, one_line, report, root_cause
from loftr_kd.train import train

log = logging.getLogger("loftr_kd.train")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | list[float] | None:
    """Hydra wrapper around :func:`train`: a bad input ends in one line and exit status 2.

    ``LOFTR_KD_DEBUG=1`` (or ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.
    """
    try:
        return train(cfg)
    except Exception as error:
        if debug_enabled() or not is_user_error(error):
            raise
        status = report("loftr-kd-train", error)  # stderr
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, one_line(root_cause(error)), None, None)
        for handler in logging.getLogger().handlers:  # and the run's log file, not the console again
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        raise SystemExit(status) from None


if __name__ == "__main__":
    main()
