"""Shared test fixtures."""

from __future__ import annotations

import os

# Tests run on 2-core machines next to other work: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
    """The ONNX export cache of the tests' checkpoints in a temporary folder, not the user's ~/.cache."""
    saved = os.environ.get("LOFTR_KD_CACHE")
    os.environ["LOFTR_KD_CACHE"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    if saved is None:
        os.environ.pop("LOFTR_KD_CACHE", None)
    else:
        os.environ["LOFTR_KD_CACHE"] = saved


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Some tests set torch's thread count process-wide (``Matcher(num_threads=1)``, ``--threads 1``)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def instantiate_preset(name: str, height: int, width: int):
    """``conf/student/<name>.yaml`` composed and instantiated the way training does (Hydra's defaults
    lists, interpolation of the input size, ``_convert_``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from loftr_kd.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            config_name="train", overrides=[f"student={name}", f"data.height={height}", f"data.width={width}"]
        )
    return instantiate(cfg.student)


def quiet_cpu_trainer(root, **options):
    """A Lightning ``Trainer`` on one CPU process that writes nothing of its own (no logger, checkpoint,
    progress bar or model summary) under ``root``; ``options`` add to or override these settings."""
    import pytorch_lightning as pl

    settings = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
    }
    return pl.Trainer(**{**settings, **options})


def shifted_photo_pairs(seed: int, count: int, height: int = 96, width: int = 128) -> list[dict]:
    """Batches of a textured photo crop and the same crop moved by a few pixels (exact homography)."""
    import cv2
    import numpy as np
    from skimage import data as skdata

    image = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        x, y = rng.uniform(20, 300, size=2)
        dx, dy = rng.uniform(-8, 8, size=2)
        a0 = np.array([[1, 0, -x], [0, 1, -y], [0, 0, 1]])
        a1 = np.array([[1, 0, -x - dx], [0, 1, -y - dy], [0, 0, 1]])
        crops = [cv2.warpPerspective(image, a, (width, height)) for a in (a0, a1)]
        batches.append(
            {
                "image0": torch.from_numpy(crops[0])[None, None],
                "image1": torch.from_numpy(crops[1])[None, None],
                "H_0to1": torch.from_numpy(a1 @ np.linalg.inv(a0)).float()[None],
            }
        )
    return batches
