"""The 2D-lifting baseline decoder (GAGAvatar / LAM style), a drop-in alternative to the template decoder.

``ModelConfig(decoder="lifting")`` builds PercHead with this decoder instead of the template one; the encoder,
the Gaussian appearance heads and SHP-CNN are the same code. Where PercHead's 3D tokens start from a head
template and only cross-attend to the image, here the image's own foreground patch tokens self-attend
(same width, heads and depth as the template decoder), and every foreground patch is turned into k x k
Gaussians (``ModelConfig.lifting_subdivision``: about the template's Gaussian count for a head covering half
of the crop's patches; tiny: k = 9, ~3,700 Gaussians for the synthetic test heads vs the template's 4,096)
that are *lifted along the camera rays of their pixels*:

* pixel ``(u, v)`` = the centre of the Gaussian's cell in the input crop; ray ``d = K^-1 (u, v, 1)``;
* depth ``z = z_head + tanh(Linear(F) * s_init) * lifting_depth * head_size``, where ``z_head`` is the depth
  of the head centre (the canonical origin) in the input camera;
* position in the camera ``p = d * z + tanh(Linear(F) * s_init) * s_max`` (a small 3D offset off the ray);
* then to the head frame with the input camera's pose, ``x = R^T (p - t)``; rotations likewise.

So the geometry of what the input view sees is pixel-aligned, and everything it does not see (the back of
the head, the far profile) must come from depth and offsets of visible pixels: the failure mode the paper
attributes to lifting methods at extreme views. The input camera must be known: the trainer and the
evaluation pass the input view's camera; without one, the project's standard input camera
(:func:`perchead.geometry.input_camera`, frontal at 1.5 m) is assumed, which is what
``perchead reconstruct`` produces for a photo. Padding tokens of a batch (fewer foreground patches than the
batch's largest) give Gaussians with opacity ~0 so they render nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.geometry import Gaussians, input_camera

from .config import ModelConfig
from .encoder import ImageTokens
from .heads import APPEARANCE, activate_appearance, appearance_bias
from .layers import SelfAttentionBlock, init_linear
from .template import HeadTemplate

_POSITION = 4  # depth along the ray, then a 3D offset in camera axes
_HIDDEN_LOGIT = -30.0  # opacity logit of padding Gaussians: sigmoid = 1e-13, below any rasterizer threshold


class LiftingDecoder(nn.Module):
    """Foreground patch tokens -> self-attention (pre-norm ViT blocks, padding masked) -> [B, M, width]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.f2d_width, cfg.width)
        # A position per patch of the grid, so the decoder knows where each (foreground-only) token sits.
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patch_grid**2, cfg.width))
        self.layers = nn.ModuleList(SelfAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.apply(init_linear)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, image_tokens: ImageTokens) -> Tensor:
        index = image_tokens.patch_index
        pos = torch.gather(self.pos_embed.expand(index.shape[0], -1, -1), 1,
                           index[..., None].expand(-1, -1, self.pos_embed.shape[-1]))
        x = self.proj(image_tokens.tokens) + pos
        for layer in self.layers:
            x = layer(x, key_mask=image_tokens.valid)
        return self.norm(x)


class LiftingHeads(nn.Module):
    """Per patch token: Linear -> PixelShuffle(k) -> GELU -> Linear to depth, offset and appearance."""

    def __init__(self, cfg: ModelConfig, template: HeadTemplate) -> None:
        super().__init__()
        self.cfg = cfg
        k, c = cfg.lifting_subdivision, cfg.gaussian_latent
        self.k = k
        self.expand = nn.Linear(cfg.width, k * k * c)
        self.shuffle = nn.PixelShuffle(k)
        self.out = nn.Linear(c, _POSITION + sum(APPEARANCE))
        self.apply(init_linear)
        # Bounds in metres from the template's head size; buffers, so a checkpoint keeps its own.
        self.register_buffer("s_max_m", torch.tensor(cfg.s_max * template.head_size()))
        self.register_buffer("depth_range_m", torch.tensor(cfg.lifting_depth * template.head_size()))
        with torch.no_grad():
            # Same initial scale, rotation, opacity and colour as the template heads.
            self.out.bias.copy_(torch.cat([torch.zeros(_POSITION), appearance_bias(cfg, template.point_spacing())]))

    def pixels(self, patch_index: Tensor) -> Tensor:
        """[B, M] patch indices -> [B, M * k * k, 2] (u, v) centres of the Gaussians' cells in input-crop
        pixels (pixel i spans [i, i + 1]; the padding to whole patches is removed)."""
        cfg, k = self.cfg, self.k
        p, g = cfg.patch_size, cfg.patch_grid
        lo = cfg.patch_padding[0]
        sub = (torch.arange(k, device=patch_index.device, dtype=torch.float32) + 0.5) * (p / k)
        row = (patch_index // g).float()[..., None, None]
        col = (patch_index % g).float()[..., None, None]
        v = (row * p + sub[:, None] - lo).expand(*patch_index.shape, k, k)
        u = (col * p + sub[None, :] - lo).expand(*patch_index.shape, k, k)
        return torch.stack([u, v], dim=-1).flatten(1, 3)

    def forward(self, features: Tensor, image_tokens: ImageTokens, viewmats: Tensor, Ks: Tensor) -> Gaussians:
        """features [B, M, W], the encoder's tokens (patch indices, padding), the input cameras
        (world-to-camera [B, 4, 4], intrinsics [B, 3, 3] for the input crop) -> Gaussians [B, M * k * k]."""
        cfg, k = self.cfg, self.k
        b, m, _ = features.shape
        x = self.shuffle(self.expand(features).reshape(b * m, -1, 1, 1))  # [B*M, C, k, k]
        latents = F.gelu(x).permute(0, 2, 3, 1).reshape(b, m * k * k, -1)  # patch-major, then row, column
        raw = self.out(latents)
        d_depth, d_offset, appearance = raw.split((1, 3, sum(APPEARANCE)), dim=-1)

        uv = self.pixels(image_tokens.patch_index).to(raw.dtype)
        ones = torch.ones_like(uv[..., :1])
        rays = torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(Ks.to(raw.dtype)).transpose(-1, -2)  # z = 1
        rot, trans = viewmats[:, :3, :3].to(raw.dtype), viewmats[:, :3, 3].to(raw.dtype)
        z_head = trans[:, 2:3]  # depth of the canonical origin (the head centre) in each input camera
        depth = z_head + torch.tanh(d_depth[..., 0] * cfg.s_init) * self.depth_range_m
        in_camera = rays * depth[..., None] + torch.tanh(d_offset * cfg.s_init) * self.s_max_m
        means = (in_camera - trans[:, None]) @ rot  # R^T (p - t), with points as rows

        log_scales, quats, opacity_logits, sh = activate_appearance(appearance, cfg)
        quats = quat_multiply(matrix_to_quat(rot.transpose(-1, -2))[:, None], quats)  # camera -> head frame
        valid = image_tokens.valid[..., None].expand(b, m, k * k).reshape(b, m * k * k)
        opacity_logits = torch.where(valid, opacity_logits, torch.full_like(opacity_logits, _HIDDEN_LOGIT))
        return Gaussians(means, log_scales, quats, opacity_logits, sh)


def resolve_cameras(cfg: ModelConfig, camera: tuple[Tensor, Tensor] | None, batch: int,
                    device: torch.device) -> tuple[Tensor, Tensor]:
    """The input cameras ([B, 4, 4], [B, 3, 3]) of a lifting model: ``camera`` as given (unbatched ones are
    shared by the batch), or the standard input camera at the model's input size."""
    if camera is None:
        cam = input_camera(cfg.image_size)
        viewmats, Ks = cam.viewmats, cam.Ks
    else:
        viewmats, Ks = camera
    viewmats = torch.as_tensor(viewmats, dtype=torch.float32, device=device)
    Ks = torch.as_tensor(Ks, dtype=torch.float32, device=device)
    viewmats = viewmats.expand(batch, 4, 4) if viewmats.shape in ((4, 4), (1, 4, 4)) else viewmats
    Ks = Ks.expand(batch, 3, 3) if Ks.shape in ((3, 3), (1, 3, 3)) else Ks
    if viewmats.shape != (batch, 4, 4) or Ks.shape != (batch, 3, 3):
        raise ValueError(f"the input camera must be (world-to-camera [B, 4, 4], intrinsics [B, 3, 3]) for a batch "
                         f"of {batch}; got {tuple(viewmats.shape)} and {tuple(Ks.shape)}")
    return viewmats, Ks


def batch_input_camera(cfg: ModelConfig, viewmats: Tensor, Ks: Tensor,
                       render_size: int) -> tuple[Tensor, Tensor] | None:
    """The input camera of a training / evaluation batch for a lifting model (None for the template
    decoder, which infers the pose from the image): view 0 of ``viewmats`` [B, V, 4, 4] / ``Ks`` [B, V, 3, 3]
    (the input view, when the input view is supervised), intrinsics rescaled from the render size to the
    model's input size, as :func:`perchead.train.data.collate` scales them."""
    if cfg.decoder != "lifting":
        return None
    K = Ks[:, 0].clone()
    K[:, :2] *= cfg.image_size / render_size
    return viewmats[:, 0], K


# -- rotations ------------------------------------------------------------------------------------------------
def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of wxyz quaternions (rotation ``a`` after ``b``), broadcasting."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def matrix_to_quat(m: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit wxyz quaternions (w >= 0). Of the four algebraically equal
    formulas the one with the largest denominator is used, so it is accurate for every rotation."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates_abs = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                                  1 - m00 - m11 + m22], dim=-1).clamp_min(0).sqrt()  # 2|w|, 2|x|, 2|y|, 2|z|
    rows = torch.stack([
        torch.stack([candidates_abs[..., 0] ** 2, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], dim=-1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], candidates_abs[..., 1] ** 2, m[..., 1, 0] + m[..., 0, 1],
                     m[..., 0, 2] + m[..., 2, 0]], dim=-1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], candidates_abs[..., 2] ** 2,
                     m[..., 2, 1] + m[..., 1, 2]], dim=-1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2],
                     candidates_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)  # row i = 4 * q_i * q (each candidate formula, scaled)
    best = candidates_abs.argmax(dim=-1)
    q = torch.gather(rows, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


__all__ = ["LiftingDecoder", "LiftingHeads", "batch_input_camera", "matrix_to_quat", "quat_multiply",
           "resolve_cameras"]
