"""The paper's training loss (L = 1.0 * L_DINO + 1.0 * L_SAM), its ablations, and selection by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import ImageLoss, WeightedSum
from .dino import DinoLoss, DinoLossConfig, SharpenLoss, sharpen_loss_config
from .foundation import Sam2ImageEncoder
from .pixel import L1Loss, LPIPSLoss, MSELoss, SSIMLoss
from .sam import SamLoss, SamLossConfig


class PerceptualLoss(WeightedSum):
    """w_D * DinoLoss + w_S * SamLoss; ``forward(..., return_parts=True)`` also gives "dino" and "sam"."""

    def __init__(
        self,
        dino: DinoLossConfig | DinoLoss | None = None,
        sam: SamLossConfig | SamLoss | None = None,
        dino_weight: float = 1.0,
        sam_weight: float = 1.0,
    ):
        dino_loss = dino if isinstance(dino, DinoLoss) else DinoLoss(dino)
        sam_loss = sam if isinstance(sam, SamLoss) else SamLoss(sam)
        super().__init__({"dino": (dino_weight, dino_loss), "sam": (sam_weight, sam_loss)})


@dataclass
class LossConfig:
    """Everything ``build_loss`` needs besides the loss name."""

    dino: DinoLossConfig = field(default_factory=DinoLossConfig)
    sam: SamLossConfig = field(default_factory=SamLossConfig)
    sharpen: DinoLossConfig = field(default_factory=sharpen_loss_config)
    dino_weight: float = 1.0
    sam_weight: float = 1.0
    l1_weight: float = 0.8
    """weight of L1 in the "pixel" loss (3DGS convention: 0.8 L1 + 0.2 D-SSIM)"""
    ssim_weight: float = 0.2
    """weight of 1 - SSIM in the "pixel" loss"""
    mse_weight: float = 0.0
    """weight of the mean squared error in the "pixel" loss (0: the 3DGS loss; the CPU demo's SHP-CNN stage uses
    1.0 MSE + 0.3 (1 - SSIM) with no L1, see docs/demo_checkpoint.md)"""
    lpips_net: str = "alex"

    def pixel_weights_problem(self) -> str | None:
        """Why the "pixel" loss cannot be built from these weights, or None."""
        weights = {"l1_weight": self.l1_weight, "ssim_weight": self.ssim_weight, "mse_weight": self.mse_weight}
        if min(weights.values()) < 0 or max(weights.values()) <= 0:
            return ("the pixel loss needs weights >= 0, at least one > 0; got "
                    + ", ".join(f"{name} {value}" for name, value in weights.items()))
        return None


LOSS_NAMES: dict[str, str] = {
    "perceptual": "paper: 1.0 * DINOv2 (layers 8, 11) + 1.0 * SAM 2.1 (the default)",
    "dino": "ablation: DINOv2 loss only",
    "sam": "ablation: SAM 2.1 loss only",
    "sharpen": "SHP-CNN stage: DINOv2 layer-8 CLS token only",
    "l1": "ablation: L1",
    "ssim": "ablation: 1 - SSIM",
    "lpips": "ablation: LPIPS (needs the lpips package and torchvision)",
    "pixel": "l1_weight * L1 + ssim_weight * (1 - SSIM) + mse_weight * MSE (0.8, 0.2, 0); no pretrained weights, "
             "for CPU demos",
}


def build_loss(
    name: str,
    config: LossConfig | None = None,
    *,
    dino_model: nn.Module | None = None,
    sam_encoder: Sam2ImageEncoder | None = None,
) -> ImageLoss:
    """Build the loss called ``name`` (one of ``LOSS_NAMES``).

    ``dino_model`` / ``sam_encoder`` reuse already loaded frozen networks (e.g. one DINOv2 for both the main
    and the SHP-CNN loss); otherwise the checkpoints named in ``config`` are loaded.
    """
    cfg = config or LossConfig()
    if name == "perceptual":
        return PerceptualLoss(
            DinoLoss(cfg.dino, dino_model), SamLoss(cfg.sam, sam_encoder), cfg.dino_weight, cfg.sam_weight
        )
    if name == "dino":
        return DinoLoss(cfg.dino, dino_model)
    if name == "sam":
        return SamLoss(cfg.sam, sam_encoder)
    if name == "sharpen":
        return SharpenLoss(cfg.sharpen, dino_model)
    if name == "l1":
        return L1Loss()
    if name == "ssim":
        return SSIMLoss()
    if name == "lpips":
        return LPIPSLoss(cfg.lpips_net)
    if name == "pixel":
        problem = cfg.pixel_weights_problem()
        if problem:
            raise ValueError(problem)
        terms = {"l1": (cfg.l1_weight, L1Loss()), "ssim": (cfg.ssim_weight, SSIMLoss()),
                 "mse": (cfg.mse_weight, MSELoss())}
        return WeightedSum({key: term for key, term in terms.items() if term[0] > 0})
    choices = ", ".join(f"{key} ({desc})" for key, desc in LOSS_NAMES.items())
    raise ValueError(f"unknown loss {name!r}; choose one of: {choices}")
