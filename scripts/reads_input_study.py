"""Does a checkpoint read its input? The colour and yaw tables of :mod:`perchead.eval.reads_input`, plus
diagnostics of the template decoder (issue 27).

    python scripts/reads_input_study.py --data HELDOUT model=CKPT [lifting=CKPT ...] [--json out.json] [--figure a.png]

HELDOUT: a `perchead synth` dataset (studio subjects) of a seed no checkpoint was trained on; CKPT: a
checkpoint folder or "demo". The first checkpoint is the one diagnosed (when it has a template decoder):

* attention entropy: per decoder layer, the entropy of every 3D token's attention over the 2D tokens,
  divided by log(number of 2D tokens) (1 = uniform, reads nothing in particular), mean over tokens, heads
  and subjects;
* colour spread: the standard deviation across subjects of each Gaussian's colour, mean over Gaussians and
  RGB, next to that of the inputs' mean foreground colour (how much the inputs differ);
* gradient norms of an L1 loss on the back and profile views, per part of the network.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from perchead.data.format import load_view, read_dataset
from perchead.eval.harness import mean_foreground_colour
from perchead.eval.reads_input import colour_views, format_tables, input_view, measure
from perchead.inference.reconstruct import load_model
from perchead.model import PercHead
from perchead.render import rasterize

PARTS = ("encoder.vit", "encoder.fuse", "decoder.embed", "decoder.layers", "heads")


def _inputs(data, model: PercHead, max_subjects: int):
    s = model.config.image_size
    items = []
    for subj in [x for x in read_dataset(data).subjects if x.kind == "studio"][:max_subjects]:
        src = input_view(subj.views)
        lv = load_view(src)
        img = torch.nn.functional.interpolate(lv.image[None], size=(s, s), mode="bilinear", antialias=True)
        msk = torch.nn.functional.interpolate(lv.mask[None], size=(s, s), mode="bilinear", antialias=True)
        items.append((subj, img.clamp(0, 1), msk.clamp(0, 1)))
    return items


def diagnose(model: PercHead, data, max_subjects: int = 16) -> dict:
    model.eval()
    items = _inputs(data, model, max_subjects)
    out: dict = {}
    with torch.no_grad():
        ent = None
        colours, means = [], []
        for _, img, msk in items:
            tok = model.encode(img, msk)
            maps = model.decoder.attention_maps(*model.context(tok), model.initial_tokens())
            m = maps[0].shape[-1]
            e = [float(-(a * a.clamp_min(1e-12).log()).sum(-1).mean() / math.log(m)) for a in maps]
            ent = e if ent is None else [x + y for x, y in zip(ent, e, strict=True)]
            colours.append(model.decode(tok).rgb[0])
            means.append(mean_foreground_colour(img, msk)[0])
        out["attention_entropy"] = [round(x / len(items), 3) for x in ent]
        out["gaussian_colour_std"] = round(float(torch.stack(colours).std(0).mean()), 4)
        out["input_mean_colour_std"] = round(float(torch.stack(means).std(0).mean()), 4)
    # Gradients of an L1 loss on the unseen sides, at the current weights.
    model.zero_grad(set_to_none=True)
    loss = 0.0
    for subj, img, msk in items[:4]:
        g = model(img, msk)[0]
        for view in colour_views(subj.views).values():
            lv = load_view(view)
            truth = (lv.image * lv.mask + (1 - lv.mask)).permute(1, 2, 0)
            r = rasterize(g, view.world_to_cam.float()[None], view.K.float()[None], view.width, view.height,
                          background=1.0)
            loss = loss + (r.rgb[0] - truth).abs().mean()
    loss.backward()
    norms = {}
    for part in PARTS:
        sq = [p.grad.pow(2).sum() for n, p in model.named_parameters() if n.startswith(part) and p.grad is not None]
        norms[part] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
    out["grad_norm"] = {k: float(f"{v:.3g}") for k, v in norms.items()}
    model.zero_grad(set_to_none=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="name=checkpoint (checkpoint: a folder or 'demo')")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--split", default="all")
    ap.add_argument("--max-subjects", type=int, default=None)
    ap.add_argument("--no-diagnose", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None, help="the back-hair swatches of every subject and method")
    ap.add_argument("--views", choices=("all", "colour"), default="all",
                    help="colour: only the back and the profiles are rendered (the yaw table holds those alone)")
    args = ap.parse_args()
    models = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        if not path:
            sys.exit(f"model {spec!r}: write name=checkpoint")
        models[name] = load_model(path)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = measure(models, args.data, args.split, max_subjects=args.max_subjects, views=args.views)
    if args.figure is not None:
        from perchead.eval.reads_input import swatch_figure

        swatch_figure(result, args.figure)
    print(format_tables(result))
    first = next(iter(models.values()))
    report = {"colour": result.colour_summary, "yaw": result.yaw_summary, "back": result.back_summary}
    if not args.no_diagnose and first.config.decoder == "template":
        report["diagnostics"] = diagnose(first, args.data, args.max_subjects or 16)
        print(json.dumps(report["diagnostics"]))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
