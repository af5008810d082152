"""Small, fast experiments of issue 27: which change makes the template decoder read its input?

    python scripts/reads_input_experiments.py --train TRAIN --heldout HELDOUT --out DIR VARIANT [VARIANT ...]

TRAIN / HELDOUT: `perchead synth` datasets of different seeds (asymmetric studio heads). Every variant trains
the same small network (the `tiny` preset at 64 px with 8-px patches, a 32x32 template = 1,024 Gaussians,
decoder 2 layers of width 96: minutes on one CPU thread) with the same data, steps, pixel loss and seed,
then is measured on HELDOUT by perchead.eval.reads_input (back and profile views only) and diagnosed
(attention entropy, colour spread, gradient norms: scripts/reads_input_study.py). One JSON line per
variant goes to DIR/results.jsonl. Variants are names from VARIANTS below.

    python scripts/reads_input_experiments.py --two-heads VARIANT [VARIANT ...]

The controlled check of tests/test_model_reads_input.py instead (no data needed): a smaller network trained 30
steps on a dark- and a light-haired head (perchead.train.testing.train_two_heads); prints each variant's back
colours and their RGB distance (the truths': 1.20).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from perchead.eval.reads_input import measure
from perchead.model import PercHead, preset
from perchead.train.checkpoint import read_latest
from perchead.train.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig
from perchead.train.trainer import train

SMALL = dict(image_size=64, patch_size=8, template_resolution=32, width=96, heads=4, layers=2,
             vit_width=96, vit_depth=2, vit_heads=3, f2d_width=96, gaussian_latent=16, shp_cnn=False, s_max=0.15)
# name -> (model overrides, optimizer overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "baseline": ({}, {}),
    "stats": ({"stats_branch": True}, {}),
    "qknorm": ({"qk_norm": True}, {}),
    "global": ({"global_token": True}, {}),
    "enc_lr3": ({}, {"encoder_lr_scale": 3.0}),
    "stats_qknorm": ({"stats_branch": True, "qk_norm": True}, {}),
    "stats_global": ({"stats_branch": True, "global_token": True}, {}),
    "stats_qknorm_global": ({"stats_branch": True, "qk_norm": True, "global_token": True}, {}),
    "xavier": ({"attn_init": "xavier"}, {}),
    "stats_xavier": ({"stats_branch": True, "attn_init": "xavier"}, {}),
    "stats_qknorm_global_xavier": ({"stats_branch": True, "qk_norm": True, "global_token": True,
                                    "attn_init": "xavier"}, {}),
    "colour_read": ({"colour_read": True}, {}),
    "stats_colour_read": ({"stats_branch": True, "colour_read": True}, {}),
    "all_enc_lr3": ({"stats_branch": True, "qk_norm": True, "global_token": True}, {"encoder_lr_scale": 3.0}),
}


def diagnose(model: PercHead, data: Path) -> dict:
    """scripts/reads_input_study.py's diagnostics (scripts/ is not a package: loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reads_input_study", Path(__file__).with_name("reads_input_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.diagnose(model, data)


def run(name: str, args: argparse.Namespace) -> dict:
    model_over, optim_over = VARIANTS[name]
    out = args.out / name
    cfg = TrainConfig(out=str(out), steps=args.steps, seed=0, loss_name="pixel",
                      model=preset("tiny", **{**SMALL, **model_over}),
                      data=DataConfig(root=str(args.train), batch_size=args.batch, target_views=2,
                                      studio_fraction=1.0, num_workers=0),
                      optim=OptimConfig(lr=args.lr, warmup_steps=20, **optim_over),
                      log=LogConfig(val_every=0, progress=False, tensorboard=False),
                      checkpoint=CheckpointConfig(every=args.steps, keep_last=1), resume="auto")
    t0 = time.time()
    train(cfg)
    seconds = time.time() - t0
    model = PercHead.from_pretrained(read_latest(out / "checkpoints")).eval()
    torch.manual_seed(0)
    res = measure({"model": model}, args.heldout, views="colour")
    rows = {(r["view"], r["cls"], r["method"]): r for r in res.colour_summary}
    psnr = {}
    for method in ("model", "silhouette_mean_colour", "template_mean_colour"):
        vals = [r["psnr"] for r in res.psnr_rows if r["method"] == method and abs(r["yaw"]) >= 150]
        psnr[method] = round(float(np.mean(vals)), 2)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    rec = {"variant": name, "steps": args.steps, "train_seconds": round(seconds), "loss_last50":
           round(float(np.mean([s["loss"] for s in steps[-50:]])), 4),
           "back_hair_de": {m: round(rows[("back", "hair", m)]["median_delta_e"], 1)
                            for m in ("model", "template_mean_colour")},
           "back_hair_corr_lab": round(rows[("back", "hair", "model")]["corr_lab"], 2),
           "back_hair_spread": round(rows[("back", "hair", "model")]["spread"], 2),
           "profile_skin_de": round(float(np.mean([rows[(v, "skin", "model")]["median_delta_e"]
                                                   for v in ("left_profile", "right_profile")])), 1),
           "back_psnr": psnr, **diagnose(model, args.heldout)}
    with open(args.out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    ap.add_argument("--two-heads", action="store_true", help="the two-head check instead of a training run")
    ap.add_argument("--at-init", action="store_true",
                    help="only the diagnostics of each variant's untrained network on --heldout (seed 0)")
    ap.add_argument("--train", type=Path)
    ap.add_argument("--heldout", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.two_heads:
        from perchead.train.testing import train_two_heads

        for name in args.variants:
            model_over, _ = VARIANTS[name]
            colours, truth_gap = train_two_heads(**model_over)
            print(json.dumps({"variant": name, "back_rgb": [[round(x, 3) for x in c] for c in colours.tolist()],
                              "gap": round(float((colours[0] - colours[1]).norm()), 3),
                              "truth_gap": round(truth_gap, 3)}), flush=True)
        return
    if args.at_init:
        for name in args.variants:
            model_over, _ = VARIANTS[name]
            torch.manual_seed(0)
            model = PercHead(preset("tiny", **{**SMALL, **model_over}))
            print(json.dumps({"variant": name, "at_init": True, **diagnose(model, args.heldout)}), flush=True)
        return
    if args.train is None or args.heldout is None or args.out is None:
        ap.error("--train, --heldout and --out are needed (or --two-heads)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        run(name, args)


if __name__ == "__main__":
    main()
