"""Training and evaluating the caption-trained CLIP stand-in on a synthetic dataset (``perchead synth``).

Images are the views the editing network takes its styles from (face visible), composited on white and
preprocessed exactly as ``clip_image_embedding`` does; captions are drawn anew each step from the subject's
attributes (captions.py). Loss: CLIP's symmetric cross-entropy over the batch's image-caption similarities,
with one change: a caption is a *partial* description ("red hair"), so it is a true match for every head in
the batch it fits, and the targets spread evenly over those (the generator knows which) instead of marking
them as negatives. Plus an alignment term pulling each image's embedding towards its caption's: CLIP's
contrastive loss alone leaves image and text embeddings in separate regions of the sphere (the "modality
gap"), and the editing network, trained on image embeddings only, must read a text embedding as it would
the images it describes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.data.format import load_view, read_dataset
from perchead.losses.clip import clip_preprocess

from .captions import ATTRIBUTES, HeadAttributes, attributes_from_appearance, caption_fits, sample_caption


@dataclass(frozen=True)
class TextClipTrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    align_weight: float = 10.0  # the modality-gap term (module docstring)
    seed: int = 0
    log_every: int = 100


@dataclass
class CaptionedImages:
    """Preprocessed images [N, 3, S, S] (CLIP-normalised), each with its subject's attributes."""

    pixels: Tensor
    attributes: list[HeadAttributes]
    subjects: list[str]
    views: list[str]


def load_captioned_images(root, splits: tuple[str, ...], size: int, max_views: int | None = None) -> CaptionedImages:
    """Face-visible views of the studio and wild subjects of ``splits`` (``max_views``: the most frontal
    ones per subject), matted on white, at ``size`` px."""
    data = read_dataset(root)
    pixels, attrs, subjects, views = [], [], [], []
    for subject in data.subjects:
        if subject.split not in splits:
            continue
        appearance = subject.meta.get("appearance")
        if appearance is None:
            raise ValueError(f"{subject.root}: subject.json has no 'appearance': captions need heads made by "
                             "`perchead synth`")
        a = attributes_from_appearance(appearance)
        chosen = [v for v in subject.views if v.face_visible is not False]
        chosen.sort(key=lambda v: abs(v.yaw_deg or 0.0))
        for v in chosen[:max_views]:
            lv = load_view(v)
            image = lv.image * lv.mask + (1.0 - lv.mask)
            pixels.append(clip_preprocess(image[None], size)[0])
            attrs.append(a)
            subjects.append(subject.id)
            views.append(v.name)
    if not pixels:
        raise ValueError(f"no face-visible views in splits {splits} of {root}")
    return CaptionedImages(torch.stack(pixels), attrs, subjects, views)


def embed_images(model, pixels: Tensor) -> Tensor:
    return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)


def embed_texts(model, tokenizer, texts: list[str]) -> Tensor:
    tok = tokenizer(texts, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                    return_tensors="pt")
    out = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    return F.normalize(out, dim=-1)


def contrastive_loss(image: Tensor, text: Tensor, fits: Tensor, logit_scale: Tensor,
                     align_weight: float) -> tuple[Tensor, dict[str, float]]:
    """CLIP's loss with multi-positive targets. ``fits[i, j]``: caption j truly describes image i (the
    diagonal always holds)."""
    logits = logit_scale.exp().clamp(max=100.0) * image @ text.T
    fits = fits.float()
    i2t = -(F.log_softmax(logits, 1) * fits / fits.sum(1, keepdim=True)).sum(1).mean()
    t2i = -(F.log_softmax(logits, 0) * fits / fits.sum(0, keepdim=True)).sum(0).mean()
    align = (image.mean(0) - text.mean(0)).square().sum()
    loss = (i2t + t2i) / 2 + align_weight * align
    parts = {"loss": loss, "i2t": i2t, "t2i": t2i, "align": align, "scale": logit_scale.exp()}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def train_text_clip(model, tokenizer, data: CaptionedImages, cfg: TextClipTrainConfig,
                    log=print) -> list[dict[str, float]]:
    """AdamW with warm-up and cosine decay; random horizontal flips (the captions say nothing about sides)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + np.cos(np.pi * min(s, cfg.steps) / cfg.steps)))
    model.train()
    history, t0, n = [], time.perf_counter(), len(data.attributes)
    for step in range(cfg.steps):
        idx = rng.choice(n, size=min(cfg.batch_size, n), replace=False)
        pixels = data.pixels[torch.from_numpy(idx)]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        heads = [data.attributes[i] for i in idx]
        captions = [sample_caption(a, rng) for a in heads]
        fits = torch.tensor([[caption_fits(claims, a) for _, claims in captions] for a in heads])
        texts = embed_texts(model, tokenizer, [t for t, _ in captions])
        loss, info = contrastive_loss(embed_images(model, pixels), texts, fits, model.logit_scale, cfg.align_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        info["step"] = step + 1
        history.append(info)
        if log is not None and ((step + 1) % cfg.log_every == 0 or step == 0):
            log(f"step {step + 1}/{cfg.steps} loss {info['loss']:.3f} (i2t {info['i2t']:.3f} t2i {info['t2i']:.3f} "
                f"align {info['align']:.3f}) scale {info['scale']:.1f} [{time.perf_counter() - t0:.0f} s]")
    model.eval()
    return history


@torch.no_grad()
def retrieval(model, tokenizer, data: CaptionedImages, prompts: dict[str, dict[object, list[str]]],
              ks: tuple[int, ...] = (1, 5)) -> dict:
    """Text -> image retrieval: for each prompt, the images ranked by similarity; precision at each k = the
    share of the k best images whose head has the prompt's attribute value. Also, per attribute, zero-shot
    classification of each image among the attribute's values (the value whose prompts score highest on
    average; only images the attribute applies to, e.g. no hair colour for bald heads) and the mean cosine
    between an image and the prompts of its own value vs all images and prompts (the modality gap)."""
    model.eval()
    images = torch.cat([embed_images(model, data.pixels[i:i + 256]) for i in range(0, len(data.pixels), 256)])
    out: dict = {"images": len(images), "subjects": len(set(data.subjects)), "attributes": {}}
    for attr, values in prompts.items():
        assert attr in ATTRIBUTES, attr
        truth = [getattr(a, attr) for a in data.attributes]
        rows, texts_of = [], {}
        for value, texts in values.items():
            t = embed_texts(model, tokenizer, texts)
            texts_of[value] = t
            has = torch.tensor([x == value for x in truth])
            if not has.any():
                continue
            sim = t @ images.T  # [prompts, images]
            order = sim.argsort(1, descending=True)
            for p, text in enumerate(texts):
                row = {"value": value, "prompt": text, "relevant": int(has.sum())}
                for k in ks:
                    row[f"p@{k}"] = float(has[order[p, :k]].float().mean())
                rows.append(row)
        entry: dict = {"prompts": rows}
        for k in ks:
            entry[f"p@{k}"] = float(np.mean([r[f"p@{k}"] for r in rows])) if rows else float("nan")
        if len(values) > 1:
            names = list(values)
            applies = torch.tensor([x is not None for x in truth])
            scores = torch.stack([(texts_of[v] @ images.T).mean(0) for v in names], 1)  # [images, values]
            pred = scores.argmax(1)
            gold = torch.tensor([names.index(x) if x in names else -1 for x in truth])
            ok = (pred == gold) & applies
            entry["classification_top1"] = float(ok.sum() / applies.sum().clamp(min=1))
            entry["classified_images"] = int(applies.sum())
        out["attributes"][attr] = entry
    return out
