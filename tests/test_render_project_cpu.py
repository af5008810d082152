"""The numba projection must be the PyTorch projection: every output, and the gradients of means, quats, scales."""

import pytest
import torch

from perchead.geometry import Cameras, Gaussians
from perchead.render.project import project
from perchead.render.project_cpu import project_cpu
from perchead.render.scenes import edge_case_gaussians, random_gaussians


def _scene(dtype):
    # edge cases (behind the camera, straddling near, off-screen, tiny, huge) plus Gaussians far to the sides,
    # whose Jacobian point is clamped to 1.3x the field of view
    sides = random_gaussians(60, seed=8, spread=0.3, dtype=dtype)
    sides.means = sides.means + torch.tensor([1.2, -0.9, 0.0], dtype=dtype) * torch.sign(sides.means[:, :1])
    return Gaussians.cat([edge_case_gaussians(1.5, seed=3, dtype=dtype), random_gaussians(80, seed=4, dtype=dtype),
                          sides])


def _cams(dtype):
    cams = Cameras.orbit([0.0, 35.0, 180.0], 10.0, radius=1.5, fov_deg=40.0, size=48)
    Ks = cams.Ks.clone()
    Ks[1, 0, 2] += 3.0  # an off-centre principal point: the clamp limits differ left and right
    return cams.viewmats.to(dtype), Ks.to(dtype)


def _torch_projection(g, viewmats, Ks, w, h):
    projs = [project(g.means, g.quats, g.scales, viewmats[c], Ks[c], w, h) for c in range(len(viewmats))]
    return {k: torch.stack([getattr(p, k) for p in projs]) for k in ("means2d", "conics", "depths", "extents",
                                                                      "valid")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_match_the_pytorch_projection(dtype):
    g = _scene(dtype)
    viewmats, Ks = _cams(dtype)
    ref = _torch_projection(g, viewmats, Ks, 48, 40)
    out = project_cpu(g.means, g.quats, g.scales, viewmats, Ks, 48, 40)
    assert torch.equal(out.valid, ref["valid"])
    assert 0 < int(ref["valid"].sum()) < ref["valid"].numel(), "the scene must have culled and kept Gaussians"
    tol = {"atol": 1e-3, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-9, "rtol": 1e-9}
    v = ref["valid"]
    for key in ("means2d", "conics", "extents"):
        assert getattr(out, key).dtype == dtype
        torch.testing.assert_close(getattr(out, key)[v], ref[key][v], **tol)
    torch.testing.assert_close(out.depths, ref["depths"], **tol)


def test_gradients_match_pytorch_autograd():
    dtype = torch.float64
    viewmats, Ks = _cams(dtype)
    gen = torch.Generator().manual_seed(5)
    grads = {}
    for which in ("torch", "numba"):
        g = _scene(dtype)
        params = [g.means.requires_grad_(), g.quats.requires_grad_(), g.log_scales.requires_grad_()]
        if which == "torch":
            p = _torch_projection(g, viewmats, Ks, 48, 40)
            m2d, con, dep, valid = p["means2d"], p["conics"], p["depths"], p["valid"]
        else:
            p = project_cpu(g.means, g.quats, g.scales, viewmats, Ks, 48, 40)
            m2d, con, dep, valid = p.means2d, p.conics, p.depths, p.valid
        gen.manual_seed(5)
        w = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in (m2d, con, dep)]
        keep = valid.to(dtype)  # culled rows never reach a compositor
        loss = ((m2d * w[0]).sum(-1) * keep).sum() + ((con * w[1]).sum(-1) * keep).sum() + (dep * w[2]).sum()
        grads[which] = torch.autograd.grad(loss, params)
    for name, ref, ours in zip(("means", "quats", "log_scales"), grads["torch"], grads["numba"], strict=True):
        scale = ref.abs().max()
        assert scale > 0, f"no gradient reached {name}"
        rel = ((ours - ref).abs().max() / scale).item()
        assert rel < 1e-9, f"{name}: relative gradient error {rel:.2e}"


def test_camera_gradients_are_refused():
    g = random_gaussians(10, seed=1)
    viewmats, Ks = _cams(torch.float32)
    with pytest.raises(ValueError, match="no gradient for the cameras"):
        project_cpu(g.means, g.quats, g.scales, viewmats.requires_grad_(), Ks, 48, 40)
