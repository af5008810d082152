"""Real portraits that ship inside Python packages, split once into photos the fit may be tuned on and photos
held out for reporting (docs/reconstruct.md, "Real photos: tuning and held-out").

    python benchmarks/real_photos.py --out photos/           # pip-downloads two source packages, writes crops
    python benchmarks/real_photos.py --out photos/ --sdists DIR   # the same from already downloaded sdists

Sources (nothing from the web beyond PyPI): scikit-image's astronaut (the bundled example photo), matplotlib's
Grace Hopper, the test images of ``face_recognition`` 1.3.0's source package (Biden, Obama) and the sample
group photo of ``insightface`` 2.1's source package (``t1.jpg``, six people around a table), of which each
person is one photo, cut out by a fixed box around their head. The split was written down before any fit was
run on the new photos; the held-out ones must not be used to choose settings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDISTS = {"face_recognition": "face_recognition-1.3.0.tar.gz", "insightface": "insightface-2.1.tar.gz"}
"""package -> the source archive (pip download --no-binary :all: --no-deps PACKAGE==VERSION)"""

GROUP = "insightface-2.1/insightface/data/images/t1.jpg"
# (left, top, right, bottom) in t1.jpg (1280 x 886): each person's head with room for the crop's margin, and
# as little of a neighbour as the table allows.
GROUP_BOXES = {
    "t1_left_woman": (0, 170, 300, 520),       # long light hair, looking down at her cards
    "t1_dark_hair_woman": (210, 40, 490, 340),  # dark hair, three-quarter to her left
    "t1_centre_man": (400, 170, 680, 470),      # short dark hair, three-quarter
    "t1_laughing_man": (680, 250, 960, 560),    # laughing, near frontal
    "t1_standing_man": (840, 0, 1130, 290),     # dark hair, three-quarter, looking down-left
    "t1_right_woman": (1040, 190, 1280, 500),   # blonde, near frontal, eyes nearly closed
}

TUNE = ("astronaut", "grace_hopper", "obama", "t1_centre_man", "t1_left_woman")
"""the photos settings may be chosen on"""
HELD_OUT = ("biden", "obama2", "t1_dark_hair_woman", "t1_standing_man", "t1_right_woman", "t1_laughing_man")
"""the photos results are reported on, chosen before any result on them was seen: frontal (Biden, light-haired
and old; Obama 2, speaking), near frontal (laughing man; blonde woman) and three-quarter (dark-haired woman,
standing man)"""


def download(dest: Path) -> None:
    for package, archive in SDISTS.items():
        if not (dest / archive).is_file():
            version = archive.rsplit("-", 1)[1].removesuffix(".tar.gz")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"{package}=={version}", "-d", str(dest)], check=True)


def write_photos(sdists: Path, out: Path) -> dict[str, Path]:
    """Every photo of the split as a file in ``out``; returns name -> path."""
    import matplotlib
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    photos = {"astronaut": ROOT / "src" / "perchead" / "assets" / "example_photo.jpg",
              "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}
    with tarfile.open(sdists / SDISTS["face_recognition"]) as tar:
        for name in ("biden", "obama", "obama2"):
            member = tar.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}.jpg")
            if member is None:
                raise FileNotFoundError(f"{name}.jpg is missing from {SDISTS['face_recognition']}")
            photos[name] = out / f"{name}.jpg"
            photos[name].write_bytes(member.read())
    with tarfile.open(sdists / SDISTS["insightface"]) as tar:
        member = tar.extractfile(GROUP)
        if member is None:
            raise FileNotFoundError(f"{GROUP} is missing from {SDISTS['insightface']}")
        group = Image.open(member).convert("RGB")
        for name, box in GROUP_BOXES.items():
            photos[name] = out / f"{name}.png"
            group.crop(box).save(photos[name])
    return {name: photos[name] for name in (*TUNE, *HELD_OUT)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sdists", type=Path, default=None, help="folder holding the two source archives")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdists = args.sdists or Path(tmp)
        if args.sdists is None:
            download(sdists)
        for name, path in write_photos(sdists, args.out).items():
            print(f"{'tune' if name in TUNE else 'held-out'}\t{name}\t{path}")


if __name__ == "__main__":
    main()
