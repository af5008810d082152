"""Reproduce the bundled editing demo checkpoint (src/perchead/assets/demo_edit) end to end, on a CPU.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python scripts/train_edit_demo.py          # everything
    python scripts/train_edit_demo.py --data outputs/demo/data   # reuse train_demo.py's synthetic data
    python scripts/train_edit_demo.py --data outputs/demo/data --card-only   # only redo the figure and card

Stages (each printed as the exact command or step it runs; rerunning the script continues where it stopped:
finished synthetic subjects are kept, a trained stand-in CLIP is reused, training uses ``--resume auto``):

1. ``perchead synth``: the same synthetic data as scripts/train_demo.py (its ``DATA``, same seed, hence the
   same test subjects, unseen by the reconstruction demo too), with exact segmentation maps for every view.
   Skipped with ``--data``.
2. The style encoder: ``scripts/train_text_clip.py``, **a small CLIP trained on these synthetic heads and
   captions generated from their parameters** (perchead.textclip; a ``transformers.CLIPModel`` and a
   ``CLIPTokenizer`` of the captions' words), because no pretrained CLIP can be downloaded where this demo is
   made. It stands in for CLIP here only: it knows the captions' words and synthetic heads, nothing else. The
   checkpoint, the card and ``perchead edit`` say so.
3. ``perchead train --stage edit --init-from src/perchead/assets/demo --clip <stand-in>``: the editing
   encoder, decoder and heads, from the bundled reconstruction demo checkpoint, with the pixel loss.
4. Export: the last training checkpoint -> ``EditNetwork.save_pretrained(assets)`` with the stand-in CLIP
   copied into the assets folder and named relative to it (so it loads offline, from anywhere).
5. ``perchead eval-edit``: the test split (own map + own image as style -> novel / extreme views) against the
   mean-colour template and the reconstruction demo, plus style-swap vs map-swap disentanglement.
6. The example figure and the model card (README.md) in the assets folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import train_demo as recon_demo  # the reconstruction demo's data settings and run helpers (same folder)
from train_demo import latest_checkpoint, perchead, record_time, run

REPO = recon_demo.REPO
ASSETS = REPO / "src" / "perchead" / "assets" / "demo_edit"
RECON_DEMO = REPO / "src" / "perchead" / "assets" / "demo"

# Every setting of the editing demo, in one place (the data are train_demo.py's DATA).
CLIP_FOLDER = "clip_synthetic_captions"  # scripts/train_text_clip.py's output
EDIT = dict(steps=800, lr=5e-4, warmup=30, min_lr_ratio=0.1, val_every=100, ckpt_every=25, seed=0, loss="pixel",
            batch_size=4, target_views=3, studio_fraction=0.85, num_workers=1)
# The map loss (docs/editing.md, "Map loss"): rendered labels and alpha of every target view against its exact map.
# Without it (the demo before issue 16) the network followed the map's silhouette loosely (IoU 0.863, hair 0.725).
MAP_LOSS = dict(label_weight=0.5, alpha_weight=1.0)
EDIT_MINUTES = 30.0  # wall-time budget of the training (SIGTERM: the trainer saves a checkpoint at that step);
# the map loss made a step ~1.9 s here (one thread), so 800 steps take ~26 min
EVAL = dict(split="test", disentangle_subjects=12)
FIGURE = dict(map_subject=0, style_subjects=(1, 2, 3, 4, 5), hair_grow_pixels=6, yaws=(0.0, 50.0))
SIZE_LIMIT_MB = 20.0
NOTICE = ("the style encoder of this demo is not a real CLIP but a small CLIP stand-in trained by perchead on its "
          "synthetic heads and their generated captions (clip_synthetic_captions/): text styles work for the "
          "words of those captions (hair colour, long / short hair, bald, bun, glasses, skin tone, ...) and other "
          "words are refused; image styles work as learned on synthetic heads; with a real CLIP (e.g. "
          "openai/clip-vit-base-patch32) train with `--clip` for the paper's open-vocabulary text editing")


def clip_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train_text_clip.py"), "--data", str(data), "--out", str(out)]


def train_cmd(data: Path, out: Path, clip: Path) -> list[str]:
    e = EDIT
    return perchead("train", "--stage", "edit", "--init-from", RECON_DEMO.relative_to(REPO), "--clip", clip,
                    "--data.root", data, "--out", out, "--steps", e["steps"], "--seed", e["seed"],
                    "--loss-name", e["loss"], "--data.batch-size", e["batch_size"],
                    "--data.target-views", e["target_views"], "--data.studio-fraction", e["studio_fraction"],
                    "--data.num-workers", e["num_workers"], "--optim.lr", e["lr"], "--optim.warmup-steps",
                    e["warmup"], "--optim.min-lr-ratio", e["min_lr_ratio"], "--log.val-every", e["val_every"],
                    "--log.val-samples", 3, "--log.no-progress", "--checkpoint.every", e["ckpt_every"],
                    "--checkpoint.keep-last", 2, "--map-loss.label-weight", MAP_LOSS["label_weight"],
                    "--map-loss.alpha-weight", MAP_LOSS["alpha_weight"], "--resume", "auto")


def export(final: Path, clip: Path, assets: Path) -> None:
    """Training checkpoint -> assets: EditNetwork weights + config naming the bundled CLIP (./folder)."""
    from perchead.edit import EditNetwork

    assets.mkdir(parents=True, exist_ok=True)
    bundled = assets / CLIP_FOLDER
    shutil.rmtree(bundled, ignore_errors=True)
    shutil.copytree(clip, bundled)
    net = EditNetwork.from_pretrained(final, clip=str(bundled))
    net.notice = NOTICE
    net.save_pretrained(assets)
    config = json.loads((assets / "config.json").read_text())
    assert config["edit"]["clip"] == f"./{CLIP_FOLDER}", config["edit"]


def example_figure(assets: Path, data: Path, path: Path) -> dict:
    """One test subject's map with several test subjects' images as styles, then that map with its hair
    region grown (perchead.edit.segmentation.grow_class) under one style. Front and 3/4 views, SHP-CNN on."""
    import torch

    from perchead.data.format import load_view, read_dataset
    from perchead.edit import EditNetwork, colorize
    from perchead.edit.segmentation import grow_class, resize_segmentation
    from perchead.eval.protocol import novel_view_pairs, views_from_cameras
    from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras
    from perchead.io.media import save_grid
    from perchead.render import rasterize

    net = EditNetwork.from_pretrained(assets).eval()
    s = net.config.image_size
    subjects = [x for x in read_dataset(data).split(EVAL["split"]) if x.kind == "studio"]

    def frontal(subject):
        views = views_from_cameras([v.name for v in subject.views],
                                   torch.stack([v.world_to_cam for v in subject.views]))
        name = novel_view_pairs(views)[0].input.name
        lv = load_view(next(v for v in subject.views if v.name == name))
        image = lv.image * lv.mask + (1.0 - lv.mask)
        resize = torch.nn.functional.interpolate
        return (resize(image[None], size=(s, s), mode="bilinear", antialias=True)[0],
                resize(lv.mask[None], size=(s, s), mode="bilinear", antialias=True)[0],
                resize_segmentation(lv.segmentation.numpy().astype("uint8"), s))

    cams = Cameras.orbit(list(FIGURE["yaws"]), 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, s)

    @torch.no_grad()
    def views_of(seg, style) -> list:
        g = net.generate(torch.from_numpy(seg.astype("int64"))[None], style)
        rgb = rasterize(g, cams.viewmats[None], cams.Ks[None], s, s).rgb[0].permute(0, 3, 1, 2)
        return [x.clamp(0, 1) for x in net.sharpen(rgb)]

    def picture(seg):
        return torch.from_numpy(colorize(seg)).permute(2, 0, 1).float() / 255

    _, _, seg = frontal(subjects[FIGURE["map_subject"]])
    refs = [frontal(subjects[i]) for i in FIGURE["style_subjects"]]
    styles = [net.style_from_image(img[None], m[None]) for img, m, _ in refs]
    rows = [[picture(seg)] + [img for img, _, _ in refs]]
    renders = [views_of(seg, st) for st in styles]
    for k in range(len(FIGURE["yaws"])):
        rows.append([torch.ones(3, s, s)] + [r[k] for r in renders])
    grown = grow_class(seg, "hair", FIGURE["hair_grow_pixels"])
    before, after = views_of(seg, styles[0]), views_of(grown, styles[0])
    with torch.no_grad():  # how far the map edit moves the geometry, in the card next to the figure
        g0, g1 = (net.generate(torch.from_numpy(m.astype("int64"))[None], styles[0]) for m in (seg, grown))
    moved = (g1.means - g0.means).norm(dim=-1)[0]
    rows.append([picture(grown), before[0], after[0], before[1], after[1], torch.ones(3, s, s)])
    n = len(refs)
    labels = (["map (test subject)"] + [f"style ref {i + 1}" for i in range(n)]
              + ["", *[f"map + ref {i + 1}, front" for i in range(n)]]
              + ["", *[f"map + ref {i + 1}, yaw {FIGURE['yaws'][1]:.0f}" for i in range(n)]]
              + [f"hair grown {FIGURE['hair_grow_pixels']} px", "ref 1, front", "hair grown, front",
                 f"ref 1, yaw {FIGURE['yaws'][1]:.0f}", f"hair grown, yaw {FIGURE['yaws'][1]:.0f}", ""])
    cells = [c.permute(1, 2, 0) for row in rows for c in row]
    save_grid(cells, path, n + 1, labels)
    return {"map_subject": subjects[FIGURE["map_subject"]].id,
            "style_subjects": [subjects[i].id for i in FIGURE["style_subjects"]],
            "hair_pixels_added": int((grown != seg).sum()), "hair_edit_mean_mm": float(moved.mean()) * 1000,
            "hair_edit_max_mm": float(moved.max()) * 1000,
            "hair_edit_rgb": float((g1.rgb - g0.rgb).abs().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "outputs" / "demo_edit", help="data, runs, logs")
    ap.add_argument("--data", type=Path, default=None,
                    help="an existing dataset made with train_demo.py's DATA settings (default: make one in --work)")
    ap.add_argument("--assets", type=Path, default=ASSETS, help="where the checkpoint, figures and card go")
    ap.add_argument("--edit-minutes", type=float, default=EDIT_MINUTES,
                    help="stop training after this wall time (0: no limit)")
    ap.add_argument("--card-only", action="store_true",
                    help="only redo the example figure and the card from the finished run, export and evaluation "
                    "(pass the same --work / --data)")
    args = ap.parse_args()
    # Short, machine-independent paths in the runs' train_config.json and the card: relative to the repository.
    work, assets = short(args.work), short(args.assets)
    data = short(args.data) if args.data is not None else work / "data"
    os.chdir(REPO)  # the commands and the paths below are relative to the repository
    work.mkdir(parents=True, exist_ok=True)
    log = work / "train_edit_demo.log"
    clip = work / CLIP_FOLDER
    run_dir = work / "edit"
    if args.card_only:
        write_outputs(work, assets, data, latest_checkpoint(run_dir))
        return
    if args.data is None:
        seconds, _ = run(recon_demo.synth_cmd(data), log)
        record_time(work, "synth", seconds)
    else:
        _check_data(data)

    if not (clip / "retrieval.json").is_file():  # written last: a finished stand-in is reused
        seconds, _ = run(clip_cmd(data, clip), log)
        record_time(work, "clip", seconds)
    seconds, stopped = run(train_cmd(data, run_dir, clip), log, args.edit_minutes or None)
    record_time(work, "edit", seconds, "stopped by time limit" if stopped else "")
    final = latest_checkpoint(run_dir)

    print(f"# python: export({final}, {clip}, {assets})", flush=True)
    export(final, clip, assets)
    evaluation = work / "edit_eval.json"
    seconds, _ = run(perchead("eval-edit", "--checkpoint", assets, "--data", data,
                              "--reconstruction", RECON_DEMO.relative_to(REPO), "--split", EVAL["split"],
                              "--disentangle-subjects", EVAL["disentangle_subjects"], "--out", evaluation,
                              "--figure", assets / "heldout_examples.png",
                              "--fidelity-figure", assets / "map_fidelity.png"), log)
    record_time(work, "eval", seconds)
    write_outputs(work, assets, data, final)


def write_outputs(work: Path, assets: Path, data: Path, final: Path) -> None:
    edits = work / "text_edits.json"
    # kept when newer than the exported network (--card-only after a separate run: ~1 min per prompt here)
    if not edits.is_file() or edits.stat().st_mtime < (assets / "model.safetensors").stat().st_mtime:
        run([sys.executable, str(REPO / "scripts" / "measure_text_edits.py"), "--checkpoint", str(assets), "--figure",
             str(assets / "text_edits.png"), "--json", str(edits), "--report-only"], work / "train_edit_demo.log")
    print(f"# python: example_figure({assets}, {data}, {assets / 'examples.png'})", flush=True)
    figure = example_figure(assets, data, assets / "examples.png")
    card = write_card(work, assets, data, final, figure)
    size = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file()) / 2**20
    if size > SIZE_LIMIT_MB:
        raise SystemExit(f"{assets} holds {size:.1f} MiB, over the {SIZE_LIMIT_MB} MB limit")
    print(f"wrote {assets} ({size:.1f} MiB: model.safetensors, config.json, {CLIP_FOLDER}/, figures) and the card "
          f"{card}")


def short(path: Path) -> Path:
    """``path`` made absolute against the working directory (symlinks kept), relative to REPO when inside it."""
    path = Path(os.path.abspath(path))
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _check_data(data: Path) -> None:
    meta = json.loads((data / "dataset.json").read_text()).get("meta", {}).get("config", {})
    # A symmetric dataset's index has no "heads" (it is the one the generator wrote before asymmetric heads).
    # Nor has an index of the default key light its range (the CLI's --key-light-yaw is key_light_yaw_deg there).
    from perchead.data.synth import DEFAULT_KEY_LIGHT_YAW

    meta = {"heads": "symmetric", "key_light_yaw_deg": DEFAULT_KEY_LIGHT_YAW, **meta}
    meta["key_light_yaw"] = tuple(meta.pop("key_light_yaw_deg"))
    expected = {**recon_demo.DATA, "key_light_yaw": tuple(map(float, recon_demo.DATA["key_light_yaw"]))}
    differs = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if differs:
        raise SystemExit(f"{data} was not made with train_demo.py's DATA settings ({differs}): its test subjects "
                         "would not be the held-out ones")


# -- the model card -----------------------------------------------------------------------------------------
def _val_losses(st: dict) -> str:
    return ", ".join(f"{v['loss']:.4f} (step {v['step']})" for v in st["val"]) or "none"


def _clip_size(assets: Path) -> str:
    c = json.loads((assets / CLIP_FOLDER / "config.json").read_text())
    v, t = c["vision_config"], c["text_config"]
    return (f"{v['num_hidden_layers']} layers, width {v['hidden_size']}, {v['image_size']} px images in "
            f"{v['patch_size']} px patches, {c['projection_dim']}-d embeddings, a {len(c['perchead_vocabulary'])}-word "
            f"CLIPTokenizer, {t['max_position_embeddings']} text tokens")


def _clip_summary(assets: Path) -> str:
    r = json.loads((assets / CLIP_FOLDER / "retrieval.json").read_text())["retrieval"]
    parts = [f"{name.replace('_', ' ')} P@1 {e['p@1']:.0%}" for name, e in r["attributes"].items()]
    return (f"{', '.join(parts)} (text -> image, {r['images']} views of the {r['subjects']} val + test subjects; "
            f"`{CLIP_FOLDER}/README.md`).")


def _text_edit_section(work: Path) -> str:
    """The text-edit table of scripts/measure_text_edits.py (run by write_outputs)."""
    t = json.loads((work / "text_edits.json").read_text())
    lines = ["| prompt | hair pixels | L* | a* | b* | Lab of the colour named |", "|---|---:|---:|---:|---:|---|"]
    for r in t["rows"]:
        named = "-" if r["named_Lab"] is None else "({:.0f}, {:.0f}, {:.0f})".format(*r["named_Lab"])
        lines.append(f"| {r['prompt']} | {r['hair_pixels']} | {r['L']:.1f} | {r['a']:.1f} | {r['b']:.1f} | {named} |")
    checks = "; ".join(f"{c['check'].split(' >=')[0]} = {c['value']:.1f} (>= {c['check'].split('>= ')[1]}: "
                       f"{'pass' if c['pass'] else 'FAIL'})" for c in t["checks"])
    return (f"""**Text edits on the bundled photo** (`python scripts/measure_text_edits.py`: what `perchead edit --from
src/perchead/assets/example_photo.jpg --style-text PROMPT` does, the map from {t['map']}, the head fitted to it
({t['fit_steps']} steps) and rendered from the map's camera; median CIE Lab of the pixels the map calls hair,
against the Lab of the generator's colour that the captions call by that name): {checks}.

""" + "\n".join(lines) + """

![text edits on the bundled photo](text_edits.png)""")


def _style_strength(d: dict) -> str:
    rec = d.get("reconstruction_between_subjects")
    share = f", {d['style_swap']['rgb'] / rec['rgb']:.0%} of how much the reconstruction demo's colours differ " \
        "between the same subjects" if rec else ""
    return (f"A style swap changes the Gaussians' colours by {d['style_swap']['rgb']:.3f} mean |RGB|{share} (see "
            "the figures).")


def _psnr_verdict(summary: dict) -> str:
    parts = []
    for group in (g for g in ("novel", "extreme", "opposite_profile") if (g, "edit_sharpened") in summary):
        edit, base = summary[(group, "edit_sharpened")]["psnr"], summary[(group, "template_mean_colour")]["psnr"]
        rec = summary[(group, "reconstruction_sharpened")]["psnr"]
        parts.append(f"on {group} views `edit_sharpened` is {edit - base:+.2f} dB against the template "
                     f"({'better' if edit > base else 'NOT better'}) and {edit - rec:+.2f} dB against the "
                     "reconstruction demo")
    return "In short: " + "; ".join(parts) + "."


def _disentangle_verdict(d: dict, m: dict) -> str:
    rec = d.get("reconstruction_between_subjects")
    scale = (f" For scale: the reconstruction demo's Gaussians differ by {rec['position_m'] * 1000:.3f} mm (RGB "
             f"{rec['rgb']:.4f}) between the same subjects' images: the heads of these small models differ in "
             f"shape by millimetres only (positions are capped at s_max = {m['s_max']:.0%} of the head size from "
             "the template, and the pixel loss averages)." if rec else "")
    ratio = d["position_ratio_style_over_map"]
    colour = (f"Colour follows the style ({d['rgb_ratio_style_over_map']:.1f} x the map swap's colour change): that "
              "separation, which nothing in the architecture enforces (docs/editing.md), was learned from the data.")
    if ratio < 0.5:
        return (f"Geometry follows the map ({1 / ratio:.1f} x the style swap's displacement) and {colour[0].lower()}"
                f"{colour[1:]}" + scale)
    if ratio < 0.8:
        return (f"**Geometry follows the map only partly**: a style swap still moves the Gaussians {ratio:.2f} x as "
                f"far as a map swap (the map moves them {1 / ratio:.1f} x as far as the style; a likely reason the "
                "style moves them at all: in training the style image is the map's own image, so its embedding "
                f"carries the same head's shape). {colour}" + scale)
    if ratio < 1:
        return (f"**Geometry is only barely disentangled**: a style swap moves the Gaussians {ratio:.2f} x as far as "
                "a map swap, so the map decides the shape hardly more than the style does (a likely reason: the "
                f"the style image in training is the map's own image, so its embedding carries the same head). {colour}"
                + scale)
    return ("**This demo is NOT disentangled in geometry**: a style swap moves the Gaussians "
            f"{ratio:.1f} x as far as a map swap. In training the style image is the "
            "map's own image (the paper's setup), and a likely reason is that the small stand-in CLIP's embedding "
            "keeps some of the image's layout (it has none of a real CLIP's learned invariances), so the "
            "network reads the head's shape from the style at least as easily as from the map. Colour does follow "
            f"the style ({d['rgb_ratio_style_over_map']:.1f} x the map swap's colour change)." + scale)


def _map_fidelity(ev: dict) -> str:
    """The card's map-fidelity section, from ``perchead eval-edit``'s ``map_fidelity``."""
    from perchead.edit.map_eval import format_fidelity

    m = ev.get("map_fidelity")
    if not m:
        return "(`perchead eval-edit` was run without the map fidelity check.)"
    by = {(s["map"], s["method"]): s for s in m["summary"]}

    def line(method: str) -> str:
        u = by["unedited", method]
        edits = [s for (name, meth), s in by.items() if meth == method and "group" in s]
        grow = next(s for s in edits if s["map"].startswith("hair_grow"))
        removed = next(s for s in edits if s["map"] == "hair_removed")
        return (f"silhouette IoU {u['silhouette_iou']:.3f}, hair IoU {u['iou_hair']:.3f}; a "
                f"{m['config']['grow_px']} px hair growth moves the rendered hair area by {grow['followed']:.0%} of "
                f"the painted growth, a hair removal by {removed['followed']:.0%}; worst side alpha ratio of any "
                f"edit {min(s['side_alpha_ratio_min'] for s in edits):.3f}")

    d = m.get("fitted_disentanglement", {})
    through = (f"; through the fit a map swap moves the Gaussians {d['position_ratio_map_over_style']:.1f}x as far as "
               f"a style swap ({d['map_swap']['position_m'] * 1000:.2f} vs {d['style_swap']['position_m'] * 1000:.2f} "
               "mm)" if "style_swap" in d else "")
    fit_s = by["unedited", "fitted"].get("fit_seconds")
    return (f"""`perchead eval-edit` (same command) also measures whether the head follows its map from the map's
camera (docs/editing.md, "Following the painted map"; {m['config']['subjects']} studio test subjects,
their frontal view's exact map; side alpha ratio: the profiles' and the back's alpha outside the edited region,
edited over unedited, 1 = no holes). This network alone: {line('network')}. With the map fit that `perchead edit`
and the app run by default ({fit_s or 0:.1f} s per fit here): {line('fitted')}{through}.

""" + "\n".join(format_fidelity(m)) + """

![controlled map edits: map, then front, profile and back of the network's and the fitted head](map_fidelity.png)""")


def write_card(work: Path, assets: Path, data: Path, final: Path, figure: dict) -> Path:
    from perchead.data.format import read_dataset
    from perchead.edit.evaluate import EditEvalResult, format_table

    ev = json.loads((work / "edit_eval.json").read_text())
    table = format_table(EditEvalResult(ev["rows"], ev["summary"], ev["disentanglement"], ev["info"]))
    st = recon_demo._stage_stats(work / "edit")
    minutes, notes = recon_demo._minutes(work, "edit")
    m = json.loads((assets / "config.json").read_text())["model"]
    files = sorted(f for f in assets.rglob("*") if f.is_file())
    total_mb = sum(f.stat().st_size for f in files) / 2**20
    weights_mb = (assets / "model.safetensors").stat().st_size / 2**20
    clip_mb = sum(f.stat().st_size for f in (assets / CLIP_FOLDER).rglob("*") if f.is_file()) / 2**20
    ds = read_dataset(data)
    counts = {sp: {k: sum(1 for x in ds.split(sp) if x.kind == k) for k in ("studio", "wild")}
              for sp in ("train", "val", "test")}
    summary = {(s["group"], s["method"]): s for s in ev["summary"]}
    d = ev["disentanglement"]
    e = EDIT
    planned = "" if st["steps"] == e["steps"] else f" of {e['steps']} planned"
    note = f" ({'; '.join(notes)})" if notes else ""
    data_cmd = ("`perchead synth " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recon_demo.DATA.items())
                + "`")
    text = f"""# perchead editing demo checkpoint (`tiny` preset, synthetic data, pixel + map loss, CLIP stand-in)

**Read this first: {NOTICE}.**

A small editing network (docs/design.md section 2, editing row; docs/editing.md) bundled with the package so that
`perchead edit --checkpoint demo` (the default) and `EditNetwork.from_pretrained(...)` work offline on a CPU: a
19-class segmentation map sets the geometry, a style image the look. It is a **demo**: trained for minutes on a
2-core CPU, only on the project's procedural synthetic heads, at {m['image_size']} px, with a pixel loss and a map
loss, and its style encoder is a small CLIP trained on the same synthetic heads, not a real CLIP.

Reproduce it (every setting is in the script, the {EDIT_MINUTES} min training budget included):
`OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python scripts/train_edit_demo.py` (add `--data DIR` to reuse a dataset made
with the same settings; this checkpoint used `{data}`). Steps reached within
the budget depend on the machine's load.

## Model

| | |
|---|---|
| network | `EditNetwork`: segmentation ViT ({m['vit_depth']} blocks, width {m['vit_width']}) + style token -> the \
reconstruction demo's decoder ({m['layers']} layers, width {m['width']}), Gaussian heads \
({m['template_resolution'] ** 2:,} Gaussians) and SHP-CNN, all fine-tuned from `assets/demo` except SHP-CNN (frozen) |
| style encoder | `{CLIP_FOLDER}/`: **a small CLIP trained by perchead on these synthetic heads and captions \
generated from their parameters, not a real CLIP** (`transformers.CLIPModel`, {_clip_size(assets)}; \
`scripts/train_text_clip.py`, its own README); frozen while the editing network trains |
| files | `model.safetensors` ({weights_mb:.1f} MiB) + `config.json` (names the CLIP as `./{CLIP_FOLDER}`, relative \
to this folder) + `{CLIP_FOLDER}/` ({clip_mb:.1f} MiB) + figures: {total_mb:.1f} MiB in all |
| load | `EditNetwork.from_pretrained("<this folder>")`, `perchead edit --checkpoint demo` |
| from | edit run `{final.name}` (`perchead train --stage edit --init-from src/perchead/assets/demo`) |

What the stand-in means in practice: its image embedding says what the synthetic heads' captions say (hair
colour, long / short hair, bald, bun, glasses, earrings, necklace, collar, skin tone, eye colour), and its text
embedding of a prompt made of the captions' words lands near the images it describes (the editing network is
trained on image embeddings only, as in the paper). Held-out retrieval with it: {_clip_summary(assets)}
Prompts with any other word are refused with the list of words it knows. {_style_strength(d)} Swapping in a
real CLIP needs retraining (its embedding size and space differ; the checkpoint refuses a CLIP of another size).

{_text_edit_section(work)}

## Data

{data_cmd}, the data of the reconstruction demo (same seed: the same test subjects, unseen by both
networks), with the exact segmentation map of every view. Training samples: one input view with a visible
face, its map and its matted image (the style), and {e['target_views']} other views of the same studio subject
(or the input alone for a wild subject; {e['studio_fraction']:.0%} studio samples); the input view is supervised
too.

| split | studio | wild |
|---|---:|---:|
""" + "\n".join(f"| {sp} | {c['studio']} | {c['wild']} |" for sp, c in counts.items()) + f"""

## Training

Stage `edit` of `perchead train`: the editing encoder (new; its ViT blocks start from the image ViT's), the
decoder and the Gaussian heads train; SHP-CNN and the image encoder stay as they are. **Loss: the pixel-loss
ablation, 0.8 x L1 + 0.2 x (1 - SSIM)** (the paper's DINOv2 + SAM 2.1 losses need weights that cannot be
downloaded here), **plus the map loss** (label weight {MAP_LOSS['label_weight']}, alpha weight
{MAP_LOSS['alpha_weight']}: the Gaussians labelled from the input view's map, their labels and alpha rendered into
every target view against its exact map). AdamW (betas 0.9/0.95, weight decay 0.05 on matrices), {e['warmup']}
warm-up steps then cosine to {e['min_lr_ratio']} x lr, gradient clipping at 1.0, batch {e['batch_size']}, seed
{e['seed']}, float32, one CPU thread (`OMP_NUM_THREADS=1`) on a 2-core machine that other jobs shared part of the
time (the times are pessimistic).
Validation loss (3 fixed val samples, every {e['val_every']} steps): {_val_losses(st)}.

| stage | steps | samples | lr | train loss (first 10 -> last 50 steps) | wall time (min) | sum of step times (min) |
|---|---:|---:|---:|---|---:|---:|
| edit | {st['steps']}{planned} | {st['samples']} | {e['lr']:g} | {st['loss_first10']:.4f} -> \
{st['loss_last50']:.4f} | {minutes:.1f}{note} | {st['step_seconds'] / 60:.1f} |

## Held-out evaluation

`perchead eval-edit --checkpoint src/perchead/assets/demo_edit --data <synth data> --reconstruction
src/perchead/assets/demo` on the **{ev['info']['subjects']} studio test subjects**, {ev['info']['image_size']} px,
white background, unmasked PSNR / SSIM, mean over target images (docs/editing.md). For each subject the editing
network gets the input view's **own segmentation map and its own matted image as the style** and is rendered
at the protocol's target cameras (**novel**: input = the most frontal view, targets = every other view, the
back included; **extreme** (the paper's): the same input, the horizontal profiles as targets, and the back
(**extreme_back**); **opposite_profile**: profile -> opposite profile, this card's "extreme" before the protocol
followed the paper). `template_mean_colour` (no network): the template
points painted with the input's mean foreground colour (perchead.eval.heldout's baseline).
`reconstruction_sharpened`: the reconstruction demo fed the input *image* (what editing gives up by seeing
only a map and a style). `edit` is the raw render, `edit_sharpened` after SHP-CNN (what `perchead edit` writes).

{table}

{_psnr_verdict(summary)}

**Disentanglement** (the same test subjects' most frontal views, all ordered pairs of the first
{d.get('subjects', 0)}): a *style swap* keeps subject i's map and takes subject j's image as the style, a *map swap*
keeps i's style and takes j's map. Mean distance between corresponding Gaussian centres (one Gaussian per
template point): {d['style_swap']['position_m'] * 1000:.3f} mm under a style swap vs \
{d['map_swap']['position_m'] * 1000:.3f} mm under a map swap (ratio {d['position_ratio_style_over_map']:.3f});
mean absolute RGB change {d['style_swap']['rgb']:.4f} vs {d['map_swap']['rgb']:.4f}. {_disentangle_verdict(d, m)}

![held-out examples](heldout_examples.png)

## Example: one map, several styles; the same map with more hair

Test subject `{figure['map_subject']}`'s map with the images of test subjects \
{', '.join(f'`{x}`' for x in figure['style_subjects'])} as styles (front and yaw {FIGURE['yaws'][1]:.0f}
degrees), then the map with its hair class grown by {FIGURE['hair_grow_pixels']} px into the background
(`perchead.edit.segmentation.grow_class`, {figure['hair_pixels_added']} pixels of the {m['image_size']} px map) under
style 1. That edit moves the Gaussians by {figure['hair_edit_mean_mm']:.3f} mm on average (at most
{figure['hair_edit_max_mm']:.2f} mm) and changes their colour by {figure['hair_edit_rgb']:.4f} (mean |RGB|).

![examples](examples.png)

## Map fidelity, and the fit to the map

{_map_fidelity(ev)}

## Limitations

- **The style encoder is a stand-in**: a small CLIP trained on the synthetic heads' captions, so text styles
  know only those words and image styles only what separates the synthetic heads. Train with `--clip
  openai/clip-vit-base-patch32` (or a local copy) for the paper's open-vocabulary text editing.
- Map edits move the geometry only within the reconstruction demo's small range (s_max) and, without the map
  fit (`--fit-steps 0`), follow the map only as far as the numbers above say; with the fit, the front follows
  the map and the sides can show seams where fitted and unfitted Gaussians meet.
- Synthetic heads only; real photos and hand-drawn maps of other shapes are out of distribution. Maps are
  128 px, the 19 classes of CelebAMask-HQ; the synthetic data has no hats.
- Pixel loss instead of the paper's perceptual losses; {st['steps']:,} steps of batch {e['batch_size']} (the paper:
  30 h on a GPU). Gaussians move at most {m['s_max']:.0%} of the head size from the template, so a map edit can
  only reshape the head within that range.
- Numbers above are on the synthetic test split only.
"""
    path = assets / "README.md"
    path.write_text(text)
    return path


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"done in {(time.time() - t0) / 60:.1f} min", file=sys.stderr)
