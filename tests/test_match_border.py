"""The match border (``border_removal``): an inference setting of the shipped weights (docs/refinement.md,
"The match border")."""

from __future__ import annotations

import pytest
import torch

from conftest import shifted_photo_pairs
from loftr_kd.models.student import load_student
from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS

SHIPPED = DEFAULT_STUDENT_WEIGHTS  # the shipped default (weights/student_paper_refine.pt)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped weights are not beside this checkout")
def test_the_match_border_is_an_inference_setting() -> None:
    """border_removal at load time: with 2 no match lies in the two outer rings of cells, with 1 matches appear in
    the second ring (none in the outermost), and those follow a real photo's true shift."""
    rows, cols = (torch.arange(300) // 20, torch.arange(300) % 20)
    ring = torch.minimum(torch.minimum(rows, 14 - rows), torch.minimum(cols, 19 - cols))  # 0 = outermost
    found = {1: 0, 2: 0}
    errors = []
    for border in (2, 1):
        student = load_student(SHIPPED, input_height=240, input_width=320, border_removal=border).eval()
        for batch in shifted_photo_pairs(seed=3, count=3, height=240, width=320):
            with torch.no_grad():
                out = student(batch["image0"], batch["image1"])
            matched = out.match_ids[0] >= 0
            assert not (matched & (ring < border)).any()
            edge = matched & (ring == 1)
            found[border] += int(edge.sum())
            if border == 1:
                shift = batch["H_0to1"][0, :2, 2]
                errors.append((out.points1[0, edge] - out.points0[0, edge] - shift).norm(dim=-1))
    assert found[2] == 0 and found[1] > 10
    assert (torch.cat(errors) < 3).float().mean() > 0.8
