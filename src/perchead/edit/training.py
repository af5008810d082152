"""The ``edit`` training stage: its network and its checkpoints (called by ``perchead.train``'s trainer).

``build_edit_network(model, cfg)`` wraps the reconstruction model it is given: the editing network shares
its decoder, heads and SHP-CNN, so the trainer's optimizer updates them in place, and its new encoder is also
attached to ``model`` as ``model.edit_encoder`` so that the trainer's checkpoints (``model.save_pretrained``)
contain it; ``EditNetwork.from_pretrained`` reads such a checkpoint back. CLIP (``TrainConfig.clip``, default
``DEFAULT_CLIP``) stays frozen and outside the module tree.

Reading the stage's own checkpoints back (resume, or ``--init-from`` an earlier edit run) goes through
``load_stage_weights``: it first attaches an editing encoder of the checkpoint's shape to the PercHead, then
loads strictly, so a checkpoint never loses (or silently drops) its trained encoder. ``build_edit_network``
then keeps that encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perchead.losses import load_clip
from perchead.losses.foundation import DEFAULT_CLIP, WeightsNotFoundError
from perchead.model import HeadTemplate, PercHead
from perchead.model.perchead_model import checkpoint_files, read_config, read_weights

from .encoder import EditConfig, SegStyleEncoder
from .network import FORMAT as EDIT_FORMAT
from .network import TRAINER_PREFIX, EditNetwork

ENCODER_ATTR = TRAINER_PREFIX.rstrip(".")
"""The attribute of the trainer's PercHead that holds the editing encoder."""


def stage_clip(cfg: Any = None) -> str:
    """The CLIP of an edit run: ``cfg.clip`` (a :class:`~perchead.train.TrainConfig`) or the default."""
    return getattr(cfg, "clip", None) or DEFAULT_CLIP


def build_edit_network(model: PercHead, cfg: Any = None, clip: str | None = None) -> EditNetwork:
    """The module the edit stage trains: ``net(image [B,3,S,S], mask [B,1,S,S], segmentation [B,S,S])``.

    ``clip``: CLIP hub id or folder (default: ``cfg.clip``, else ``DEFAULT_CLIP``); loading fails with a clear
    message when its weights are absent (never random)."""
    name = clip or stage_clip(cfg)
    try:
        clip_models = load_clip(name)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"the edit stage embeds styles with CLIP, and {exc} To train with another "
                                   "CLIP pass --clip HUB_ID_OR_FOLDER.") from exc
    edit = EditConfig(clip=name, clip_dim=int(clip_models.model.config.projection_dim))
    existing = getattr(model, ENCODER_ATTR, None)
    net = EditNetwork.from_reconstruction(model, edit, clip=clip_models)
    if isinstance(existing, SegStyleEncoder):
        # The model came from an edit-stage checkpoint: keep its trained editing encoder.
        if existing.edit.clip_dim != edit.clip_dim:
            raise ValueError(f"the checkpoint's editing encoder takes {existing.edit.clip_dim}-d CLIP embeddings "
                             f"but CLIP '{name}' gives {edit.clip_dim}-d ones: pass --clip with the CLIP that "
                             "run was trained with (its train_config.json names it)")
        existing.edit = edit
        net.encoder = existing
    else:
        # Registered on the model so the trainer's checkpoints (model.save_pretrained) store it.
        model.add_module(ENCODER_ATTR, net.encoder)
    net.clip  # noqa: B018 -- moves CLIP to the model's device now, not inside the first step
    return net


def load_stage_weights(model: PercHead, weights: str | Path, cfg: Any = None) -> None:
    """Load a checkpoint's ``model.safetensors`` into ``model`` strictly. When the file holds an editing
    encoder (``edit_encoder.*``, an edit-stage checkpoint) and the model has none yet, one of the file's shape
    is attached first; a plain reconstruction checkpoint loads as it is."""
    tensors, _ = read_weights(weights)
    key = f"{TRAINER_PREFIX}fuse.0.weight"
    if key in tensors and not isinstance(getattr(model, ENCODER_ATTR, None), SegStyleEncoder):
        clip_dim = int(tensors[key].shape[0]) - model.config.vit_width
        if clip_dim < 1:
            raise ValueError(f"{weights}: the editing encoder's fusion input ({tensors[key].shape[0]}) is not wider "
                             f"than the model's ViT ({model.config.vit_width}): the file is damaged or made for "
                             "another architecture")
        encoder = SegStyleEncoder(model.config, EditConfig(stage_clip(cfg), clip_dim))
        model.add_module(ENCODER_ATTR, encoder.to(next(model.parameters()).device))
    model.load_weights(weights)


def load_stage_model(source: str | Path, cfg: Any = None) -> PercHead:
    """A PercHead from a checkpoint folder or hub id, *with* its editing encoder when it holds one (what
    resuming an edit run, or ``--init-from`` an earlier one, needs; ``PercHead.from_pretrained`` refuses those
    tensors). A plain reconstruction checkpoint gives a plain PercHead."""
    config_path, weights_path = checkpoint_files(source)
    _refuse_exported(config_path, source)
    config = read_config(config_path)
    model = PercHead(config, template=HeadTemplate.placeholder(config.template_resolution))
    load_stage_weights(model, weights_path, cfg)
    return model


def _refuse_exported(config_path: Path, source: str | Path) -> None:
    import json

    try:
        data = json.loads(Path(config_path).read_text())
    except (json.JSONDecodeError, OSError):
        return  # read_config reports it
    if isinstance(data, dict) and data.get("format") == EDIT_FORMAT:
        raise ValueError(f"{source} is an exported editing checkpoint (EditNetwork.save_pretrained), which keeps "
                         "no image encoder: the edit stage starts from a reconstruction checkpoint, or continues "
                         "from an edit run's checkpoint (<run>/checkpoints/step_XXXXXXXX)")


__all__ = ["ENCODER_ATTR", "build_edit_network", "load_stage_model", "load_stage_weights", "stage_clip"]
