"""A small CNN that reads the input camera's yaw and pitch from the matted photo (``assets/pose_net.safetensors``).

Face Mesh + PnP is accurate on near-frontal faces, but beyond ~30 degrees of yaw Face Mesh regresses a less turned
face (35-48 degrees at a true 60) or finds none, and the network's prediction from a turned photo is not
accurate enough to render-and-compare against. Synthetic heads give exact yaws for free, so this net is trained
on train-split renders of the project's generator from every side (``scripts/train_pose_net.py``) and weighed
against the landmarks by :func:`perchead.inference.pose.fuse`: alone where no face is found or the head is
turned, in an average near frontal.

Input: the matted photo on white and its alpha at :attr:`PoseNetConfig.size` px (4 channels). Output: (sin yaw,
cos yaw, pitch / 30 degrees). The prediction is averaged with the mirrored photo's (yaw negated), which removes
a left/right bias that a net trained with mirror augmentation can still have.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .pose import resize_to

POSE_NET = Path(__file__).resolve().parents[1] / "assets" / "pose_net.safetensors"
FORMAT = "perchead-pose-net"
PITCH_SCALE_DEG = 30.0


@dataclass(frozen=True)
class PoseNetConfig:
    size: int = 64
    """input pixels (the matted crop is resized to this, antialiased)"""
    width: int = 32
    """channels of the first stage; each of the 4 stride-2 stages doubles them, up to 4x"""
    hidden: int = 256


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.SiLU())


class PoseNet(nn.Module):
    """Four stride-2 stages and a fully connected head on the 4 x 4 map: where the face lies inside the
    silhouette is what tells the yaw, so the features are not pooled away."""

    def __init__(self, config: PoseNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PoseNetConfig()
        if cfg.size % 16:
            raise ValueError(f"PoseNetConfig.size must be a multiple of 16, got {cfg.size}")
        w = cfg.width
        chans = [w, w, 2 * w, 4 * w, 4 * w]
        layers = [_block(4, chans[0], 1)]
        for cin, cout in itertools.pairwise(chans):
            layers += [_block(cin, cout, 2), _block(cout, cout, 1)]
        self.features = nn.Sequential(*layers)
        cells = (cfg.size // 16) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * cells, cfg.hidden), nn.SiLU(),
                                  nn.Linear(cfg.hidden, 3))

    def forward(self, x: Tensor) -> Tensor:
        """[B, 4, S, S] (:func:`pose_input`) -> [B, 3]: sin yaw, cos yaw, pitch / 30 degrees."""
        return self.head(self.features(x * 2.0 - 1.0))

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[B, 4, S, S] -> (yaw, pitch) in degrees, each [B], averaged with the mirrored input's."""
        out = self(torch.cat([x, x.flip(-1)]))
        a, b = out.chunk(2)
        # Mirroring negates the yaw (sin) and keeps the pitch.
        sin, cos = a[:, 0] - b[:, 0], a[:, 1] + b[:, 1]
        yaw = torch.rad2deg(torch.atan2(sin, cos))
        pitch = (a[:, 2] + b[:, 2]) * 0.5 * PITCH_SCALE_DEG
        return yaw, pitch

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        from safetensors.torch import save_file

        from ..io.atomic import atomic_output

        meta = {"format": FORMAT, "config": json.dumps(asdict(self.config)), **(metadata or {})}
        with atomic_output(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={k: str(v) for k, v in meta.items()})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path = POSE_NET) -> PoseNet:
        from ..model.perchead_model import read_weights

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pose net weights {path} are missing from this installation; retrain them "
                                    "with `python scripts/train_pose_net.py`")
        tensors, meta = read_weights(path, FORMAT)
        if "format" not in meta:  # read_weights lets untagged files through; the pose net's are always tagged
            raise ValueError(f"{path} is not a perchead pose net (its metadata names no format)")
        net = cls(PoseNetConfig(**json.loads(meta["config"])))
        net.load_state_dict(tensors)
        return net.eval()


@functools.cache
def bundled_pose_net() -> PoseNet:
    return PoseNet.load(POSE_NET)


def pose_input(image: Tensor, mask: Tensor, size: int) -> Tensor:
    """[..., 3, H, W] photo on white + [..., 1, H, W] alpha -> [..., 4, size, size] (antialiased)."""
    return resize_to(torch.cat([image, mask], dim=-3).float(), size)


def pose_targets(yaw_deg: Tensor, pitch_deg: Tensor) -> Tensor:
    """[B] angles -> [B, 3] what :class:`PoseNet` regresses."""
    yaw = torch.deg2rad(yaw_deg)
    return torch.stack([torch.sin(yaw), torch.cos(yaw), pitch_deg / PITCH_SCALE_DEG], dim=-1)


def yaw_error(a_deg: Tensor | float, b_deg: Tensor | float) -> Tensor:
    """Absolute angular difference in degrees, wrapped to [0, 180]."""
    d = torch.as_tensor(a_deg, dtype=torch.float32) - torch.as_tensor(b_deg, dtype=torch.float32)
    return (d + 180.0).remainder(360.0).sub(180.0).abs()


def pose_from_net(image: Tensor, mask: Tensor, net: PoseNet | None = None) -> tuple[float, float]:
    """(yaw, pitch) in degrees of the camera that saw ``image`` [3, S, S] (on white) with ``mask`` [1, S, S]."""
    net = net or bundled_pose_net()
    yaw, pitch = net.predict(pose_input(image, mask, net.config.size)[None])
    return float(yaw[0]), float(pitch[0])


__all__ = ["FORMAT", "POSE_NET", "PoseNet", "PoseNetConfig",
           "bundled_pose_net", "pose_from_net", "pose_input", "pose_targets", "yaw_error"]
