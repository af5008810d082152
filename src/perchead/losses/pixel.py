"""Pixel-space ablation losses of the paper's Table 2 (L1, SSIM, LPIPS), and MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ImageLoss, Parts
from .foundation import freeze


class L1Loss(ImageLoss):
    """Mean absolute difference over channels and pixels, per sample."""

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        return (pred - target.detach()).abs().flatten(1).mean(dim=1), {}


class MSELoss(ImageLoss):
    """Mean squared difference over channels and pixels, per sample: the loss whose minimum is the best PSNR.

    Not in the paper. SHP-CNN trained with L1 + SSIM lowered the PSNR of the demo's renders, with MSE alone their
    SSIM; the demo's sharpen stage uses MSE + 0.3 (1 - SSIM) (the "pixel" loss's weights; docs/demo_checkpoint.md).
    """

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        return (pred - target.detach()).square().flatten(1).mean(dim=1), {}


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (coords / sigma) ** 2)
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
    return_map: bool = False,
) -> torch.Tensor:
    """Per-sample SSIM (Wang et al. 2004) with a Gaussian window, mean over channels and valid pixels.

    Equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)``: the window is 11 taps (skimage truncates
    at 3.5 sigma), and only positions where the whole window lies inside the image are averaged.
    ``return_map=True`` returns that SSIM map instead, [B, C, H - window_size + 1, W - window_size + 1]
    (e.g. for a masked mean).
    """
    h, w = pred.shape[-2:]
    if min(h, w) < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}x{window_size} pixels, got {h}x{w}")
    channels = pred.shape[1]
    g = gaussian_window(window_size, sigma, pred.device, torch.float32)
    kernel_h = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    kernel_v = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian, "valid" region only
        return F.conv2d(F.conv2d(x, kernel_h, groups=channels), kernel_v, groups=channels)

    x, y = pred.float(), target.float()
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map if return_map else ssim_map.flatten(1).mean(dim=1)


class SSIMLoss(ImageLoss):
    """1 - SSIM (Gaussian window 11, sigma 1.5, data range 1), per sample."""

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        return 1.0 - ssim(pred, target.detach()), {}


class LPIPSLoss(ImageLoss):
    """LPIPS (v0.1) through the ``lpips`` package, which needs torchvision; inputs mapped to [-1, 1]."""

    frozen = ("net",)

    def __init__(self, net: str = "alex"):
        super().__init__()
        try:
            import lpips
        except ImportError as exc:
            raise RuntimeError(
                "the 'lpips' ablation loss needs the `lpips` package and torchvision, which are not "
                f"installed ({exc}). Install them where torchvision works "
                "(`pip install lpips torchvision`), or pick another loss: perceptual, dino, sam, sharpen, "
                "l1, ssim, pixel."
            ) from exc
        try:
            self.net = freeze(lpips.LPIPS(net=net, version="0.1", verbose=False))
        except Exception as exc:  # torchvision backbone weights missing offline, unknown net, ...
            raise RuntimeError(f"could not build LPIPS(net={net!r}): {exc}") from exc

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        value = self.net(pred * 2.0 - 1.0, target.detach() * 2.0 - 1.0)
        return value.flatten(1).mean(dim=1), {}
