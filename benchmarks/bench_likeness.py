"""How much ``perchead reconstruct`` looks like the person: real portraits that ship inside Python packages,
without and with the fit to the photo.

    python benchmarks/bench_likeness.py [--checkpoint demo] [--fit-steps 0,60] [--out outputs/likeness]
    python benchmarks/bench_likeness.py --photos photos/ --set held-out    # benchmarks/real_photos.py's split

Photos: scikit-image's astronaut (the bundled example photo) and matplotlib's Grace Hopper
(``mpl-data/sample_data/grace_hopper.jpg``); with ``--photos`` the folder benchmarks/real_photos.py writes (its
tuning set, its held-out set, the second held-out set ``fresh``, or all); no photo comes from the internet. For
each, the table gives the estimated input camera, the PSNR of the render from that camera against the matted photo
over the photo's mask, dlib's identity distance between the photo and the renders from the input camera, the front,
and the input camera turned by +-30 and +-45 degrees (same person below 0.6; "no face" where dlib's detector finds
none in the render), dlib's detector score of the most face-like box in the +-45 degree renders (a face from 0.3; it
moves smoothly where the verdict flips between "no face" and a distance, so it shows a change of the fit that the
verdicts hide), the back's colour difference with the top of the photo's head (CIE76 delta E), and the seconds
of the run without the turntable. With ``--out`` each run's files (views.png, ...) are kept there.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from bench_reconstruct import cpu_name

PHOTOS = {
    "astronaut (skimage)": Path(__file__).resolve().parents[1] / "src" / "perchead" / "assets" / "example_photo.jpg",
}


def package_photos() -> dict[str, Path]:
    import matplotlib

    photos = dict(PHOTOS)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.is_file():
        photos["Grace Hopper (matplotlib)"] = hopper
    return photos


def photo_set(folder: Path | None, which: str) -> dict[str, Path]:
    """The astronaut and Grace Hopper, or (``folder``) benchmarks/real_photos.py's photos of one set."""
    if folder is None:
        return package_photos()
    from real_photos import SETS

    names = SETS[which]
    found = {p.stem: p for p in folder.iterdir()}
    photos = package_photos()
    photos = {"astronaut": photos["astronaut (skimage)"], "grace_hopper": photos.get("Grace Hopper (matplotlib)")}
    missing = [n for n in names if n not in found and photos.get(n) is None]
    if missing:
        raise SystemExit(f"{folder} lacks {missing}: run python benchmarks/real_photos.py --out {folder}")
    return {n: found.get(n) or photos[n] for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="demo")
    parser.add_argument("--fit-steps", default="0,60")
    parser.add_argument("--out", type=Path, default=None, help="keep every run's files here")
    parser.add_argument("--photos", type=Path, default=None, help="folder written by real_photos.py")
    parser.add_argument("--set", choices=("tune", "held-out", "fresh", "all"), default="all")
    args = parser.parse_args()

    import torch

    from perchead.inference import FitConfig, ReconstructConfig, Reconstructor
    from perchead.inference.reconstruct import TURNED_VIEWS

    logging.getLogger("perchead.preprocess").setLevel(logging.ERROR)
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}")
    print(f"settings: checkpoint {args.checkpoint}, views 512 px, default fit size and Gaussians, "
          "dlib distance (euclidean, same person < 0.6)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for steps in (int(v) for v in args.fit_steps.split(",")):
            rec = Reconstructor(ReconstructConfig(checkpoint=args.checkpoint, video=False,
                                                  fit=FitConfig(steps=steps)))
            for name, path in photo_set(args.photos, args.set).items():
                start = time.perf_counter()
                result = rec.run(path, root / f"{path.stem}-fit{steps}")
                seconds = time.perf_counter() - start
                scores = ({} if result.turned is None else
                          {t: rec.face_encoder.face_score(v) for t, v in zip(TURNED_VIEWS, result.turned, strict=True)})
                rows.append((name, steps, result, seconds, scores))
                print(f"  {name}, fit {steps}: {seconds:.1f} s", flush=True)

    def dist(like: dict, key: str) -> str:
        if not like.get("photo_face_found"):
            return "no face in photo"
        return "no face" if like.get(key) is None else f"{like[key]:.3f}"

    def score(value: float | None) -> str:
        return "no box" if value is None else f"{value:+.2f}"

    keys = ("input_view", "yaw_+0", "turn_+30", "turn_-30", "turn_+45", "turn_-45")
    print()
    print("| photo | fit steps | Gaussians | input camera yaw / pitch | masked PSNR, input view (dB) | "
          "dlib: input view / front / +30 / -30 / +45 / -45 | dlib face score +45 / -45 | back delta E | warnings | "
          "seconds (no video) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, steps, result, seconds, scores in rows:
        like, pose = result.likeness or {}, result.pose
        print(f"| {name} | {steps} | {len(result.gaussians):,} | {pose.yaw_deg:+.1f} / {pose.pitch_deg:+.1f} "
              f"({pose.method}) | {like.get('input_view_masked_psnr_db', float('nan')):.2f} | "
              + " / ".join(dist(like, k) for k in keys)
              + f" | {score(scores.get(45.0))} / {score(scores.get(-45.0))}"
              + f" | {like.get('back_delta_e', float('nan')):.1f} | {len(result.warnings)} | {seconds:.1f} |")
    print()
    for steps in dict.fromkeys(r[1] for r in rows):
        values = [-1.0 if v is None else v for r in rows if r[1] == steps for v in r[4].values()]
        if values:
            print(f"fit {steps}: mean dlib face score at +-45 {sum(values) / len(values):+.3f} over {len(values)} "
                  "views (dlib's HOG detector, faces counted from 0.3; no box counts as -1)")

if __name__ == "__main__":
    main()
