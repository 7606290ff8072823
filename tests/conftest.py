"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    on the shared 2-core machine, two spinning threads are up to 20x slower in the big teachers' tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The published Coarse_LoFTR_TRT sizes (conf/student/paper.yaml), for small students built in tests.
PAPER_STUDENT = dict(
    backbone="resnet_fpn",
    initial_dim=8,
    block_dims=(8, 16, 32, 32),
    pe_temp_bug_fix=False,
    keep_unused_fpn=True,
)


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


def assert_split_matches_whole(onnx_path, image0, image1):
    """Run a whole exported graph and its split halves (``export_split`` beside it) through the onnxruntime
    backend on one pair ``(1, 1, H, W)``; assert the split matches equal the whole graph's; return
    ``(whole outputs, image0's encoding)``."""
    import numpy as np

    from loftr_kd.runtime import OnnxBackend

    backend = OnnxBackend(onnx_path, threads=1)
    whole = backend.run(backend.feed(image0, image1))
    encoded0 = backend.encode(image0)
    split = backend.match(encoded0, backend.encode(image1))
    for name in ("match_ids", "points0", "points1"):
        np.testing.assert_array_equal(getattr(split, name), getattr(whole, name), err_msg=name)
    return whole, encoded0


def shifted_fine_maps(h: int, w: int, shift: tuple[int, int], points: int = 1):
    """A corner-query ``corr`` refinement (16-px cells, 1/2 fine map, margin 2) with a sharp softmax, and unit
    fine descriptors of an ``h x w``-cell image0 and of image1 = image0 moved by ``shift`` (dy, dx) fine
    pixels: ``(refinement, desc0, desc1)``."""
    from loftr_kd.geometry import RefineWindow
    from loftr_kd.models.refinement import Refinement

    refinement = Refinement("corr", 8, RefineWindow(16, 2, 2), query="corner", points=points)
    with torch.no_grad():
        refinement.log_scale.fill_(6.0)  # a sharp softmax: the peak decides
    desc0 = torch.nn.functional.normalize(torch.randn(1, 16, 8 * h + 8, 8 * w + 8), dim=1)
    desc1 = torch.roll(desc0, shifts=shift, dims=(2, 3))
    return refinement, desc0[:, :, : 8 * h, : 8 * w], desc1[:, :, : 8 * h, : 8 * w]


def signal_when(command: list[str], ready, signum: int, timeout: float = 120) -> tuple[int, str]:
    """Run ``command``, send it ``signum`` once ``ready()`` is true, and return its exit status and stderr.

    The child gets the default SIGINT disposition: a background job's children inherit an ignored SIGINT
    (the clean-clone run of the suite), and Ctrl-C would then do nothing.
    """
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOFTR_KD_DEBUG": "0", "HYDRA_FULL_ERROR": "0"}
    child = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            _, stderr = child.communicate()
            raise AssertionError(f"{command[:4]} ended or stalled before it was ready: {stderr[-2000:]}")
        time.sleep(0.05)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=timeout)
    return child.returncode, stderr


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic scenes of four 192x144 views (BlendedMVS layout): the training tests' data set, one per
    test module."""
    from loftr_kd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, scenes=2, views=4, seed=3, height=144, width=192)
    return root
