"""Write the bundled example photo: scikit-image's astronaut portrait (Eileen Collins, NASA, public domain).

    python scripts/make_example_photo.py [--out src/perchead/assets/example_photo.jpg] [--quality 90]

The README's first command reconstructs this photo, so it must ship inside the package (scikit-image is not
a runtime dependency). JPEG quality 90 keeps it at 66 kB while leaving no visible artefacts on the face.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "perchead" / "assets" / "example_photo.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    from skimage import data

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # No subsampling argument: Pillow's default (4:2:0) is what cameras write, so this is a typical JPEG.
    Image.fromarray(data.astronaut()).save(args.out, format="JPEG", quality=args.quality)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
