"""The CUDA paths that need no TensorRT, each with an independent truth: every test runs on the CPU in the
default suite and on CUDA where a GPU exists (marked ``gpu``: ``make test-all``, ``tools/device_check.sh``).
The other ``gpu`` tests all need TensorRT, which a lent GPU machine does not have."""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


def _photo_pair(shift: tuple[int, int] = (24, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A 640x480 crop of a real photo and the same scene moved by ``shift`` (dy, dx) pixels."""
    image = cv2.resize(skdata.astronaut(), (800, 800), interpolation=cv2.INTER_AREA)
    dy, dx = shift
    return image[100:580, 60:700].copy(), image[100 - dy : 580 - dy, 60 - dx : 700 - dx].copy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.skipif(not DEFAULT_STUDENT_WEIGHTS.is_file(), reason="no shipped student")
def test_the_shipped_student_on_the_device_follows_the_true_shift_as_on_the_cpu(device):
    """The shipped checkpoint through the torch backend on ``device``: its matches follow the true translation
    (within 2 px for most), and they are the CPU's matches (same cells, positions within float rounding)."""
    from loftr_kd import Matcher

    torch.set_num_threads(1)
    image0, image1 = _photo_pair()
    on_device = Matcher(DEFAULT_STUDENT_WEIGHTS, backend="torch", device=device, threads=1)
    assert str(on_device.device).startswith(device)
    result = on_device(image0, image1)
    error = np.linalg.norm(result["keypoints1"] - result["keypoints0"] - [40, 24], axis=1)
    assert len(error) > 100 and np.mean(error < 2.0) > 0.8, (len(error), np.mean(error < 2.0))
    reference = Matcher(DEFAULT_STUDENT_WEIGHTS, backend="torch", device="cpu", threads=1)(image0, image1)
    cells = {tuple(p) for p in np.floor(result["keypoints0"]).astype(int)}
    cells_cpu = {tuple(p) for p in np.floor(reference["keypoints0"]).astype(int)}
    assert len(cells & cells_cpu) >= 0.98 * max(len(cells), len(cells_cpu))


@pytest.mark.parametrize("device", DEVICES)
def test_a_16_mixed_training_run_on_the_device_stays_finite_and_learns(device, tmp_path):
    """Lightning's own 16-mixed (MixedPrecision + a GradScaler at the project's initial scale, 2**8, as
    ``train()`` builds it for CUDA; float16 autocast runs on the CPU too): eight steps on real photo pairs with
    an exact homography give finite losses, no skipped step but the GradScaler's few while it finds its scale,
    finite weights that moved, and a lower loss on the trained pairs afterwards than before."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    from conftest import quiet_cpu_trainer, shifted_photo_pairs
    from loftr_kd.lightning_module import DistillationModule
    from loftr_kd.losses import LossConfig
    from loftr_kd.models.student import build_student

    torch.manual_seed(0)
    torch.set_num_threads(1)
    student = build_student(input_height=96, input_width=128, refine="corr", border_removal=0)
    module = DistillationModule(student, None, LossConfig(), partial(torch.optim.AdamW, lr=3e-3))
    pairs = shifted_photo_pairs(2, 4)

    def loss() -> float:
        module.eval()
        with torch.no_grad():
            return float(
                sum(module._step({k: v.to(module.device) for k, v in p.items()}).terms.total for p in pairs)
            )

    module.to(device)
    before = loss()
    module.train()
    start = {k: v.detach().clone() for k, v in student.named_parameters()}
    scaler = torch.amp.GradScaler(device, init_scale=2.0**8)
    plugins = [MixedPrecision("16-mixed", device, scaler=scaler)]
    accelerator = "gpu" if device == "cuda" else "cpu"
    trainer = quiet_cpu_trainer(tmp_path, accelerator=accelerator, plugins=plugins, max_epochs=2)
    trainer.fit(module, torch.utils.data.DataLoader(pairs, batch_size=None))
    assert module.nonfinite_steps == 0
    assert module.amp_skipped_steps <= 2  # the GradScaler finding its scale (halving from 2**8) is normal
    assert all(torch.isfinite(v).all() for v in student.state_dict().values())
    assert any(not torch.equal(v, start[k]) for k, v in student.named_parameters())
    module.to(device)
    assert loss() < before
