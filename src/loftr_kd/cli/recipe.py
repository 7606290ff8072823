"""``loftr-kd-recipe experiment=<name>``: run a multi-stage recipe (``loftr_kd.recipe``; Hydra app,
config ``conf/recipe.yaml``; recipes in ``conf/experiment/``, e.g. ``student_default``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from loftr_kd.config import CONFIG_DIR


def run(cfg: DictConfig) -> dict:
    """Run (or, with ``plan_only``, print the plan of) the recipe in ``cfg.recipe``."""
    from loftr_kd.recipe import Recipe, RecipeError, steps_from_config

    if not cfg.recipe.get("name") or not cfg.recipe.get("steps"):
        raise RecipeError("no recipe: pass experiment=<name> (e.g. experiment=student_default)")
    spec = OmegaConf.to_container(cfg.recipe, resolve=True)
    recipe = Recipe(steps_from_config(spec.get("steps")), spec["out_dir"], ship_to=spec.get("ship_to"))
    if cfg.plan_only:
        for step, status in recipe.plan():
            print(f"{step.name:20s} {step.kind:8s} {status}")
        return recipe.state
    return recipe.run(until=cfg.until)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="recipe")
def _hydra_main(cfg: DictConfig) -> None:
    from loftr_kd.errors import debug_enabled, is_user_error, report

    try:
        run(cfg)
    except Exception as error:
        if debug_enabled() or not is_user_error(error):
            raise
        raise SystemExit(report("loftr-kd-recipe", error)) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; ``argv`` (Hydra overrides) defaults to the command line."""
    if argv is None:
        _hydra_main()
        return
    saved = sys.argv
    sys.argv = ["loftr-kd-recipe", *argv]
    try:
        _hydra_main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
