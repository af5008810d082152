"""scripts/run_ablations.py: the subject-by-subject table of a study, from perchead eval's subjects.csv."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_ablations.py"


def _script():
    spec = importlib.util.spec_from_file_location("run_ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_table_compares_each_variant_with_the_ones_before_it(tmp_path):
    csv = tmp_path / "subjects.csv"
    lines = ["method,group,subject,images,psnr,ssim,lpips,dreamsim,id_arcface,id_dlib"]
    # b beats a by 1 dB on s1 and loses 0.5 dB on s2 (novel); c is a not-run variant; s3 only has a
    for method, subject, psnr, ssim in [("a", "s1", 10.0, 0.5), ("a", "s2", 12.0, 0.6), ("a", "s3", 9.0, 0.4),
                                        ("b", "s1", 11.0, 0.7), ("b", "s2", 11.5, 0.6)]:
        lines.append(f"{method},novel,{subject},3,{psnr},{ssim},,,,")
    csv.write_text("\n".join(lines) + "\n")
    table = _script().paired_table([("A", "a"), ("B", "b"), ("C", "c")], csv, {"c": "weights missing"})
    rows = table.splitlines()
    assert rows[0] == "| comparison | novel |"
    assert rows[2:] == ["| B − A | +0.25 dB (1/2 higher), SSIM +0.100 |"]
