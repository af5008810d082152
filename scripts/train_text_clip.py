"""Train the caption-trained CLIP stand-in that the bundled editing demo uses in place of a real CLIP.

    OMP_NUM_THREADS=1 python scripts/train_text_clip.py --data outputs/demo_edit/data
    python scripts/train_text_clip.py --data outputs/demo_edit/data --eval-only   # only redo the retrieval table

The data are the editing demo's synthetic heads (scripts/train_edit_demo.py makes them, train_demo.py's
``DATA``): a ``transformers.CLIPModel`` (perchead.textclip.TextClipConfig) and a ``CLIPTokenizer`` of the
captions' vocabulary are trained on the train split's face-visible views with captions drawn from each
subject's generator parameters, evaluated by text -> image retrieval on the val and test subjects (unseen),
and saved with ``save_pretrained`` to ``--out`` with a README (the retrieval table) and ``retrieval.json``.
Deterministic for a given machine and thread count (seeded; one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "perchead" / "assets" / "demo_edit" / "clip_synthetic_captions"
MODEL = dict()  # TextClipConfig defaults
TRAIN = dict(steps=1200, batch_size=64, lr=1e-3, align_weight=10.0, seed=0)
SPLITS = dict(train=("train",), heldout=("val", "test"))
NOTICE = ("a small CLIP trained by perchead on its synthetic heads and their generated captions, standing in "
          "for a real CLIP where none can be downloaded: it knows only the captions' words (hair colour, "
          "length, bald, bun, glasses, earrings, necklace, collar, skin tone, eye colour) and only synthetic "
          "heads; prompts with other words are refused")


def retrieval_markdown(result: dict) -> str:
    lines = ["| attribute | prompts | P@1 | P@5 | zero-shot classification top-1 |", "|---|---:|---:|---:|---:|"]
    for attr, e in result["attributes"].items():
        cls = f"{e['classification_top1']:.1%} ({e['classified_images']} images)" if "classification_top1" in e else "-"
        lines.append(f"| {attr} | {len(e['prompts'])} | {e['p@1']:.1%} | {e['p@5']:.1%} | {cls} |")
    hair = result["attributes"].get("hair_colour")
    if hair:
        lines += ["", "| hair-colour prompt | held-out images with it | P@1 | P@5 |", "|---|---:|---:|---:|"]
        lines += [f"| {r['prompt']} | {r['relevant']} | {r['p@1']:.0%} | {r['p@5']:.0%} |" for r in hair["prompts"]]
    return "\n".join(lines)


def main() -> None:
    from perchead.losses import load_clip
    from perchead.textclip import TextClipConfig, build_text_clip, caption_vocabulary, save_text_clip
    from perchead.textclip.captions import evaluation_prompts
    from perchead.textclip.train import TextClipTrainConfig, load_captioned_images, retrieval, train_text_clip

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a `perchead synth` dataset (train_demo.py's DATA)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, default=TRAIN["steps"])
    ap.add_argument("--eval-only", action="store_true",
                    help="evaluate the model in --out (rewrites its README.md and retrieval.json), do not train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = TextClipConfig(**MODEL)
    train_cfg = TextClipTrainConfig(**{**TRAIN, "steps": args.steps})
    t0 = time.perf_counter()
    heldout = load_captioned_images(args.data, SPLITS["heldout"], cfg.image_size)
    if args.eval_only:
        clip = load_clip(str(args.out))
        model, tokenizer = clip.model, clip.tokenizer
        train_info = json.loads((args.out / "retrieval.json").read_text())["train"]
    else:
        train = load_captioned_images(args.data, SPLITS["train"], cfg.image_size)
        print(f"# {len(train.pixels)} training images of {len(set(train.subjects))} subjects, "
              f"{len(heldout.pixels)} held-out of {len(set(heldout.subjects))} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        model, tokenizer = build_text_clip(caption_vocabulary(), cfg, NOTICE)
        t1 = time.perf_counter()
        history = train_text_clip(model, tokenizer, train, train_cfg, log=lambda s: print(s, flush=True))
        minutes = (time.perf_counter() - t1) / 60
        last = history[-50:]
        train_info = {"config": asdict(train_cfg), "model": asdict(cfg), "minutes": round(minutes, 2),
                      "images": len(train.pixels), "subjects": len(set(train.subjects)),
                      "loss_first_10": sum(h["loss"] for h in history[:10]) / 10,
                      "loss_last_50": sum(h["loss"] for h in last) / len(last),
                      "align_last_50": sum(h["align"] for h in last) / len(last)}
    result = retrieval(model, tokenizer, heldout, evaluation_prompts())
    table = retrieval_markdown(result)
    print(table)
    readme = f"""# Caption-trained CLIP stand-in (NOT a real CLIP)

**{NOTICE}.**

`transformers.CLIPModel` ({cfg.layers} layers, width {cfg.hidden}, {cfg.image_size} px images in {cfg.patch} px
patches, {cfg.projection_dim}-d embeddings) and a `CLIPTokenizer` whose BPE merges make each of the
{len(caption_vocabulary())} caption words one token; `config.json` lists those words (`perchead_vocabulary`),
and perchead refuses a prompt with any other (perchead.textclip.vocabulary). Loads like any CLIP folder:
`perchead.losses.load_clip("<this folder>")`, `CLIPModel.from_pretrained`.

Made by `OMP_NUM_THREADS=1 python scripts/train_text_clip.py --data <data>` (scripts/train_edit_demo.py runs it)
on the editing demo's synthetic heads: {train_info['images']} face-visible views of {train_info['subjects']} train
subjects, captions drawn each step from the generator's parameters (perchead.textclip.captions), CLIP's
contrastive loss with every fitting caption of the batch a positive, plus an image-text alignment term
on the batch means (weight {train_cfg.align_weight}), {train_cfg.steps} steps of batch {train_cfg.batch_size}, AdamW lr
{train_cfg.lr}, {train_info['minutes']:.1f} min on one CPU thread (shared 2-core machine). Loss
{train_info['loss_first_10']:.3f} (first 10 steps) -> {train_info['loss_last_50']:.3f} (last 50); squared distance
between the batch's mean image and mean caption embedding {train_info['align_last_50']:.4f} (last 50).

## Held-out retrieval ({result['images']} face-visible views of the {result['subjects']} val + test subjects)

P@k: for each prompt, the share of the k most similar held-out images whose head has what the prompt says
(mean over the attribute's prompts and values; values no held-out head has are skipped). Zero-shot
classification: each image gets the value whose prompts score highest.

{table}
"""
    if args.eval_only:  # the same weights; the README and retrieval.json get this evaluation
        (args.out / "README.md").write_text(readme)
    else:
        save_text_clip(model, tokenizer, args.out, readme)
    (args.out / "retrieval.json").write_text(json.dumps({"train": train_info, "retrieval": result}, indent=1) + "\n")
    (args.out / "retrieval.json").chmod(0o644)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"done in {(time.time() - t0) / 60:.1f} min", file=sys.stderr)
