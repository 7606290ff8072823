"""What pyproject.toml cannot declare: the wheel carries the checkout's Hydra configs (conf/) and shipped weights
(weights/) as package data, loftr_kd/conf and loftr_kd/weights, so an installed loftr-kd runs without the
repository (loftr_kd.paths finds them there; a checkout keeps using its own conf/ and weights/)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
CONFIG_PACKAGES = ["loftr_kd.conf", *sorted(f"loftr_kd.conf.{d.name}" for d in (HERE / "conf").iterdir() if d.is_dir())]

setup(
    packages=[*find_packages("src"), *CONFIG_PACKAGES, "loftr_kd.weights"],
    package_dir={"": "src", "loftr_kd.conf": "conf", "loftr_kd.weights": "weights"},
    package_data={
        "loftr_kd": ["py.typed"],
        **dict.fromkeys(CONFIG_PACKAGES, ["*.yaml"]),
        "loftr_kd.weights": ["*.onnx", "*.pt", "MODEL_CARD.md"],
    },
)
