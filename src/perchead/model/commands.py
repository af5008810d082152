"""``perchead model-info``: parameter counts per part and Gaussians per head of a preset."""

from __future__ import annotations

from typing import Annotated, Literal

import tyro


def model_info(
    preset: Annotated[Literal["paper", "base", "small", "tiny"],
                      tyro.conf.arg(help="model preset")] = "small",
    dino: Annotated[str | None, tyro.conf.arg(
        help="DINOv2 hub id or local folder replacing the preset's (only its config.json is read)")] = None,
    dino_layers: Annotated[tuple[int, ...] | None, tyro.conf.arg(
        help="0-based DINOv2 blocks to use instead of the preset's")] = None,
    no_dino: Annotated[bool, tyro.conf.arg(help="count the model without the DINOv2 branch")] = False,
) -> int:
    """Print the parameters of each part (trainable / frozen) and the Gaussians per head of a preset.

    Nothing is downloaded or allocated: the network is built on PyTorch's "meta" device (shapes only), and
    the DINOv2 architecture comes from a local folder's config.json or, for the published hub ids, from a
    built-in table of their configs.
    """
    import torch

    from .config import DINOV2_ARCHS
    from .config import preset as get_preset
    from .encoder import dinov2_config, dinov2_from_config
    from .perchead_model import PercHead
    from .template import HeadTemplate

    cfg = get_preset(preset)
    if no_dino:
        cfg = cfg.replace(dino=None, dino_layers=())
    else:
        if dino is not None:
            cfg = cfg.replace(dino=dino)
        if dino_layers is not None:
            cfg = cfg.replace(dino_layers=dino_layers)
    dino_module = None
    if cfg.dino is not None:
        try:
            dino_module = dinov2_from_config(dinov2_config(cfg.dino), device="meta")
        except OSError as exc:
            raise FileNotFoundError(f"cannot read the config of DINOv2 '{cfg.dino}': {exc}") from exc
    template = HeadTemplate.placeholder(cfg.template_resolution)  # built outside: the meta context would
    with torch.device("meta"):  # capture its factory calls and head_size() needs real numbers
        model = PercHead(cfg, template=template, dino=dino_module)

    g = cfg.patch_grid
    print(f"perchead model, preset '{cfg.preset}': {cfg.image_size} px input -> {g}x{g} patches of "
          f"{cfg.patch_size} px; template {cfg.template_resolution}x{cfg.template_resolution}")
    if cfg.dino is None:
        print("DINOv2 branch: off (trainable ViT only)")
    else:
        source = "built-in table of hub configs" if cfg.dino in DINOV2_ARCHS else "its config.json"
        print(f"DINOv2 branch: {cfg.dino}, blocks {list(cfg.dino_layers)} (architecture from {source}; "
              "weights not loaded)")
    print(f"decoder: {cfg.layers} cross-attention layers, width {cfg.width}, {cfg.heads} heads; "
          f"SHP-CNN {'on' if cfg.shp_cnn else 'off'}")
    rows = model.parameter_counts()
    w = max(len(r[0]) for r in rows + [("total", 0, 0)])
    print(f"\n{'part'.ljust(w)}  {'trainable':>13}  {'frozen':>13}")
    for name, t, f in rows:
        print(f"{name.ljust(w)}  {t:>13,}  {f:>13,}")
    tt, tf = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'total'.ljust(w)}  {tt:>13,}  {tf:>13,}")
    print(f"\nGaussians per head: {cfg.num_gaussians:,} ({cfg.num_tokens:,} tokens x 16)")
    return 0
