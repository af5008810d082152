"""The ``edit`` training stage's network (called by ``perchead.train``'s trainer).

``build_edit_network(model, cfg)`` wraps the reconstruction model it is given: the editing network shares
its decoder, heads and SHP-CNN, so the trainer's optimizer updates them in place, and its new encoder is also
attached to ``model`` as ``model.edit_encoder`` so that the trainer's checkpoints (``model.save_pretrained``)
contain it; ``EditNetwork.from_pretrained`` reads such a checkpoint back. CLIP stays frozen and outside the
module tree. ``load_stage_model(checkpoint)`` loads such a checkpoint as a PercHead with its editing encoder
(what resuming or continuing an edit run needs). The CLIP used is ``$PERCHEAD_CLIP`` (hub id or folder) or
``DEFAULT_CLIP``, because the training config has no CLIP field yet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from perchead.losses import load_clip
from perchead.losses.foundation import DEFAULT_CLIP
from perchead.model import HeadTemplate, PercHead
from perchead.model.perchead_model import _resolve_checkpoint, read_config, read_weights

from .encoder import EditConfig, SegStyleEncoder
from .network import TRAINER_PREFIX, EditNetwork

CLIP_ENV = "PERCHEAD_CLIP"


def build_edit_network(model: PercHead, cfg: Any = None, clip: str | None = None) -> EditNetwork:
    """The module the edit stage trains: ``net(image [B,3,S,S], mask [B,1,S,S], segmentation [B,S,S])``.

    ``clip``: CLIP hub id or folder (default ``$PERCHEAD_CLIP``, else ``DEFAULT_CLIP``); loading fails with a
    clear message when its weights are absent (never random)."""
    name = clip or os.environ.get(CLIP_ENV) or DEFAULT_CLIP
    clip_models = load_clip(name)
    edit = EditConfig(clip=name, clip_dim=int(clip_models.model.config.projection_dim))
    attr = TRAINER_PREFIX.rstrip(".")
    existing = getattr(model, attr, None)
    net = EditNetwork.from_reconstruction(model, edit, clip=clip_models)
    if isinstance(existing, SegStyleEncoder):
        # A model from load_stage_model: keep its trained editing encoder (resume / continued fine-tuning).
        if existing.edit.clip_dim != edit.clip_dim:
            raise ValueError(f"the checkpoint's editing encoder takes {existing.edit.clip_dim}-d CLIP embeddings "
                             f"but CLIP '{name}' gives {edit.clip_dim}: set ${CLIP_ENV} to the CLIP it was "
                             "trained with")
        net.encoder = existing
    else:
        # Registered on the model so the trainer's checkpoints (model.save_pretrained) store it.
        model.add_module(attr, net.encoder)
    net.clip  # noqa: B018 -- moves CLIP to the model's device now, not inside the first step
    return net


def load_stage_model(source: str | Path) -> PercHead:
    """The PercHead of an edit-stage training checkpoint *with* its ``edit_encoder`` attached and loaded
    (``PercHead.from_pretrained`` refuses those extra tensors), or a plain reconstruction checkpoint. For the
    trainer's resume / ``--init-from`` in the edit stage; ``build_edit_network`` then keeps that encoder."""
    config_path, weights_path = _resolve_checkpoint(source, None)
    config = read_config(config_path)
    tensors, _ = read_weights(weights_path)
    model = PercHead(config, template=HeadTemplate.placeholder(config.template_resolution))
    key = f"{TRAINER_PREFIX}fuse.0.weight"
    if key in tensors:
        clip_dim = int(tensors[key].shape[0]) - config.vit_width
        name = os.environ.get(CLIP_ENV) or DEFAULT_CLIP
        model.add_module(TRAINER_PREFIX.rstrip("."), SegStyleEncoder(config, EditConfig(name, clip_dim)))
    model.load_weights(weights_path)
    return model


__all__ = ["CLIP_ENV", "build_edit_network", "load_stage_model"]
