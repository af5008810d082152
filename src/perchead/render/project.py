"""EWA projection of 3D Gaussians to screen-space 2D Gaussians (plain PyTorch, autograd).

Every backend uses this maths; they differ in how they composite the projected 2D Gaussians into pixels. This
function is its definition (the reference backend and cameras that need gradients use it); the cpu backend runs
the same maths as a numba kernel with a hand-written backward (:mod:`perchead.render.project_cpu`), tested
against it, because at small image sizes these many small PyTorch ops cost more than the compositing. The
maths follows 3DGS / gsplat: the local affine (Jacobian) approximation of the perspective map, with the
camera-space position clamped to 1.3x the field of view before the Jacobian is taken, and a 0.3 px low-pass
added to the 2D covariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Mahalanobis radius at which a Gaussian stops contributing: the "3-sigma extent". A pixel counts iff
# 0.5 * d^T conic d <= SIGMA_CUTOFF, so the rule does not depend on tiles or bounding boxes.
EXTENT_SIGMAS = 3.0
SIGMA_CUTOFF = 0.5 * EXTENT_SIGMAS**2
ALPHA_MIN = 1.0 / 255.0  # contributions fainter than this are skipped
ALPHA_MAX = 0.99  # a single Gaussian never makes a pixel fully opaque
T_MIN = 1e-4  # stop compositing once transmittance would fall to this


@dataclass
class Projected:
    """Screen-space Gaussians of one camera; invalid ones (culled) must be ignored by backends."""

    means2d: Tensor  # [N, 2] pixel coordinates
    conics: Tensor  # [N, 3] inverse 2D covariance (a, b, c) = [[a, b], [b, c]]
    depths: Tensor  # [N] camera-space z, used for sorting and the depth output
    extents: Tensor  # [N, 2] half-widths of the axis-aligned box of the 3-sigma ellipse (pixels, no grad)
    valid: Tensor  # [N] bool


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices of (unnormalised) wxyz quaternions [..., 4]."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*quats.shape[:-1], 3, 3)


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariance R S S^T R^T from (unnormalised) wxyz quaternions and scales."""
    m = quat_to_rotmat(quats) * scales.unsqueeze(-2)
    return m @ m.transpose(-1, -2)


def project(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
            near: float = 0.01, far: float = 1e10, eps2d: float = 0.3) -> Projected:
    """Project N Gaussians through one camera (viewmat [4,4], K [3,3])."""
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    cam = means @ rot.T + trans
    x, y, z = cam.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    in_depth = (z > near) & (z < far)
    # Behind-the-camera Gaussians are culled below; give them a harmless depth so no NaN/inf enters autograd.
    zs = torch.where(in_depth, z, torch.ones_like(z))

    # Clamp the point used for the Jacobian to 1.3x the frustum (as 3DGS/gsplat) so that Gaussians far
    # outside the view do not get absurd screen-space footprints.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_x_neg), lim_x_pos)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(zs)
    jac = torch.stack([
        fx / zs, zero, -fx * tx / (zs * zs),
        zero, fy / zs, -fy * ty / (zs * zs),
    ], dim=-1).reshape(-1, 2, 3)

    cov_cam = rot @ quat_scale_to_covar(quats, scales) @ rot.T
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    ok_det = det > 1e-12
    det_safe = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    with torch.no_grad():
        # The ellipse 0.5 d^T conic d = SIGMA_CUTOFF spans exactly +-EXTENT_SIGMAS*sqrt(cov_xx) in x.
        extents = EXTENT_SIGMAS * torch.stack([a, c], dim=-1).clamp_min(0).sqrt()
        lo, hi = means2d - extents, means2d + extents
        on_screen = (hi[:, 0] > 0) & (lo[:, 0] < width) & (hi[:, 1] > 0) & (lo[:, 1] < height)
        valid = in_depth & ok_det & on_screen & torch.isfinite(means2d).all(-1)
    return Projected(means2d, conics, z, extents, valid)
