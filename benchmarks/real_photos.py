"""Real portraits that ship inside Python packages, split once into photos the fit may be tuned on and photos
held out for reporting (docs/reconstruct.md, "Real photos: tuning and held-out").

    python benchmarks/real_photos.py --out photos/           # pip-downloads two source packages, writes crops
    python benchmarks/real_photos.py --out photos/ --sdists DIR   # the same from already downloaded sdists

Sources (nothing from the web beyond PyPI): scikit-image's astronaut (the bundled example photo), matplotlib's
Grace Hopper, the test images of ``face_recognition`` 1.3.0's source package (Biden, Obama) and the sample
group photo of ``insightface`` 2.1's source package (``t1.jpg``, six people around a table), of which each
person is one photo, cut out by a fixed box around their head. The split was written down before any fit was
run on the new photos; the held-out ones must not be used to choose settings. By the time every held-out photo
had been looked at while changing the fit (docs/reconstruct.md marks those rows), a second held-out set was
written down, again before any fit was run on it (``--set fresh``): the other portraits of the same two
archives (``face_recognition``'s Obama 3, ``insightface``'s 112 px Tom Hanks crop; ``face_recognition``'s
``32bit.png`` is Obama 2 saved again as a PNG, so it is not one of them).
"""

from __future__ import annotations

import argparse
import io
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
FRESH = ("obama3", "tom_hanks")
"""the second held-out set (2026-12-06), written down before any fit was run on it: every other portrait of the
two archives (``face_recognition``'s ``obama3.jpg``; ``insightface``'s ``Tom_Hanks_54745.png``, an aligned
112 x 112 face crop). ``face_recognition``'s ``32bit.png`` is ``obama2.jpg`` saved as RGBA PNG (mean absolute
difference 1.4 / 255), so it adds no photo."""
SETS = {"tune": TUNE, "held-out": HELD_OUT, "fresh": FRESH, "all": TUNE + HELD_OUT + FRESH}
"""the sets by name (``bench_likeness.py --set``)"""


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
        for name in ("biden", "obama", "obama2", "obama3"):
            photos[name] = out / f"{name}.jpg"
            photos[name].write_bytes(member_bytes(tar, f"face_recognition-1.3.0/tests/test_images/{name}.jpg",
                                                  SDISTS["face_recognition"]))
    with tarfile.open(sdists / SDISTS["insightface"]) as tar:
        group = Image.open(io.BytesIO(member_bytes(tar, GROUP, SDISTS["insightface"]))).convert("RGB")
        for name, box in GROUP_BOXES.items():
            photos[name] = out / f"{name}.png"
            group.crop(box).save(photos[name])
        photos["tom_hanks"] = out / "tom_hanks.png"
        photos["tom_hanks"].write_bytes(member_bytes(tar, f"{GROUP.rsplit('/', 1)[0]}/Tom_Hanks_54745.png",
                                                     SDISTS["insightface"]))
    return {name: photos[name] for name in SETS["all"]}


def member_bytes(tar: tarfile.TarFile, name: str, archive: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise FileNotFoundError(f"{name} is missing from {archive}")
    return member.read()


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
            which = next(k for k in ("tune", "held-out", "fresh") if name in SETS[k])
            print(f"{which}\t{name}\t{path}")


if __name__ == "__main__":
    main()
