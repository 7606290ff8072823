"""``loftr-kd-recipe experiment=<name>``: run a multi-stage recipe (``loftr_kd.recipe``; Hydra app,
config ``conf/recipe.yaml``; recipes in ``conf/experiment/``, e.g. ``student_default``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from loftr_kd.cli import hydra_command
from loftr_kd.config import CONFIG_DIR

EXPERIMENTS = CONFIG_DIR / "experiment"


def run(cfg: DictConfig) -> dict:
    """Run (or, with ``plan_only``, print the plan of) the recipe in ``cfg.recipe``."""
    from loftr_kd.recipe import Recipe, RecipeError, steps_from_config

    if not cfg.recipe.get("name") or not cfg.recipe.get("steps"):
        raise RecipeError("no recipe: pass experiment=<name> (e.g. experiment=student_default)")
    spec = OmegaConf.to_container(cfg.recipe, resolve=True)
    recipe = Recipe(steps_from_config(spec.get("steps")), spec["out_dir"], ship_to=spec.get("ship_to"))
    if cfg.until is not None:
        recipe.step(cfg.until)  # a step of this recipe, checked before any work (plan_only too)
    if cfg.plan_only:
        for step, status in recipe.plan():
            print(f"{step.name:20s} {step.kind:8s} {status}")
        return recipe.state
    return recipe.run(until=cfg.until)


def recipe_names() -> list[str]:
    """The experiments that are recipes (``conf/experiment/<name>.yaml`` with ``recipe.steps``); the others
    are training experiments (``loftr-kd-train experiment=...``)."""
    names = []
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        recipe = OmegaConf.load(path).get("recipe")
        if isinstance(recipe, DictConfig) and recipe.get("steps"):
            names.append(path.stem)
    return names


_app = hydra_command(
    "loftr-kd-recipe",
    "recipe",
    run,
    summary="run a multi-stage recipe, resumably (experiment=student_default rebuilds the shipped student; "
    "the other experiments listed below are training experiments, for loftr-kd-train)",
)


def main(argv: Sequence[str] | None = None) -> Any:
    """``loftr-kd-recipe``: Hydra overrides in ``argv`` (default: the command line); a training experiment
    given as a recipe is one line naming the recipes (Hydra's own message was a composition error)."""
    args = sys.argv[1:] if argv is None else list(argv)
    chosen = [a.split("=", 1)[1] for a in args if a.startswith(("experiment=", "+experiment="))]
    recipes = recipe_names()
    if chosen and chosen[-1] not in recipes and (EXPERIMENTS / f"{chosen[-1]}.yaml").is_file():
        from loftr_kd.errors import EXIT_USAGE

        print(
            f"loftr-kd-recipe: error: experiment={chosen[-1]} is a training experiment (loftr-kd-train "
            f"experiment={chosen[-1]}), not a recipe; recipes: {', '.join(recipes)}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_USAGE)
    return _app(argv)


if __name__ == "__main__":
    main()
