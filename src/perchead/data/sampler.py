"""Training samples: one input view + target views of the same subject (studio), or the input alone (wild).

A sample is drawn from (seed, epoch, index) alone, so any worker, any order and any restart give the same
sample. The kind of subject is drawn first with ``studio_fraction`` (the mixing ratio), then a subject of that
kind, then an input view among those that show a face, then ``num_targets`` other views.

Whether a view shows a face (docs/design.md: Cafca back views are filtered out as inputs): a ``face_visible``
callable if given, else the view's precomputed ``face_visible`` flag, else its ``yaw_deg`` against
``max_input_yaw_deg``, else the view counts as showing a face.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .format import HeadDataset, SubjectRecord, ViewRecord, load_view, read_dataset

FaceVisibleFn = Callable[[SubjectRecord, ViewRecord], bool]


@dataclass
class SamplerConfig:
    split: str = "train"
    num_targets: int = 3  # target views per studio sample (the paper's 3)
    studio_fraction: float = 0.8  # share of samples from studio subjects when both kinds exist
    drop_faceless_inputs: bool = True  # never use a view without a visible face as the input
    max_input_yaw_deg: float = 90.0  # used when a view has a yaw but no face_visible flag
    targets_include_input: bool = False  # allow the input view among the targets (only when views run out)
    image_size: int | None = None  # resize every view to this square size (K scaled); None: keep
    background: float = 1.0  # grey level composited behind the mask (white, docs/design.md)
    samples_per_epoch: int | None = None  # default: number of subjects in the split
    seed: int = 0
    load_segmentation: bool = True

    def __post_init__(self) -> None:
        if self.num_targets < 0:
            raise ValueError(f"num_targets must be >= 0, got {self.num_targets}")
        if not 0.0 <= self.studio_fraction <= 1.0:
            raise ValueError(f"studio_fraction must be in [0, 1], got {self.studio_fraction}")


class HeadViewsDataset(torch.utils.data.Dataset):
    """Map-style dataset of multi-view samples; call :meth:`set_epoch` to get new draws each epoch.

    Each item is a dict: ``images`` [V, 3, H, W] in [0, 1] composited over ``background``, ``masks``
    [V, 1, H, W], ``has_mask`` [V], ``viewmats`` [V, 4, 4], ``Ks`` [V, 3, 3], ``segmentation`` [V, H, W] (only
    when every chosen view has one), ``subject``, ``kind``, ``views`` (names). View 0 is the input; V = 1 +
    num_targets for studio subjects and 1 for wild ones (see :func:`collate_views` to batch both kinds).
    """

    def __init__(self, dataset: HeadDataset | str | Path, config: SamplerConfig | None = None,
                 face_visible: FaceVisibleFn | None = None) -> None:
        self.config = config or SamplerConfig()
        self.dataset = dataset if isinstance(dataset, HeadDataset) else read_dataset(dataset)
        self.face_visible = face_visible
        subjects = self.dataset.split(self.config.split)
        if not subjects:
            raise ValueError(f"dataset {self.dataset.root} has no subjects in split {self.config.split!r}")
        self.by_kind: dict[str, list[tuple[SubjectRecord, list[int]]]] = {"studio": [], "wild": []}
        self.dropped: list[str] = []  # subjects without any usable input view
        for s in subjects:
            inputs = [i for i, v in enumerate(s.views) if self._usable_input(s, v)]
            if not inputs:
                self.dropped.append(s.id)
                continue
            self.by_kind[s.kind].append((s, inputs))
        if not any(self.by_kind.values()):
            raise ValueError(f"no subject in split {self.config.split!r} has a view with a visible face")
        self.epoch = 0

    def _usable_input(self, subject: SubjectRecord, view: ViewRecord) -> bool:
        if not self.config.drop_faceless_inputs:
            return True
        if self.face_visible is not None:
            return bool(self.face_visible(subject, view))
        if view.face_visible is not None:
            return view.face_visible
        if view.yaw_deg is not None:
            yaw = (view.yaw_deg + 180.0) % 360.0 - 180.0
            return abs(yaw) <= self.config.max_input_yaw_deg
        return True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.config.samples_per_epoch
        return n if n is not None else sum(len(v) for v in self.by_kind.values())

    def draw(self, index: int) -> tuple[SubjectRecord, list[int]]:
        """Which subject and views sample ``index`` uses (view 0 = input), without loading images."""
        cfg = self.config
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, self.epoch, index]))
        studio, wild = self.by_kind["studio"], self.by_kind["wild"]
        if studio and wild:
            pool = studio if rng.random() < cfg.studio_fraction else wild
        else:
            pool = studio or wild
        subject, inputs = pool[int(rng.integers(len(pool)))]
        first = inputs[int(rng.integers(len(inputs)))]
        if subject.kind == "wild" or cfg.num_targets == 0:
            return subject, [first]
        others = [i for i in range(len(subject.views)) if i != first]
        if len(others) >= cfg.num_targets:
            targets = rng.choice(others, cfg.num_targets, replace=False).tolist()
        elif others or cfg.targets_include_input:
            # Too few views: repeat some rather than change the sample's shape.
            pool_views = others or [first]
            targets = rng.choice(pool_views, cfg.num_targets, replace=True).tolist()
        else:
            raise ValueError(f"subject {subject.id} has a single view; it cannot provide {cfg.num_targets} target "
                             "view(s) (mark it 'wild' or set targets_include_input=True)")
        return subject, [first, *targets]

    def __getitem__(self, index: int) -> dict:
        subject, idx = self.draw(index)
        views = [subject.views[i] for i in idx]
        loaded = [load_view(v) for v in views]
        Ks = torch.stack([v.K for v in views])
        images = [lv.image for lv in loaded]
        masks = [lv.mask for lv in loaded]
        segs = [lv.segmentation for lv in loaded]
        size = self.config.image_size
        if size is not None:
            images, masks, segs, Ks = _resize(images, masks, segs, Ks, size)
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise ValueError(f"subject {subject.id}: views have different sizes {sorted(shapes)}; set "
                             "SamplerConfig.image_size to resize them")
        image = torch.stack(images)
        mask = torch.stack(masks)
        bg = self.config.background
        out = {
            "images": image * mask + bg * (1.0 - mask),
            "masks": mask,
            "has_mask": torch.tensor([lv.has_mask for lv in loaded]),
            "viewmats": torch.stack([v.world_to_cam for v in views]),
            "Ks": Ks,
            "subject": subject.id,
            "kind": subject.kind,
            "views": [v.name for v in views],
        }
        if self.config.load_segmentation and all(s is not None for s in segs):
            out["segmentation"] = torch.stack(segs)
        return out


def _resize(images: list[Tensor], masks: list[Tensor], segs: list[Tensor | None], Ks: Tensor,
            size: int) -> tuple[list[Tensor], list[Tensor], list[Tensor | None], Tensor]:
    F = torch.nn.functional
    Ks = Ks.clone()
    out_i, out_m, out_s = [], [], []
    for k, (im, m, s) in enumerate(zip(images, masks, segs, strict=True)):
        h, w = im.shape[-2:]
        # Scaling pixel coordinates by size/w and size/h maps pixel centres exactly (they sit at +0.5).
        Ks[k, 0] *= size / w
        Ks[k, 1] *= size / h
        out_i.append(F.interpolate(im[None], (size, size), mode="bilinear", antialias=True,
                                   align_corners=False)[0].clamp(0, 1))
        out_m.append(F.interpolate(m[None], (size, size), mode="bilinear", antialias=True,
                                   align_corners=False)[0].clamp(0, 1))
        out_s.append(None if s is None else F.interpolate(s[None, None].float(), (size, size),
                                                          mode="nearest")[0, 0].long())
    return out_i, out_m, out_s, Ks


def collate_views(batch: list[dict]) -> dict:
    """Batch samples with different view counts: pads to the largest V and adds ``view_valid`` [B, V]."""
    v_max = max(len(b["views"]) for b in batch)
    out: dict = {"subject": [b["subject"] for b in batch], "kind": [b["kind"] for b in batch],
                 "views": [b["views"] for b in batch]}
    valid = torch.zeros(len(batch), v_max, dtype=torch.bool)
    for i, b in enumerate(batch):
        valid[i, : len(b["views"])] = True
    out["view_valid"] = valid
    keys = ["images", "masks", "has_mask", "viewmats", "Ks"]
    if all("segmentation" in b for b in batch):
        keys.append("segmentation")
    for key in keys:
        items = []
        for b in batch:
            t = b[key]
            pad = v_max - t.shape[0]
            if pad:
                fill = torch.eye(t.shape[-1]).expand(pad, *t.shape[1:]) if key in ("viewmats", "Ks") else \
                    torch.zeros(pad, *t.shape[1:], dtype=t.dtype)
                t = torch.cat([t, fill.to(t.dtype)])
            items.append(t)
        out[key] = torch.stack(items)
    return out
