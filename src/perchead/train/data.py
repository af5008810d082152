"""From the data package's samples to the trainer's batches.

Samples come from :class:`perchead.data.HeadViewsDataset` (one input view + target views of a subject, or the
input alone for single-view subjects; view 0 is the input; composited over white). The trainer numbers the
samples of a run by their global position p (see :class:`perchead.train.distributed.ShardedOrder`) and
asks the sampler for sample ``p mod n`` of epoch ``p div n``: a sample is a pure function of (seed, p), so
the data of any step is rebuilt exactly after a resume, with any number of worker processes.

:func:`collate` resizes the input view to the model's input size and the targets to the render size
(intrinsics scaled to match) and pads a batch to its largest view count, marking real views in ``valid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.data import HeadViewsDataset, SamplerConfig
from perchead.data.format import HeadDataset

from .config import DataConfig


@dataclass
class Batch:
    """A collated batch. ``input_*`` are view 0 at the model's input size; the rest at the render size."""

    input_image: Tensor  # [B, 3, S, S]
    input_mask: Tensor  # [B, 1, S, S]
    targets: Tensor  # [B, V, 3, R, R] on white, what renders are compared with
    target_masks: Tensor  # [B, V, 1, R, R]
    viewmats: Tensor  # [B, V, 4, 4]
    Ks: Tensor  # [B, V, 3, 3] for the render size
    valid: Tensor  # [B, V] bool; padding views (single-view subjects in a mixed batch) are False
    input_segmentation: Tensor | None = None  # [B, S, S] class ids of view 0, when every sample has a map
    target_segmentation: Tensor | None = None  # [B, V, R, R] class ids of the targets, likewise

    def to(self, device: torch.device) -> Batch:
        return Batch(**{k: None if v is None else v.to(device, non_blocking=True) for k, v in self.__dict__.items()})


class PositionDataset(torch.utils.data.Dataset):
    """The sampler addressed by global sample position instead of (epoch, index)."""

    def __init__(self, dataset: HeadDataset | str, split: str, cfg: DataConfig, seed: int,
                 segmentation: bool = False) -> None:
        sampler_cfg = SamplerConfig(split=split, num_targets=cfg.target_views, studio_fraction=cfg.studio_fraction,
                                    drop_faceless_inputs=cfg.drop_faceless_inputs, image_size=None,
                                    background=1.0, seed=seed, load_segmentation=segmentation)
        self.sampler = HeadViewsDataset(dataset, sampler_cfg)
        self.seed, self.input_shoulders = seed, cfg.input_shoulders

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, position: int) -> dict:
        epoch, index = divmod(int(position), len(self.sampler))
        # Each DataLoader worker owns its copy of the sampler, so setting the epoch per item is safe.
        self.sampler.set_epoch(epoch)
        sample = self.sampler[index]
        if self.input_shoulders > 0.0:
            # Its own generator per (seed, position): the same sample after a resume, with any worker count.
            rng = torch.Generator().manual_seed((self.seed * 1_000_003 + int(position)) * 2 + 1)
            if torch.rand((), generator=rng) < self.input_shoulders:
                image, mask = paint_shoulders(sample["images"][0], sample["masks"][0], rng)
                sample["input_image"], sample["input_mask"] = image[None], mask[None]
        return sample


def paint_shoulders(image: Tensor, mask: Tensor, rng: torch.Generator,
                    background: float = 1.0) -> tuple[Tensor, Tensor]:
    """[3, H, W] image on ``background`` and [1, H, W] mask -> both with shoulders added *behind* what is
    there: a torso in one random clothing colour (lit from above, darker towards the bottom) whose top edge
    leaves the neck at a random height in the lowest quarter of the frame and falls away to both sides, as in a
    head-and-shoulders portrait. The shoulders are centred on the neck (the foreground's lowest rows); hair
    that hangs over them stays in front."""
    _, h, w = image.shape
    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=rng))

    low = mask[0, int(0.9 * h):] > 0.5
    cols = torch.nonzero(low.any(0)).flatten()
    cx = cols.float().mean().item() / w if len(cols) else 0.5
    neck = (cols.max() - cols.min() + 1).item() / w / 2 if len(cols) else 0.08
    top, drop, spread = uniform(0.74, 0.92), uniform(0.03, 0.15), uniform(0.1, 0.3)
    ys = (torch.arange(h, dtype=torch.float32)[:, None] + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32)[None, :] + 0.5) / w
    out = ((xs - cx).abs() - neck).clamp_min(0.0) / spread  # 0 beside the neck, 1 at the shoulder's edge
    edge = top + drop * out.clamp(max=1.0) ** 2  # the shoulder line: flat by the neck, falling outwards
    shoulders = ((ys - edge) * h).clamp(0.0, 1.0)  # one pixel of antialiasing
    cloth = torch.rand(3, generator=rng) * uniform(0.2, 1.0)
    shade = 1.0 - 0.35 * ((ys - top) / (1.0 - top + 1e-6)).clamp(0.0, 1.0)
    painted = (cloth[:, None, None] * shade).clamp(0.0, 1.0)
    behind = shoulders * (1.0 - mask)
    fg = image * mask + painted * behind  # what the foreground shows, premultiplied by its alpha
    new_mask = mask + behind
    return fg + background * (1.0 - new_mask), new_mask


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _resize_map(seg: Tensor, size: int) -> Tensor:
    """[V, H, W] class ids -> [V, size, size], nearest (labels are not interpolated)."""
    return F.interpolate(seg[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def _scale_K(K: Tensor, sx: float, sy: float) -> Tensor:
    # Pixel coordinates with the image's top-left corner at 0: every row-0 term scales with x, row 1 with y.
    K = K.clone()
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def collate(samples: list[dict], image_size: int, render_size: int, supervise_input: bool = True) -> Batch:
    """Samples -> :class:`Batch`. With ``supervise_input`` the input view is also a target (the only one of
    a single-view subject); padding views repeat a real camera and are masked out of the loss."""
    first = 0 if supervise_input else 1
    n_views = max(max(len(s["images"]) - first, 1) for s in samples)
    inputs, in_masks, targets, t_masks, viewmats, Ks, valid = [], [], [], [], [], [], []
    for s in samples:
        images, masks = s["images"].float(), s["masks"].float()
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"subject {s.get('subject')}: training needs square views, got "
                             f"{tuple(images.shape[-2:])}")
        # The input may differ from view 0 as a target (PositionDataset's input_shoulders).
        inputs.append(_resize(s.get("input_image", images[:1]).float(), image_size)[0].clamp(0, 1))
        in_masks.append(_resize(s.get("input_mask", masks[:1]).float(), image_size)[0].clamp(0, 1))
        # A single-view sample without input supervision still renders one (masked-out) view.
        sel = slice(first, None) if len(images) > first else slice(0, 1)
        scale = render_size / images.shape[-1]
        img = _resize(images[sel], render_size).clamp(0, 1)
        m = _resize(masks[sel], render_size).clamp(0, 1)
        k = _scale_K(s["Ks"][sel].float(), scale, scale)
        vm = s["viewmats"][sel].float()
        v = torch.ones(n_views, dtype=torch.bool)
        if len(images) <= first:
            v[:] = False
        pad = n_views - len(img)
        if pad:
            img, m = torch.cat([img, img[:1].expand(pad, -1, -1, -1)]), torch.cat([m, m[:1].expand(pad, -1, -1, -1)])
            k, vm = torch.cat([k, k[:1].expand(pad, -1, -1)]), torch.cat([vm, vm[:1].expand(pad, -1, -1)])
            v[-pad:] = False
        targets.append(img)
        t_masks.append(m)
        Ks.append(k)
        viewmats.append(vm)
        valid.append(v)
    seg = target_seg = None
    if all("segmentation" in s for s in samples):
        seg = torch.stack([_resize_map(s["segmentation"][:1], image_size)[0] for s in samples])
        target_seg = []
        for s in samples:
            m = _resize_map(s["segmentation"][first:] if len(s["segmentation"]) > first
                            else s["segmentation"][:1], render_size)
            target_seg.append(torch.cat([m, m[:1].expand(n_views - len(m), -1, -1)]))
        target_seg = torch.stack(target_seg)
    return Batch(torch.stack(inputs), torch.stack(in_masks), torch.stack(targets), torch.stack(t_masks),
                 torch.stack(viewmats), torch.stack(Ks), torch.stack(valid), seg, target_seg)


__all__ = ["Batch", "PositionDataset", "collate", "paint_shoulders"]
