"""``loftr-kd-recipe experiment=<name>``: run a multi-stage recipe (``loftr_kd.recipe``; Hydra app,
config ``conf/recipe.yaml``; recipes in ``conf/experiment/``, e.g. ``student_default``)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from loftr_kd.cli import hydra_command


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


main = hydra_command(
    "loftr-kd-recipe",
    "recipe",
    run,
    summary="run a multi-stage recipe, resumably (experiment=student_default rebuilds the shipped student)",
)


if __name__ == "__main__":
    main()
