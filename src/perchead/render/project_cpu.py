"""The EWA projection of :mod:`perchead.render.project` as one numba kernel with a hand-written backward.

Why: on the CPU at 256 px the PyTorch projection and its autograd backward (dozens of small ops on [N, 3, 3]
tensors, each a pass over memory) cost more than the compositing itself (docs/render.md). Here each Gaussian
is projected through every camera of the call in registers, in float64 whatever the input dtype, and the
backward recomputes the forward's intermediates instead of storing them.

:func:`perchead.render.project.project` stays the definition: the cpu backend's equivalence tests (values and
gradients against the reference backend, finite differences) run through this kernel, and
``tests/test_render_project_cpu.py`` compares it with the PyTorch projection term by term. It has no
gradient for the cameras: a call whose viewmats or intrinsics require grad takes the PyTorch path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .cpu import _FAST
from .project import EXTENT_SIGMAS, Projected


@njit(inline="always", cache=True)
def _rotmat(qw, qx, qy, qz):
    """Rotation matrix of a unit wxyz quaternion, as 9 scalars (row-major)."""
    return (1.0 - 2.0 * (qy * qy + qz * qz), 2.0 * (qx * qy - qw * qz), 2.0 * (qx * qz + qw * qy),
            2.0 * (qx * qy + qw * qz), 1.0 - 2.0 * (qx * qx + qz * qz), 2.0 * (qy * qz - qw * qx),
            2.0 * (qx * qz - qw * qy), 2.0 * (qy * qz + qw * qx), 1.0 - 2.0 * (qx * qx + qy * qy))


@njit(inline="always", cache=True)
def _unit_quat(quats, i):
    """The normalised quaternion of row i and its norm (F.normalize's 1e-12 floor)."""
    w, x, y, z = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
    norm = max(math.sqrt(w * w + x * x + y * y + z * z), 1e-12)
    return w / norm, x / norm, y / norm, z / norm, norm


@njit(inline="always", cache=True)
def _covar3d(r, scales, i):
    """Upper triangle (xx, xy, xz, yy, yz, zz) of R S S R^T of row i, R the 9 scalars of :func:`_rotmat`."""
    sx, sy, sz = scales[i, 0], scales[i, 1], scales[i, 2]
    # M = R diag(s); covariance = M M^T
    m00, m01, m02 = r[0] * sx, r[1] * sy, r[2] * sz
    m10, m11, m12 = r[3] * sx, r[4] * sy, r[5] * sz
    m20, m21, m22 = r[6] * sx, r[7] * sy, r[8] * sz
    return (m00 * m00 + m01 * m01 + m02 * m02, m00 * m10 + m01 * m11 + m02 * m12,
            m00 * m20 + m01 * m21 + m02 * m22, m10 * m10 + m11 * m11 + m12 * m12,
            m10 * m20 + m11 * m21 + m12 * m22, m20 * m20 + m21 * m21 + m22 * m22)


@njit(inline="always", cache=True)
def _camera_terms(means, viewmats, Ks, i, c, width, height, near, far):
    """Camera-space position of row i in camera c, its safe depth, the clamped (tx, ty) and which clamps bit."""
    mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
    v = viewmats[c]
    x = v[0, 0] * mx + v[0, 1] * my + v[0, 2] * mz + v[0, 3]
    y = v[1, 0] * mx + v[1, 1] * my + v[1, 2] * mz + v[1, 3]
    z = v[2, 0] * mx + v[2, 1] * my + v[2, 2] * mz + v[2, 3]
    in_depth = z > near and z < far
    zs = z if in_depth else 1.0
    fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    ux, uy = x / zs, y / zs
    # Which side clamps: 0 none, else the clamped value (the gradient then flows through z, not x).
    clamp_x = ux < -lim_xn or ux > lim_xp
    clamp_y = uy < -lim_yn or uy > lim_yp
    tx = zs * min(max(ux, -lim_xn), lim_xp)
    ty = zs * min(max(uy, -lim_yn), lim_yp)
    return x, y, z, zs, in_depth, tx, ty, clamp_x, clamp_y, fx, fy, cx, cy


# Inlined into the prange loops, where a plain call per Gaussian and camera took about a quarter of the projection
# kernels' time: its result is one flat tuple, since numba's parfor array analysis rejects nested tuples once
# inlined.
@njit(inline="always", cache=True)
def _covar2d(v, fx, fy, zs, tx, ty, s, eps2d):
    """The 2D covariance T S T^T + eps2d I with T = J R (J the EWA Jacobian at the clamped point, R the view
    rotation of ``v``, S the upper triangle ``s`` of the 3D covariance). Returns T's six entries (row 0, row 1),
    S T^T's six (column 0, column 1), and the covariance's a, b, c; the backward needs T and S T^T too."""
    s00, s01, s02, s11, s12, s22 = s
    # J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]
    j00, j02 = fx / zs, -fx * tx / (zs * zs)
    j11, j12 = fy / zs, -fy * ty / (zs * zs)
    t00 = j00 * v[0, 0] + j02 * v[2, 0]
    t01 = j00 * v[0, 1] + j02 * v[2, 1]
    t02 = j00 * v[0, 2] + j02 * v[2, 2]
    t10 = j11 * v[1, 0] + j12 * v[2, 0]
    t11 = j11 * v[1, 1] + j12 * v[2, 1]
    t12 = j11 * v[1, 2] + j12 * v[2, 2]
    u00 = s00 * t00 + s01 * t01 + s02 * t02
    u10 = s01 * t00 + s11 * t01 + s12 * t02
    u20 = s02 * t00 + s12 * t01 + s22 * t02
    u01 = s00 * t10 + s01 * t11 + s02 * t12
    u11 = s01 * t10 + s11 * t11 + s12 * t12
    u21 = s02 * t10 + s12 * t11 + s22 * t12
    a = t00 * u00 + t01 * u10 + t02 * u20 + eps2d
    b = t00 * u01 + t01 * u11 + t02 * u21
    cc = t10 * u01 + t11 * u11 + t12 * u21 + eps2d
    return t00, t01, t02, t10, t11, t12, u00, u10, u20, u01, u11, u21, a, b, cc


@njit(parallel=True, fastmath=_FAST, cache=True)
def _project_fwd(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d, extent_sigmas,
                 means2d, conics, depths, extents, valid):
    n = means.shape[0]
    n_cams = viewmats.shape[0]
    for i in prange(n):
        qw, qx, qy, qz, _ = _unit_quat(quats, i)
        cov3 = _covar3d(_rotmat(qw, qx, qy, qz), scales, i)
        for c in range(n_cams):
            x, y, z, zs, in_depth, tx, ty, _, _, fx, fy, cx, cy = _camera_terms(
                means, viewmats, Ks, i, c, width, height, near, far)
            cov2 = _covar2d(viewmats[c], fx, fy, zs, tx, ty, cov3, eps2d)
            a, b, cc = cov2[12], cov2[13], cov2[14]
            det = a * cc - b * b
            ok_det = det > 1e-12
            det_safe = det if ok_det else 1.0
            conics[c, i, 0] = cc / det_safe
            conics[c, i, 1] = -b / det_safe
            conics[c, i, 2] = a / det_safe
            px, py = fx * x / zs + cx, fy * y / zs + cy
            means2d[c, i, 0], means2d[c, i, 1] = px, py
            depths[c, i] = z
            ex, ey = extent_sigmas * math.sqrt(max(a, 0.0)), extent_sigmas * math.sqrt(max(cc, 0.0))
            extents[c, i, 0], extents[c, i, 1] = ex, ey
            on_screen = px + ex > 0 and px - ex < width and py + ey > 0 and py - ey < height
            valid[c, i] = in_depth and ok_det and on_screen and math.isfinite(px) and math.isfinite(py)


@njit(parallel=True, fastmath=_FAST, cache=True)
def _project_bwd(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d,
                 g_means2d, g_conics, g_depths, out_means, out_quats, out_scales):
    n = means.shape[0]
    n_cams = viewmats.shape[0]
    for i in prange(n):
        qw, qx, qy, qz, qnorm = _unit_quat(quats, i)
        r = _rotmat(qw, qx, qy, qz)
        cov3 = _covar3d(r, scales, i)
        gm0, gm1, gm2 = 0.0, 0.0, 0.0
        # dL/dSigma accumulated over the cameras (full 3x3, symmetrised at the end)
        d00, d01, d02, d10, d11, d12, d20, d21, d22 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        for c in range(n_cams):
            x, y, z, zs, in_depth, tx, ty, clamp_x, clamp_y, fx, fy, cx, cy = _camera_terms(
                means, viewmats, Ks, i, c, width, height, near, far)
            v = viewmats[c]
            t00, t01, t02, t10, t11, t12, u00, u10, u20, u01, u11, u21, a, b, cc = _covar2d(
                v, fx, fy, zs, tx, ty, cov3, eps2d)
            det = a * cc - b * b
            # conic = (cc, -b, a) / det; a culled determinant took det_safe = 1, a constant
            ga, gb, gc = g_conics[c, i, 0], g_conics[c, i, 1], g_conics[c, i, 2]
            if det > 1e-12:
                inv = 1.0 / det
                s = (ga * cc - gb * b + gc * a) * inv * inv
                va = gc * inv - s * cc
                vb = -gb * inv + 2.0 * s * b
                vc = ga * inv - s * a
            else:
                va, vb, vc = gc, -gb, ga
            # a = T0 S T0^T, b = T0 S T1^T, cc = T1 S T1^T
            d00 += va * t00 * t00 + vb * t00 * t10 + vc * t10 * t10
            d01 += va * t00 * t01 + vb * t00 * t11 + vc * t10 * t11
            d02 += va * t00 * t02 + vb * t00 * t12 + vc * t10 * t12
            d10 += va * t01 * t00 + vb * t01 * t10 + vc * t11 * t10
            d11 += va * t01 * t01 + vb * t01 * t11 + vc * t11 * t11
            d12 += va * t01 * t02 + vb * t01 * t12 + vc * t11 * t12
            d20 += va * t02 * t00 + vb * t02 * t10 + vc * t12 * t10
            d21 += va * t02 * t01 + vb * t02 * t11 + vc * t12 * t11
            d22 += va * t02 * t02 + vb * t02 * t12 + vc * t12 * t12
            # dT0 = 2 va S T0 + vb S T1, dT1 = 2 vc S T1 + vb S T0  (S symmetric)
            dt00 = 2.0 * va * u00 + vb * u01
            dt01 = 2.0 * va * u10 + vb * u11
            dt02 = 2.0 * va * u20 + vb * u21
            dt10 = 2.0 * vc * u01 + vb * u00
            dt11 = 2.0 * vc * u11 + vb * u10
            dt12 = 2.0 * vc * u21 + vb * u20
            # T = J R: dJ = dT R^T (only J's non-zero entries matter)
            dj00 = dt00 * v[0, 0] + dt01 * v[0, 1] + dt02 * v[0, 2]
            dj02 = dt00 * v[2, 0] + dt01 * v[2, 1] + dt02 * v[2, 2]
            dj11 = dt10 * v[1, 0] + dt11 * v[1, 1] + dt12 * v[1, 2]
            dj12 = dt10 * v[2, 0] + dt11 * v[2, 1] + dt12 * v[2, 2]
            gx, gy, gz = 0.0, 0.0, 0.0
            if in_depth:  # zs is the constant 1 otherwise
                z2, z3 = zs * zs, zs * zs * zs
                gz += (-fx * dj00 - fy * dj11) / z2 + 2.0 * (fx * tx * dj02 + fy * ty * dj12) / z3
                gtx, gty = -fx * dj02 / z2, -fy * dj12 / z2
                # tx = zs * clamp(x / zs): x itself unclamped, zs * limit when clamped
                if clamp_x:
                    gz += gtx * tx / zs
                else:
                    gx += gtx
                if clamp_y:
                    gz += gty * ty / zs
                else:
                    gy += gty
                # means2d = (fx x / zs + cx, fy y / zs + cy)
                g2x, g2y = g_means2d[c, i, 0], g_means2d[c, i, 1]
                gx += g2x * fx / zs
                gy += g2y * fy / zs
                gz -= (g2x * fx * x + g2y * fy * y) / z2
            else:
                # tx = x and ty = y (zs = 1); J and means2d then depend on x and y only
                gtx, gty = -fx * dj02, -fy * dj12
                gx += gtx if not clamp_x else 0.0
                gy += gty if not clamp_y else 0.0
                gx += g_means2d[c, i, 0] * fx
                gy += g_means2d[c, i, 1] * fy
            gz += g_depths[c, i]
            # cam = R m + t
            gm0 += v[0, 0] * gx + v[1, 0] * gy + v[2, 0] * gz
            gm1 += v[0, 1] * gx + v[1, 1] * gy + v[2, 1] * gz
            gm2 += v[0, 2] * gx + v[1, 2] * gy + v[2, 2] * gz
        out_means[i, 0], out_means[i, 1], out_means[i, 2] = gm0, gm1, gm2
        # Sigma = M M^T with M = R diag(s): dM = (D + D^T) M
        e00, e01, e02 = d00 + d00, d01 + d10, d02 + d20
        e11, e12, e22 = d11 + d11, d12 + d21, d22 + d22
        sx, sy, sz = scales[i, 0], scales[i, 1], scales[i, 2]
        m00, m01, m02 = r[0] * sx, r[1] * sy, r[2] * sz
        m10, m11, m12 = r[3] * sx, r[4] * sy, r[5] * sz
        m20, m21, m22 = r[6] * sx, r[7] * sy, r[8] * sz
        dm00 = e00 * m00 + e01 * m10 + e02 * m20
        dm01 = e00 * m01 + e01 * m11 + e02 * m21
        dm02 = e00 * m02 + e01 * m12 + e02 * m22
        dm10 = e01 * m00 + e11 * m10 + e12 * m20
        dm11 = e01 * m01 + e11 * m11 + e12 * m21
        dm12 = e01 * m02 + e11 * m12 + e12 * m22
        dm20 = e02 * m00 + e12 * m10 + e22 * m20
        dm21 = e02 * m01 + e12 * m11 + e22 * m21
        dm22 = e02 * m02 + e12 * m12 + e22 * m22
        out_scales[i, 0] = dm00 * r[0] + dm10 * r[3] + dm20 * r[6]
        out_scales[i, 1] = dm01 * r[1] + dm11 * r[4] + dm21 * r[7]
        out_scales[i, 2] = dm02 * r[2] + dm12 * r[5] + dm22 * r[8]
        g00, g01, g02 = dm00 * sx, dm01 * sy, dm02 * sz
        g10, g11, g12 = dm10 * sx, dm11 * sy, dm12 * sz
        g20, g21, g22 = dm20 * sx, dm21 * sy, dm22 * sz
        hw = 2.0 * (-qz * g01 + qy * g02 + qz * g10 - qx * g12 - qy * g20 + qx * g21)
        hx = 2.0 * (qy * g01 + qz * g02 + qy * g10 - qw * g12 + qz * g20 + qw * g21) - 4.0 * qx * (g11 + g22)
        hy = 2.0 * (qx * g01 + qw * g02 + qx * g10 + qz * g12 - qw * g20 + qz * g21) - 4.0 * qy * (g00 + g22)
        hz = 2.0 * (-qw * g01 + qx * g02 + qw * g10 + qy * g12 + qx * g20 + qy * g21) - 4.0 * qz * (g00 + g11)
        # through the normalisation q / |q|
        dot = qw * hw + qx * hx + qy * hy + qz * hz
        out_quats[i, 0] = (hw - qw * dot) / qnorm
        out_quats[i, 1] = (hx - qx * dot) / qnorm
        out_quats[i, 2] = (hy - qy * dot) / qnorm
        out_quats[i, 3] = (hz - qz * dot) / qnorm


def _f64(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, width, height, near, far, eps2d):
        arrays = [_f64(t) for t in (means, quats, scales, viewmats, Ks)]
        n_cams, n = viewmats.shape[0], means.shape[0]
        means2d = np.empty((n_cams, n, 2))
        conics = np.empty((n_cams, n, 3))
        depths = np.empty((n_cams, n))
        extents = np.empty((n_cams, n, 2))
        valid = np.empty((n_cams, n), np.bool_)
        _project_fwd(*arrays, width, height, near, far, eps2d, EXTENT_SIGMAS, means2d, conics, depths, extents,
                     valid)
        ctx.arrays, ctx.args = arrays, (width, height, near, far, eps2d)
        ctx.dtype, ctx.device = means.dtype, means.device
        out = [torch.from_numpy(a).to(means) for a in (means2d, conics, depths, extents)]
        out.append(torch.from_numpy(valid).to(means.device))
        ctx.mark_non_differentiable(out[3], out[4])
        return tuple(out)

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, _g_extents, _g_valid):
        means, quats, scales, viewmats, Ks = ctx.arrays
        n_cams, n = viewmats.shape[0], means.shape[0]
        grads = [np.zeros(shape) if g is None else _f64(g) for g, shape in
                 ((g_means2d, (n_cams, n, 2)), (g_conics, (n_cams, n, 3)), (g_depths, (n_cams, n)))]
        out_means, out_quats, out_scales = np.empty_like(means), np.empty_like(quats), np.empty_like(scales)
        _project_bwd(means, quats, scales, viewmats, Ks, *ctx.args, *grads, out_means, out_quats, out_scales)

        def back(a: np.ndarray) -> Tensor:
            return torch.from_numpy(a).to(ctx.device, ctx.dtype)

        return back(out_means), back(out_quats), back(out_scales), None, None, None, None, None, None, None


def project_cpu(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                near: float = 0.01, far: float = 1e10, eps2d: float = 0.3) -> Projected:
    """:func:`perchead.render.project.project` for C cameras at once (viewmats [C, 4, 4], Ks [C, 3, 3]):
    fields [C, N, ...], differentiable with respect to means, quats and scales (not the cameras)."""
    if viewmats.requires_grad or Ks.requires_grad:
        raise ValueError("project_cpu has no gradient for the cameras; use perchead.render.project.project")
    means2d, conics, depths, extents, valid = _ProjectCPU.apply(means, quats, scales, viewmats, Ks, int(width),
                                                                int(height), float(near), float(far), float(eps2d))
    return Projected(means2d, conics, depths, extents, valid)
