"""SHP-CNN: a shallow residual CNN that sharpens the rasterised image.

The last convolution is zero-initialised, so the network starts as the identity and stage 2 of training
(3D part frozen, DINOv2 layer-8 CLS loss; docs/design.md section 2) only has to learn a correction.
"""

from __future__ import annotations

from torch import Tensor, nn


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ShpCnn(nn.Module):
    def __init__(self, channels: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(_ResBlock(channels) for _ in range(blocks)))
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, rgb: Tensor) -> Tensor:
        """[B, 3, H, W] rendered image -> sharpened image, same shape (not clamped: the loss sees it raw)."""
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"SHP-CNN expects [B, 3, H, W] images; got {tuple(rgb.shape)} "
                             "(the renderer returns [C, H, W, 3]: permute(0, 3, 1, 2) first)")
        return rgb + self.tail(self.blocks(self.head(rgb)))
