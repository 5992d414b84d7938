"""Small Detectron-format files: reduced widths, one block per stage, K = 11."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.detectron.writer import Spec, write_spec_file

#: With the MLP (28×28 input, as Detectron's): about 21 MB, most of it the MLP and its momentum.
SMALL = Spec(blocks=(1, 1, 1, 1), width=8, num_classes=11, fpn_dim=8, box_dim=16, mask_dim=4)
#: Without the MLP: well under 1 MB, for the files a test edits.
TINY = Spec(
    blocks=(1, 2, 1, 1), width=4, num_classes=5, fpn_dim=8, box_dim=8, mask_dim=4, mlp=False
)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    return write_spec_file(tmp_path_factory.mktemp("detectron") / "small.pkl", SMALL, seed=1)


@pytest.fixture(scope="module")
def small_classes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "classes.txt"
    path.write_text("".join(f"class_{i}\n" for i in range(SMALL.num_classes)))
    return path
