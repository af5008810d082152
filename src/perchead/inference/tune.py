"""Test-time tuning: the network itself fitted to the photo's view, before its Gaussians are.

The Gaussian-level fit (:mod:`perchead.inference.fit`) moves each Gaussian within bounds around the network's
head. What it cannot change is the head's shape: one view says nothing about depth, so the bounds keep the
network's face relief, hair outline and proportions, and views a few degrees from the camera show the
photo's features drifting off that shape (docs/lab_notebook.md). Tuning the network's own weights on the one
view moves the head inside the space of heads the network has learned to output, where a change seen from
the front comes with the changes it implies at the sides and the back -- the "inversion" step of
GAN-based single-image head methods (pivotal tuning), here on the feed-forward network.

:func:`tune_network` is a few dozen Adam steps on a copy of the network (the caller's model is untouched):
the photo from the camera the fit uses, at a small render size, with the untuned head's renders from unseen
views as a weak target. :func:`fit_network` chains the network, the camera, the tuning (off by default,
:attr:`perchead.inference.fit.FitConfig.tune_steps`) and the Gaussian fit: what ``perchead reconstruct`` and
the fitted evaluation method run.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace

import torch
from torch import Tensor

from ..geometry import Gaussians
from ..render import rasterize
from .fit import (
    NOVEL_YAWS,
    FitConfig,
    FitDivergedError,
    FitProgress,
    FitResult,
    align_midline,
    fit_to_photo,
    matte_outside,
    midline_pixels,
    photo_landmarks,
    template_inputs,
    turned_viewmats,
)
from .pose import Pose, camera_K, estimate_pose, resize_to

TUNE_MARGIN = 0.03
"""share of the render's side by which the untuned head's silhouette is grown to give the pixels the tuning
compares (the rest of the matte is shoulders and clothes)"""


def tune_network(model: torch.nn.Module, net_image: Tensor, net_mask: Tensor, image: Tensor, mask: Tensor,
                 viewmat: Tensor, config: FitConfig, backend: str = "auto",
                 progress: FitProgress | None = None) -> tuple[Gaussians, list[float]]:
    """The Gaussians of a copy of ``model`` tuned for ``config.tune_steps`` Adam steps (learning rate
    ``config.tune_lr``) so that its head, seen from ``viewmat`` at ``config.tune_size`` px, looks like the
    photo.

    Args:
        net_image, net_mask: the network's inputs [1, 3, S, S], [1, 1, S, S] (S: the model's image size).
        image, mask: the photo matted on white [3, H, W] and its alpha [1, H, W] (the fit's target).
    Returns the tuned Gaussians (unbatched, detached, float32) and the loss before each step and after the
    last. Raises :class:`perchead.inference.fit.FitDivergedError` on a NaN/infinite loss.
    """
    size = config.tune_size
    dev = next(model.parameters()).device
    tuned = copy.deepcopy(model).eval()  # eval: dropout off; the caller's weights stay as they were
    params = [p for p in tuned.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=config.tune_lr)
    msk = resize_to(mask, size).to(dev)[None]
    img = resize_to(image, size).to(dev)[None] * msk + (1 - msk)  # on white, as the render
    vm, K = viewmat.to(dev)[None], camera_K(size).to(dev)[None]
    net_image, net_mask = net_image.to(dev), net_mask.to(dev)

    def render(g: Gaussians) -> tuple[Tensor, Tensor]:
        out = rasterize(g.to(dev, torch.float32), vm, K, size, size, backend=backend, check_finite=False)
        return out.rgb.permute(0, 3, 1, 2), out.alpha.permute(0, 3, 1, 2)

    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, as the loss's
        # Recomputed rather than taken from the caller: a prediction made under inference_mode differs in the
        # last bits, and computed here the targets are exactly what the copy being tuned starts from (tried:
        # the caller's prediction moved the bundled photo's tuned input view from 23.52 to 23.38 dB).
        untuned = model(net_image, net_mask)[0].to(dev, torch.float32)
        _, alpha0 = render(untuned)
        # The matte goes on into shoulders and clothes, which the template ends before: tuned on them, the
        # network stretched the head's neck over the shoulders (and the Gaussian fit, which frees the neck for
        # exactly that, no longer did). So beyond the untuned head's silhouette (grown by TUNE_MARGIN) the
        # matte's pixels keep the untuned head's alpha as their target and their colours do not count; the
        # background is a target everywhere: without it the head grew floaters that showed from behind (a first
        # study on held-out synthetic heads).
        k = 2 * max(1, round(TUNE_MARGIN * size)) + 1
        head = torch.nn.functional.max_pool2d((alpha0 > 0.5).float(), k, 1, k // 2) > 0.5
        beyond = ~head & (msk > 0.5)
        alpha_target = torch.where(beyond, alpha0, msk)
        colour_weight = (~beyond).float()

    # The untuned head from unseen views, a weak target (as the Gaussian fit's): the photo's view alone let the
    # tuned head explain a real photo's details by changing its sides and back.
    novel_vms = turned_viewmats(vm[0], NOVEL_YAWS)
    novel_K = camera_K(config.novel_size).to(dev)[None]
    with torch.inference_mode(False), torch.no_grad():
        novel = rasterize(untuned, novel_vms, novel_K.expand(len(NOVEL_YAWS), 3, 3), config.novel_size,
                          config.novel_size, backend=backend)
    turn = [0]

    def loss_of(g: Gaussians) -> Tensor:
        rgb, alpha = render(g)
        i = turn[0] % len(NOVEL_YAWS)
        turn[0] += 1
        nov = rasterize(g.to(dev, torch.float32), novel_vms[i:i + 1], novel_K, config.novel_size, config.novel_size,
                        backend=backend, check_finite=False)
        reg = (nov.rgb - novel.rgb[i:i + 1]).abs().mean() + (nov.alpha - novel.alpha[i:i + 1]).abs().mean()
        # L1 of the render on white against the photo on white, and the matte as alpha. Not the Gaussian fit's
        # view_loss: with its SSIM term the tuned head was worse near the input, and with its colours compared
        # inside the matte only, worse at the back (a first study on held-out synthetic heads).
        return ((rgb - img).abs().mean(1, keepdim=True) * colour_weight).mean() \
            + config.alpha_weight * (alpha - alpha_target).abs().mean() + config.tune_novel_weight * reg

    losses: list[float] = []
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(config.tune_steps):
            loss = loss_of(tuned(net_image, net_mask)[0])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FitDivergedError(f"tuning the network diverged at step {step} (loss {value}); nothing was "
                                       "written. Lower --fit-tune-lr or use --fit-tune-steps 0")
            losses.append(value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, config.tune_steps, value)
        with torch.no_grad():
            g = tuned(net_image, net_mask)[0].to(torch.float32)
            losses.append(float(loss_of(g)))
    g = Gaussians(*(t.detach() for t in g.tensors().values()))
    try:
        g.check_finite()
    except ValueError as exc:
        raise FitDivergedError(f"tuning the network diverged: {exc}; nothing was written") from exc
    return g, losses


def fit_network(model: torch.nn.Module, net_image: Tensor, net_mask: Tensor, image: Tensor, mask: Tensor,
                config: FitConfig | None = None, pose: Pose | None = None, gaussians: Gaussians | None = None,
                backend: str = "auto", progress: FitProgress | None = None) -> FitResult:
    """The network's head for a photo, tuned (:func:`tune_network`, ``config.tune_steps`` > 0) then fitted
    (:func:`fit_to_photo`, ``config.steps`` > 0; with 0 the tuned network's Gaussians as they are).

    ``net_image``/``net_mask``: the network's inputs [1, 3, S, S] / [1, 1, S, S]; ``image``/``mask``: the
    photo matted on white [3, H, W] and its alpha [1, H, W]. ``pose``: the input camera (None: estimated);
    ``gaussians``: the network's prediction when already computed. ``progress(i, n, loss)`` counts the
    tuning's steps and the fit's together."""
    cfg = config or FitConfig()
    with torch.inference_mode(False), torch.no_grad():
        if gaussians is None:
            gaussians = model(net_image, net_mask)[0].to(torch.float32)
        gaussians = Gaussians(*(t.clone() for t in gaussians.tensors().values()))
        if pose is None:
            pose = estimate_pose(image, mask)
    total = cfg.tune_steps + cfg.steps

    def counted(offset: int) -> FitProgress | None:
        return None if progress is None else (lambda i, _n, loss: progress(offset + i, total, loss))

    tune_seconds, tune_losses, outside, landmarks = 0.0, [], None, None
    if cfg.tune_steps > 0:
        start = time.perf_counter()
        img, msk = resize_to(image, cfg.size), resize_to(mask, cfg.size)
        if cfg.max_camera_shift > 0 and pose.method != "given":
            # the camera the tuning sees the photo from is the one the fit would use (the midline aligned); the
            # fit reuses the landmarks rather than running Face Mesh again
            landmarks = photo_landmarks(img, msk)
            if landmarks is not None:
                pose, _ = align_midline(gaussians, pose, img, msk, cfg.max_camera_shift, backend,
                                        pixels=midline_pixels(img, msk, landmarks))
        # Whether the photo's matte goes on beyond the head (shoulders, clothes) is read off the untuned head:
        # the tuned one covers more of the matte (measured without this: the astronaut's share 0.21 -> 0.10),
        # and the Gaussian fit would no longer free the neck to reach the shoulders.
        with torch.inference_mode(False), torch.no_grad():
            alpha = rasterize(gaussians, pose.viewmat.to(gaussians.means)[None],
                              camera_K(cfg.size).to(gaussians.means)[None], cfg.size, cfg.size, backend=backend).alpha
        outside = matte_outside(alpha[0, ..., 0], msk[0].to(alpha))
        gaussians, tune_losses = tune_network(model, net_image, net_mask, image, mask, pose.viewmat, cfg, backend,
                                              counted(0))
        tune_seconds = time.perf_counter() - start
    result = fit_to_photo(gaussians, image, mask, cfg, pose=pose, backend=backend,
                          progress=counted(cfg.tune_steps if tune_losses else 0), outside=outside,
                          landmarks=landmarks, **template_inputs(model))
    return replace(result, seconds=result.seconds + tune_seconds, tune_losses=tune_losses)


__all__ = ["fit_network", "tune_network"]
