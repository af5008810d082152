"""Draw sample synthetic heads of ``perchead synth`` from all sides: ``docs/images/synth_asymmetric.png``.

One row per subject (seed 0), columns: front (yaw 0), left profile (yaw +90, the subject's left), right profile
(yaw -90), the left profile mirrored left-right, and the back (yaw 180, labelled with the sides, L = the
subject's left, of the parting, the tucked ear, the skin marks and the studio key light), all at pitch 0 with
the standard camera, on white. With asymmetric heads (the default) the mirrored left profile is visibly not the right
profile: the parting and fringe, the hair tucked behind one ear and the lock over the other, the single hoop,
the marks on one cheek and the studio key light are on one side only.

    python scripts/make_synth_figure.py                          # docs/images/synth_asymmetric.png
    python scripts/make_synth_figure.py --heads symmetric --out /tmp/symmetric.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from perchead.data.synth import SynthConfig, make_subject, render_with_labels
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras
from perchead.io.media import save_grid

REPO = Path(__file__).resolve().parents[1]
VIEWS = (("front", 0.0), ("left +90", 90.0), ("right -90", -90.0), ("back", 180.0))
# Chosen by looking at seed 0's first subjects: short hair with freckles and a hoop (4), long hair (8), bald
# (12: only the hoop, the marks and the light are one-sided) and short hair with a bun and no hoop (1).
DEFAULT_SUBJECTS = (4, 8, 12, 1)


def side(value: int) -> str:
    return "L" if value > 0 else "R"  # the subject's left (+x) or right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, nargs="+", default=list(DEFAULT_SUBJECTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--heads", choices=["asymmetric", "symmetric"], default="asymmetric")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "synth_asymmetric.png")
    args = ap.parse_args()
    cfg = SynthConfig(size=args.size, seed=args.seed, heads=args.heads)
    cams = Cameras.orbit([yaw for _, yaw in VIEWS], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, args.size)
    cells: list[torch.Tensor] = []
    labels: list[str] = []
    for index in args.subjects:
        subject = make_subject(cfg, index)
        r = render_with_labels(subject.gaussians, subject.labels, cams)
        img = r.rgb * r.alpha[..., None] + (1 - r.alpha[..., None])  # [C, H, W, 3] on white
        a = subject.asymmetry
        what = ("symmetric" if a is None else
                f"parting {side(a.parting_side)}, tucked {side(a.tucked_side)}, marks {side(a.marks_side)}, "
                f"light {side(a.light_side)}")
        cells += [img[0], img[1], img[2], img[1].flip(1), img[3]]
        labels += [f"{subject.id} front", "left profile (+90)", "right profile (-90)", "left mirrored", what]
        diff = (img[1].flip(1) - img[2]).abs().mean().item()
        print(f"{subject.id}: {what}; mean |mirrored left - right| = {diff:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(cells, args.out, 5, labels)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
