"""scripts/tune_shp_loss.py: renders a frozen checkpoint once and compares SHP-CNN loss weightings."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from perchead.model import PercHead
from perchead.train.testing import tiny_model_config, write_toy_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tune_shp_loss.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tune")
    data = write_toy_dataset(root / "data", subjects=3, views=4, size=32, val=1)
    PercHead(tiny_model_config(image_size=32)).save_pretrained(root / "model")
    return root / "model", data


def test_prints_a_row_per_weighting_after_the_raw_renders(inputs):
    model, data = inputs
    res = _run("--checkpoint", str(model), "--data", str(data), "--samples", "4", "--val-samples", "2",
               "--steps", "3", "--batch", "2", "--weights", "0.8,0.2,0", "0,0.3,1")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| l1 | ssim | mse |") and rows[1].startswith("| raw renders |")
    assert [r.split("|")[1:4] for r in rows[2:]] == [[" 0.8 ", " 0.2 ", " 0 "], [" 0 ", " 0.3 ", " 1 "]]
    for row in rows[1:]:
        psnr, ssim = (float(row.split("|")[i]) for i in (4, 5))
        assert math.isfinite(psnr) and 0.0 < ssim <= 1.0


def test_a_weighting_of_the_wrong_length_is_refused(inputs):
    model, data = inputs
    res = _run("--checkpoint", str(model), "--data", str(data), "--weights", "1,2")
    assert res.returncode != 0 and "three numbers, l1,ssim,mse" in res.stderr


def test_a_weighting_the_pixel_loss_refuses_stops_before_rendering(inputs):
    model, data = inputs
    res = _run("--checkpoint", str(model), "--data", str(data), "--weights", "0.8,0.2,0", "0,0,0")
    assert res.returncode != 0 and "--weights 0,0,0: the pixel loss needs weights >= 0" in res.stderr
    assert "rendered" not in res.stdout
