"""The fast CPU compositor must agree with the dense reference, values and gradients."""

import numpy as np
import pytest
import torch

from perchead.geometry import Cameras, Gaussians
from perchead.render import rasterize, render_features
from perchead.render.scenes import edge_case_gaussians, random_gaussians

PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def _cams(size=40, yaws=(0.0, 70.0, 180.0), pitch=10.0, radius=1.5, fov=40.0, height=None, dtype=torch.float32):
    cams = Cameras.orbit(list(yaws), pitch, radius=radius, fov_deg=fov, size=size)
    width = size
    height = height or size
    Ks = cams.Ks.clone()
    Ks[:, 1, 2] = height / 2
    return cams.viewmats.to(dtype), Ks.to(dtype), width, height


def _render(g, backend, cams, **kw):
    viewmats, Ks, w, h = cams
    return rasterize(g, viewmats, Ks, w, h, backend=backend, **kw)


SCENES = {
    "random": lambda dtype: random_gaussians(300, seed=1, dtype=dtype),
    "random_sh3": lambda dtype: random_gaussians(200, seed=2, sh_degree=3, dtype=dtype),
    "edge_cases": lambda dtype: Gaussians.cat([edge_case_gaussians(1.5, seed=3, dtype=dtype),
                                               random_gaussians(100, seed=4, dtype=dtype)]),
    "dense_overlap": lambda dtype: random_gaussians(400, seed=5, spread=0.05, log_scale_mean=-2.5, dtype=dtype),
}


@pytest.mark.parametrize("scene", SCENES)
def test_cpu_forward_matches_reference(scene):
    g = SCENES[scene](torch.float32)
    cams = _cams(size=37, height=29)  # not a multiple of the tile size, not square
    ref = _render(g, "reference", cams, background=(0.2, 0.5, 0.9))
    cpu = _render(g, "cpu", cams, background=(0.2, 0.5, 0.9))
    assert ref.alpha.max() > 0.5, "scene should cover some pixels"
    for key in ("rgb", "alpha"):
        torch.testing.assert_close(getattr(cpu, key), getattr(ref, key), atol=1e-4, rtol=0)
    # Depth is an expectation divided by alpha: compare where there is some coverage.
    covered = ref.alpha > 1e-2
    torch.testing.assert_close(cpu.depth[covered], ref.depth[covered], atol=1e-3, rtol=1e-4)


def test_early_stop_is_exercised():
    """A stack of opaque Gaussians saturates a pixel: compositing must stop with T just above 1e-4."""
    g = edge_case_gaussians(1.5, seed=3)
    cams = _cams(size=33, yaws=(0.0,), pitch=0.0)
    out = _render(g, "cpu", cams)
    assert out.alpha.max() > 0.999
    assert out.alpha.max() < 1 - 1e-4 + 1e-6


@pytest.mark.parametrize("scene", SCENES)
@pytest.mark.parametrize("depth_weight", [0.05, 0.0])
def test_cpu_gradients_match_reference_autograd(scene, depth_weight):
    # depth_weight 0: the depth channel has no gradient anywhere, so the cpu backward skips it (exact)
    cams = _cams(size=24, dtype=torch.float64)
    grads = {}
    for backend in ("reference", "cpu"):
        g = SCENES[scene](torch.float64)
        for name in PARAMS:
            getattr(g, name).requires_grad_(True)
        out = _render(g, backend, cams, background=(0.3, 0.6, 0.1))
        weights = torch.randn(out.rgb.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        loss = (out.rgb * weights).sum() + 0.7 * out.alpha.sum()
        if depth_weight:
            loss = loss + depth_weight * (out.depth * out.alpha).sum()
        loss.backward()
        grads[backend] = {name: getattr(g, name).grad for name in PARAMS}
    for name in PARAMS:
        ref, cpu = grads["reference"][name], grads["cpu"][name]
        scale = ref.abs().max()
        assert scale > 0, f"no gradient reached {name}"
        rel = ((cpu - ref).abs().max() / scale).item()
        assert rel < 1e-3, f"{name}: relative gradient error {rel:.2e}"


def test_cpu_gradients_match_finite_differences():
    g = random_gaussians(40, seed=11, spread=0.15, log_scale_mean=-2.5, dtype=torch.float64)
    cams = _cams(size=20, yaws=(0.0, 40.0), dtype=torch.float64)
    weights = torch.randn(2, 20, 20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss_of(gauss):
        out = _render(gauss, "cpu", cams)
        return (out.rgb * weights).sum() + out.alpha.sum()

    for name in PARAMS:
        getattr(g, name).requires_grad_(True)
    loss_of(g).backward()
    checked = 0
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        param = getattr(g, name)
        grad = param.grad.reshape(-1)
        for flat in torch.argsort(grad.abs(), descending=True)[:3].tolist():  # the most influential entries
            eps = 1e-6
            values = {}
            for sign in (1, -1):
                perturbed = {k: getattr(g, k).detach().clone() for k in PARAMS}
                perturbed[name].view(-1)[flat] += sign * eps
                values[sign] = loss_of(Gaussians(**perturbed)).item()
            fd = (values[1] - values[-1]) / (2 * eps)
            assert fd == pytest.approx(grad[flat].item(), rel=1e-3, abs=1e-6), f"{name}[{flat}]"
            checked += 1
    assert checked == 15


def test_scene_behind_camera_returns_background():
    g = random_gaussians(50, seed=3)
    g = g.replace(means=g.means * 0.1 + torch.tensor([0.0, 0.0, 5.0]))  # all behind a camera at z=1.5
    viewmats, Ks, w, h = _cams(size=16, yaws=(0.0,), pitch=0.0)
    for backend in ("reference", "cpu"):
        out = rasterize(g, viewmats, Ks, w, h, background=(0.1, 0.2, 0.3), backend=backend)
        assert torch.equal(out.alpha, torch.zeros_like(out.alpha))
        assert torch.allclose(out.rgb, torch.tensor([0.1, 0.2, 0.3]).expand_as(out.rgb))
        assert torch.equal(out.depth, torch.zeros_like(out.depth))


@pytest.mark.parametrize("name", PARAMS)
def test_non_finite_parameters_are_refused(name):
    g = random_gaussians(10)
    broken = g.tensors()
    broken[name] = broken[name].clone()
    broken[name].view(-1)[3] = float("nan")
    viewmats, Ks, w, h = _cams(size=8)
    with pytest.raises(ValueError, match=name):
        rasterize(Gaussians(**broken), viewmats, Ks, w, h)
    broken[name].view(-1)[3] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        rasterize(Gaussians(**broken), viewmats, Ks, w, h)


def test_finite_parameters_whose_sum_overflows_are_not_refused():
    # check_finite first tests each parameter's sum; a sum that overflows must not be taken for an inf entry
    g = random_gaussians(10)
    big = g.tensors()
    big["sh"] = big["sh"].clone()
    big["sh"].view(-1)[:4] = 3e38
    Gaussians(**big).check_finite()
    big["sh"].view(-1)[5] = float("-inf")
    with pytest.raises(ValueError, match="sh has 1 NaN"):
        Gaussians(**big).check_finite()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depth_order_is_a_stable_sort_per_camera(dtype):
    # the cpu backend's radix sort of the depths' bits must order like numpy's stable argsort, ties included
    from perchead.render.cpu import _depth_order

    rng = np.random.default_rng(0)
    n_cams, n = 3, 500
    depths = rng.uniform(0.02, 40.0, (n_cams, n)).astype(dtype)
    depths[:, ::7] = depths[:, 3:4]  # ties
    depths[1] = np.round(depths[1], 1)  # many ties
    keep = rng.random((n_cams, n)) > 0.2
    keep[2] = False  # a camera that sees nothing
    order, order_cam = _depth_order(depths.reshape(-1).view(np.uint32 if dtype == np.float32 else np.uint64),
                                    keep.reshape(-1), n_cams)
    expected = [c * n + np.flatnonzero(keep[c])[np.argsort(depths[c][keep[c]], kind="stable")]
                for c in range(n_cams)]
    np.testing.assert_array_equal(order, np.concatenate(expected))
    np.testing.assert_array_equal(order_cam, np.repeat(np.arange(n_cams), [len(e) for e in expected]))


@pytest.mark.parametrize("n_chunks", [1, 2, 5])
def test_tile_lists_are_each_tiles_reaching_rows_in_depth_order(n_chunks):
    """The binning's two counting sorts (runs of the depth order, then rows of tiles) must give, for every
    (camera, tile), the rows whose ellipse reaches it in depth order, whatever the number of runs."""
    from perchead.render import cpu
    from perchead.render.project_cpu import project_cpu

    g = random_gaussians(300, seed=9)
    viewmats, Ks, w, h = _cams(size=45, height=37)
    n_cams, tiles_x, tiles_y = len(viewmats), 6, 5  # 8 px tiles
    proj = project_cpu(g.means, g.quats, g.scales, viewmats, Ks, w, h)
    n = n_cams * len(g.means)
    packed, extents, keep = np.empty((n, cpu._PACK), np.float32), np.empty((n, cpu._N_EXTENTS)), np.empty(n, bool)
    cpu._pack_rows(proj.means2d.reshape(-1, 2).numpy(), proj.conics.reshape(-1, 3).numpy(),
                   g.opacities.detach().double().numpy(), proj.extents.reshape(-1, 2).double().numpy(),
                   proj.valid.reshape(-1).numpy(), packed, extents, keep)
    order, order_cam = cpu._depth_order(proj.depths.reshape(-1).numpy().view(np.uint32), keep, n_cams)
    offsets, ids = cpu._bin_tiles(packed, extents, order, order_cam, n_cams, 8, tiles_x, tiles_y, n_chunks)
    n_tiles = tiles_x * tiles_y
    expected = [[] for _ in range(n_cams * n_tiles)]
    for row, cam in zip(order, order_cam, strict=True):
        mx, my = packed[row, cpu._MX], packed[row, cpu._MY]
        x0 = max(int(np.floor((mx - extents[row, cpu._EX] - 1.5) / 8)), 0)
        x1 = min(int(np.floor((mx + extents[row, cpu._EX] + 0.5) / 8)), tiles_x - 1)
        y0 = max(int(np.floor((my - extents[row, cpu._EY] - 1.5) / 8)), 0)
        y1 = min(int(np.floor((my + extents[row, cpu._EY] + 0.5) / 8)), tiles_y - 1)
        for ty in range(y0, y1 + 1):
            lo, hi = (x0, x1) if (x0, y0) == (x1, y1) else cpu._row_reach(packed, extents, row, ty, 8, x0, x1)
            for tx in range(lo, hi + 1):
                expected[cam * n_tiles + ty * tiles_x + tx].append(row)
    assert sum(map(len, expected)) > 3 * len(order), "the scene's Gaussians should reach several tiles each"
    np.testing.assert_array_equal(np.diff(offsets), [len(e) for e in expected])
    np.testing.assert_array_equal(ids, np.concatenate(expected).astype(np.int32))


def test_batched_gaussians_render_like_separate_calls():
    a, b = random_gaussians(80, seed=1), random_gaussians(80, seed=2)
    batch = Gaussians(**{k: torch.stack([getattr(a, k), getattr(b, k)]) for k in PARAMS})
    viewmats, Ks, w, h = _cams(size=16)
    out = rasterize(batch, torch.stack([viewmats, viewmats.flip(0)]), torch.stack([Ks, Ks]), w, h)
    assert out.rgb.shape == (2, 3, h, w, 3)
    torch.testing.assert_close(out.rgb[0], rasterize(a, viewmats, Ks, w, h).rgb)
    torch.testing.assert_close(out.rgb[1], rasterize(b, viewmats.flip(0), Ks, w, h).rgb)


def test_tile_size_does_not_change_the_image():
    g = random_gaussians(300, seed=8)
    cams = _cams(size=45)
    torch.testing.assert_close(_render(g, "cpu", cams, tile_size=4).rgb, _render(g, "cpu", cams, tile_size=16).rgb,
                               atol=1e-6, rtol=0)


def test_cameras_of_one_call_render_like_separate_calls():
    """The cpu backend composites all cameras of a call in one pass; each image must be the single-camera one."""
    g = random_gaussians(200, seed=6)
    viewmats, Ks, w, h = _cams(size=30)
    together = rasterize(g, viewmats, Ks, w, h, backend="cpu")
    for c in range(len(viewmats)):
        alone = rasterize(g, viewmats[c:c + 1], Ks[c:c + 1], w, h, backend="cpu")
        torch.testing.assert_close(together.rgb[c:c + 1], alone.rgb, atol=0, rtol=0)
        torch.testing.assert_close(together.depth[c:c + 1], alone.depth, atol=0, rtol=0)


def test_bad_tile_size_is_refused():
    g = random_gaussians(5)
    viewmats, Ks, w, h = _cams(size=8)
    with pytest.raises(ValueError, match="tile_size"):
        rasterize(g, viewmats, Ks, w, h, backend="cpu", tile_size=0)


def test_a_tile_list_beyond_the_float32_count_is_refused(monkeypatch):
    # the float32 forward counts each pixel's list entries in a float, exact below 2^24; the binning is faked,
    # since a real list that long needs more than 16 million Gaussians on one tile (its ids all Gaussian 0, so
    # that without the check the forward would run, not read past the list)
    from perchead.render import cpu

    def too_long(*args):
        return np.array([0, 2**24], np.int64), np.zeros(2**24, np.int32)

    monkeypatch.setattr(cpu, "_bin_tiles", too_long)
    g = random_gaussians(5)
    viewmats, Ks, _, _ = _cams(size=8, yaws=(0.0,))
    with pytest.raises(ValueError, match=r"2\^24\): render in float64 or with fewer Gaussians"):
        rasterize(g, viewmats, Ks, 8, 8, backend="cpu")


def test_backend_choice():
    g = random_gaussians(5)
    viewmats, Ks, w, h = _cams(size=8)
    with pytest.raises(ValueError, match="unknown backend"):
        rasterize(g, viewmats, Ks, w, h, backend="opengl")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gsplat"):
            rasterize(g, viewmats, Ks, w, h, backend="gsplat")


def test_bad_camera_shapes_are_refused():
    g = random_gaussians(5)
    viewmats, Ks, w, h = _cams(size=8)
    with pytest.raises(ValueError, match="viewmats"):
        rasterize(g, viewmats[:, :3], Ks, w, h)
    with pytest.raises(ValueError, match="same C"):
        rasterize(g, viewmats, Ks[:1].expand(2, 3, 3), w, h)


@pytest.mark.cuda
@pytest.mark.parametrize("scene", ["random", "random_sh3", "dense_overlap"])
def test_gsplat_matches_cpu(scene):
    """gsplat clips by square tile boxes rather than the 3-sigma ellipse: images agree up to that fringe."""
    g = SCENES[scene](torch.float32)
    cams = _cams(size=48)
    cpu = _render(g, "cpu", cams)
    gpu = _render(g.to("cuda"), "gsplat", tuple(c.to("cuda") if torch.is_tensor(c) else c for c in cams))
    diff = (gpu.rgb.cpu() - cpu.rgb).abs()
    assert diff.mean() < 2e-3
    assert diff.max() < 0.05
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, atol=0.05, rtol=0)


@pytest.mark.cuda
def test_gsplat_gradients_match_cpu():
    cams = _cams(size=32)
    grads = {}
    for backend, device in (("cpu", "cpu"), ("gsplat", "cuda")):
        g = random_gaussians(200, seed=9).to(device)
        for name in PARAMS:
            getattr(g, name).requires_grad_(True)
        out = _render(g, backend, tuple(c.to(device) if torch.is_tensor(c) else c for c in cams))
        weights = torch.randn(out.rgb.shape, generator=torch.Generator().manual_seed(7)).to(device)
        ((out.rgb * weights).sum() + out.alpha.sum()).backward()
        grads[backend] = {name: getattr(g, name).grad.cpu() for name in PARAMS}
    for name in PARAMS:
        a, b = grads["cpu"][name], grads["gsplat"][name]
        cos = torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).item()
        assert cos > 0.98, f"{name}: cosine similarity {cos:.3f} between cpu and gsplat gradients"


def test_render_features_composites_arbitrary_channels_like_rgb():
    g = random_gaussians(150, seed=12)
    cams = _cams(size=20)
    viewmats, Ks, w, h = cams
    labels = torch.nn.functional.one_hot(torch.arange(150) % 5, 5).float()
    features = torch.cat([g.rgb, labels], -1)
    ref_feat, ref_alpha = render_features(g, features, viewmats, Ks, w, h, backend="reference")
    cpu_feat, cpu_alpha = render_features(g, features, viewmats, Ks, w, h, backend="cpu")
    torch.testing.assert_close(cpu_feat, ref_feat, atol=1e-4, rtol=0)
    torch.testing.assert_close(cpu_alpha, ref_alpha, atol=1e-4, rtol=0)
    # One-hot labels composite to weights that sum to the alpha of the pixel.
    torch.testing.assert_close(cpu_feat[..., 3:].sum(-1, keepdim=True), cpu_alpha, atol=1e-5, rtol=0)
    # The RGB channels are what rasterize() composites before adding the background.
    out = rasterize(g, viewmats, Ks, w, h, background=0.0)
    torch.testing.assert_close(cpu_feat[..., :3], out.rgb, atol=1e-5, rtol=0)
