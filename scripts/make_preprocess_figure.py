"""Make docs/images/astronaut_preprocess.png: skimage's astronaut through perchead.preprocess.

Panels: the photo with the face box (detector, green), the head box (chin to crown, blue) and the square
crop (red, 1.65x the head height; it leaves the photo at the top, where it is padded), then the 512x512
crop, the mask and the matted network input.

    python scripts/make_preprocess_figure.py [--out docs/images/astronaut_preprocess.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFont

from perchead.preprocess import preprocess_image

PANEL = 384
MARGIN = 48  # room around the photo so the crop box can be drawn where it leaves the picture
TITLE = 28


def _panel(image: Image.Image, title: str) -> Image.Image:
    canvas = Image.new("RGB", (PANEL, PANEL + TITLE), "white")
    canvas.paste(image.resize((PANEL, PANEL), Image.Resampling.LANCZOS), (0, TITLE))
    draw = ImageDraw.Draw(canvas)
    draw.text((PANEL // 2, TITLE // 2), title, fill="black", anchor="mm", font=ImageFont.load_default(16))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/astronaut_preprocess.png"))
    args = parser.parse_args()

    photo = skimage.data.astronaut()
    r = preprocess_image(photo)

    h, w = photo.shape[:2]
    framed = Image.new("RGB", (w + 2 * MARGIN, h + 2 * MARGIN), (235, 235, 235))
    framed.paste(Image.fromarray(photo), (MARGIN, MARGIN))
    draw = ImageDraw.Draw(framed)
    for box, colour in ((r.face_box, (0, 200, 0)), (r.head_box, (40, 90, 255)), (r.crop_box, (230, 0, 0))):
        draw.rectangle([v + MARGIN for v in box], outline=colour, width=3)

    mask = Image.fromarray((r.mask * 255 + 0.5).astype(np.uint8)).convert("RGB")
    panels = [
        _panel(framed, f"photo: face / head / crop ({r.detector})"),
        _panel(Image.fromarray(r.crop), "512x512 crop"),
        _panel(mask, "mask"),
        _panel(Image.fromarray(r.image), "matted input"),
    ]
    sheet = Image.new("RGB", (len(panels) * PANEL + (len(panels) - 1) * 8, PANEL + TITLE), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * (PANEL + 8), 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} (crop box {tuple(round(v) for v in r.crop_box)}, {r.num_faces} face)")


if __name__ == "__main__":
    main()
