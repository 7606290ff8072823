"""Hydra/OmegaConf glue shared by every entry point."""

from __future__ import annotations

from omegaconf import OmegaConf

from loftr_kd.paths import CONFIG_DIR, REPO_ROOT

__all__ = ["CONFIG_DIR", "register_resolvers"]


def register_resolvers() -> None:
    """Register the ``${loftr_kd_root:}`` resolver (idempotent); call before composing configs."""
    if not OmegaConf.has_resolver("loftr_kd_root"):
        OmegaConf.register_new_resolver("loftr_kd_root", lambda: str(REPO_ROOT))


register_resolvers()
