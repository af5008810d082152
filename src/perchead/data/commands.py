"""CLI entry points of the data package: ``perchead synth`` and ``perchead convert-data``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import tyro

Source = Literal["nersemble", "cafca", "ffhq", "ava256"]


def synth(
    out: Annotated[Path, tyro.conf.arg(help="output dataset folder (created; finished subjects are kept)")],
    subjects: int = 100,
    views: Annotated[int, tyro.conf.arg(help="views per studio subject (wild subjects have one)")] = 16,
    size: Annotated[int, tyro.conf.arg(help="image width = height in pixels")] = 256,
    seed: int = 0,
    kind: Annotated[Literal["studio", "wild", "mixed"],
                    tyro.conf.arg(help="studio: views all around, even light; wild: one near-frontal view, "
                                       "coloured light; mixed: both")] = "studio",
    wild_fraction: Annotated[float, tyro.conf.arg(help="share of wild subjects with --kind mixed")] = 0.3,
    heads: Annotated[Literal["asymmetric", "symmetric"],
                     tyro.conf.arg(help="asymmetric: one-sided hair parting and fringe, hair behind one ear, a "
                                        "single earring, marks on one cheek, studio key light from one side; "
                                        "symmetric: the older left-right symmetric heads, identical bit for "
                                        "bit")] = "asymmetric",
    key_light_yaw: Annotated[tuple[float, float],
                             tyro.conf.arg(help="|yaw| range (degrees) of the asymmetric studio heads' key light; "
                                                "180 = from behind (35 80: the face's side only, every back "
                                                "darker than the top of the head)")] = (35.0, 80.0),
    quiet: bool = False,
) -> int:
    """Generate procedural synthetic heads in the perchead dataset format (docs/data.md)."""
    from .synth import SynthConfig, generate

    cfg = SynthConfig(subjects=subjects, views=views, size=size, seed=seed, kind=kind, wild_fraction=wild_fraction,
                      heads=heads, key_light_yaw_deg=key_light_yaw)
    report = generate(cfg, out, progress=not quiet)
    print(f"wrote {report.written} subject(s), kept {report.skipped} finished one(s) in {report.seconds:.1f} s "
          f"-> {report.out}")
    print("splits: " + ", ".join(f"{k} {v}" for k, v in report.splits.items())
          + " | kinds: " + ", ".join(f"{k} {v}" for k, v in report.kinds.items()))
    return 0


def convert(
    source: Annotated[Source, tyro.conf.arg(help="which dataset layout SRC is in")],
    src: Annotated[Path, tyro.conf.arg(help="the dataset as downloaded")],
    out: Annotated[Path, tyro.conf.arg(help="output folder in the perchead format")],
    size: Annotated[int | None, tyro.conf.arg(help="resize images to size x size (None: keep)")] = None,
) -> int:
    """Convert NeRSemble, Cafca, FFHQ or Ava-256 into the perchead dataset format; bad files are reported and
    skipped without stopping the rest."""
    from .readers import convert_dataset

    report = convert_dataset(source, src, out, size=size)
    print(report.summary())
    return 0 if report.converted else 1
