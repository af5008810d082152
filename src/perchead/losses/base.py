"""What every image loss shares: the (pred, target) contract, per-sample reduction, weighted sums.

Every loss takes ``pred`` and ``target`` as ``[B, 3, H, W]`` float tensors with values in [0, 1] and returns a
scalar: the mean over the batch of a per-sample value. Losses are built per sample first (and only then
averaged) so that a sample's loss never depends on what else is in the batch: none of them has batch
statistics, and the frozen networks run in eval mode.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Parts = dict[str, torch.Tensor]


def check_image_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise a ValueError naming what is wrong with a (pred, target) pair of image batches."""
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B,3,H,W] in [0,1], got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must have shape [B,3,H,W] (channels first, RGB), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(
                f"{name} must be a float tensor in [0,1], got dtype {x.dtype}; divide uint8 by 255"
            )
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize like torchvision's tensor ``Resize`` (antialiased when shrinking, identity at equal size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def resize_short_side(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """torchvision ``Resize(int)``: the shorter side becomes ``size``, the aspect ratio is kept."""
    h, w = x.shape[-2:]
    if h <= w:
        return resize(x, (size, int(size * w / h)), mode)
    return resize(x, (int(size * h / w), size), mode)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``CenterCrop(size)`` for images at least ``size`` pixels on each side."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {h}x{w} image")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def cosine_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """1 - cosine similarity along ``dim`` (both sides L2-normalised), computed in float32."""
    a = F.normalize(a.float(), dim=dim)
    b = F.normalize(b.float(), dim=dim)
    return 1.0 - (a * b).sum(dim=dim)


def bf16_autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA only: CPU bf16 matmuls are slower than fp32 on most CPUs."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_block(block: nn.Module, hidden: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Run one frozen block, recomputing it in backward instead of storing its activations if asked.

    transformers' own checkpointing only switches on in train mode; the frozen nets stay in eval mode, so
    the loss checkpoints block by block itself. Only worth it on the branch that carries gradients.
    """
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, hidden, use_reentrant=False)
    return block(hidden)


class ImageLoss(nn.Module):
    """Base class: subclasses implement ``compute`` returning per-sample values ([B]) and named parts."""

    #: frozen networks that must stay in eval mode whatever ``.train()`` is called with
    frozen: tuple[str, ...] = ()

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        raise NotImplementedError

    def per_sample(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each sample, shape [B]; ``forward`` is its mean."""
        check_image_pair(pred, target)
        return self.compute(pred, target)[0]

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, return_parts: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Parts]:
        """Scalar loss; with ``return_parts`` also a dict of detached batch-mean parts for logging."""
        check_image_pair(pred, target)
        total, parts = self.compute(pred, target)
        loss = total.mean()
        if return_parts:
            return loss, {name: value.detach().mean() for name, value in parts.items()}
        return loss

    def train(self, mode: bool = True) -> ImageLoss:
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self


class WeightedSum(ImageLoss):
    """sum_i w_i * loss_i; parts hold each term's unweighted value (and the terms' own parts, prefixed)."""

    def __init__(self, terms: dict[str, tuple[float, ImageLoss]]):
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one term")
        self.weights = {name: float(weight) for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in terms.items()})

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        total = None
        parts: Parts = {}
        for name, loss in self.terms.items():
            value, sub_parts = loss.compute(pred, target)
            parts[name] = value
            parts.update({f"{name}/{key}": v for key, v in sub_parts.items() if key != name})
            term = self.weights[name] * value
            total = term if total is None else total + term
        return total, parts
