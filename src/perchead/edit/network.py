"""The editing network: segmentation map + CLIP style -> the reconstruction model's decoder -> Gaussians.

Only the encoder differs from :class:`~perchead.model.PercHead` (docs/design.md section 2): the 3D tokens, the
cross-attention decoder, the Gaussian heads and SHP-CNN are the reconstruction model's, fine-tuned.
``EditNetwork.from_reconstruction(model)`` *shares* those modules with ``model`` (so the edit training stage
updates them in place) and starts the segmentation ViT's blocks from the image ViT's.

A checkpoint folder holds ``config.json`` (``"format": "perchead-edit-model"``, the model config and the
:class:`EditConfig`) and ``model.safetensors`` (every weight and the template buffers; the frozen CLIP is
named, not stored, unless the folder ships one: ``"clip": "./folder"`` is relative to the checkpoint).
``from_pretrained`` also reads checkpoints written by ``perchead train --stage edit``: those are PercHead
folders whose weights carry the editing encoder as ``edit_encoder.*`` (see training.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from perchead.geometry import Gaussians
from perchead.io.atomic import atomic_output
from perchead.losses import clip_image_embedding, clip_text_embedding, load_clip
from perchead.losses.foundation import ClipModels
from perchead.model import Decoder, GaussianHeads, HeadTemplate, ModelConfig, PercHead, ShpCnn
from perchead.model.perchead_model import CONFIG_NAME, WEIGHTS_NAME, checkpoint_files, read_config, read_weights
from perchead.model.perchead_model import FORMAT as MODEL_FORMAT

from .encoder import EditConfig, SegStyleEncoder

FORMAT = "perchead-edit-model"
FORMAT_VERSION = 1
TRAINER_PREFIX = "edit_encoder."
"""Where the edit training stage keeps the editing encoder inside the PercHead it checkpoints."""
BUNDLED = "./"
"""A checkpoint config's CLIP that starts with this is a folder inside the checkpoint (one that ships its CLIP)."""
DEMO_EDIT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo_edit"
"""the bundled editing demo checkpoint ("demo" for ``load_edit_network``, the app's default)"""


class EditNetwork(nn.Module):
    def __init__(self, config: ModelConfig, edit: EditConfig, template: HeadTemplate,
                 decoder: Decoder | None = None, heads: GaussianHeads | None = None,
                 shp_cnn: ShpCnn | None = None, clip: ClipModels | None = None) -> None:
        """``decoder`` / ``heads`` / ``shp_cnn``: modules to share (a reconstruction model's); new ones
        otherwise. ``clip``: an already-loaded CLIP instead of loading ``edit.clip`` on first use."""
        super().__init__()
        self.config = config
        self.edit_config = edit
        self.template = template
        self.notice = ""
        """What users of this checkpoint must know (e.g. a stand-in CLIP); saved in config.json, shown by
        ``perchead edit`` and written into its edit.json."""
        self.encoder = SegStyleEncoder(config, edit)
        self.decoder = decoder if decoder is not None else Decoder(config)
        self.heads = heads if heads is not None else GaussianHeads(config, template)
        if shp_cnn is None and config.shp_cnn:
            shp_cnn = ShpCnn(config.shp_channels, config.shp_blocks)
        self.shp_cnn = shp_cnn
        # Frozen and never stored: kept out of the module tree so it is neither trained nor saved.
        self._clip: list[ClipModels] = []
        if clip is not None:
            self.set_clip(clip)

    @classmethod
    def from_reconstruction(cls, model: PercHead, edit: EditConfig | None = None,
                            clip: ClipModels | None = None) -> EditNetwork:
        """The editing network of a trained PercHead: its template, decoder, heads and SHP-CNN (shared,
        not copied), a new segmentation + style encoder whose ViT blocks start from the image ViT's. The heads of
        a ``colour_read`` model keep reading colours from the 2D tokens: the editing encoder's tokens carry
        colours predicted from the map and the style (SegStyleEncoder)."""
        if edit is None:
            edit = (EditConfig(clip=clip.name, clip_dim=int(clip.model.config.projection_dim)) if clip is not None
                    else EditConfig())
        net = cls(model.config, edit, model.template, model.decoder, model.heads, model.shp_cnn, clip)
        src, dst = model.encoder.vit, net.encoder.vit
        with torch.no_grad():
            dst.pos_embed.copy_(src.pos_embed)
            dst.blocks.load_state_dict(src.blocks.state_dict())
            dst.norm.load_state_dict(src.norm.state_dict())
        device = next(model.parameters()).device
        return net.to(device)

    # -- style --------------------------------------------------------------------------------------------------
    def set_clip(self, clip: ClipModels) -> None:
        dim = int(clip.model.config.projection_dim)
        if dim != self.edit_config.clip_dim:
            raise ValueError(f"CLIP '{clip.name}' embeds into {dim} dimensions but this editing network was "
                             f"built for {self.edit_config.clip_dim} (CLIP '{self.edit_config.clip}'): use that "
                             "CLIP (--clip)")
        self._clip[:] = [clip]

    @property
    def clip(self) -> ClipModels:
        if not self._clip:
            self.set_clip(load_clip(self.edit_config.clip))  # a clear WeightsNotFoundError when absent
        clip = self._clip[0]
        device = self.decoder.norm.weight.device
        if next(clip.model.parameters()).device != device:
            clip.to(device)
        return clip

    @torch.no_grad()
    def style_from_image(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, 3, H, W] RGB in [0, 1] (composited onto the background with ``mask`` when given) -> [B, D]."""
        if mask is not None:
            mask = mask if mask.ndim == 4 else mask[:, None]
            images = images * mask + self.config.background * (1.0 - mask)
        return clip_image_embedding(self.clip, images.float())

    @torch.no_grad()
    def style_from_text(self, texts: str | Sequence[str]) -> Tensor:
        """Prompt(s) -> [B, D]: the same CLIP space as images (zero-shot text styles)."""
        return clip_text_embedding(self.clip, texts)

    # -- inference ----------------------------------------------------------------------------------------------
    def generate(self, segmentation: Tensor, style: Tensor) -> Gaussians:
        """segmentation [B, S, S] (or [S, S]) class ids, style [B, D] CLIP embeddings -> Gaussians [B]."""
        tokens = self.encoder(segmentation, style)
        features = self.decoder(tokens.tokens, tokens.valid, self.decoder.embed(self.template))
        return self.heads(features, self.template, tokens)

    def forward(self, image: Tensor, mask: Tensor, segmentation: Tensor | None) -> Gaussians:
        """The training contract: the style is CLIP of the (matted) input image itself, the geometry comes
        from its segmentation map (the paper feeds the same image to both branches)."""
        if segmentation is None:
            raise ValueError("the editing network needs the input view's segmentation map, but the batch has "
                             "none: use a dataset whose views have segmentation/ maps (`perchead synth` writes "
                             "exact ones; real photos: perchead.edit.segmentation)")
        return self.generate(segmentation, self.style_from_image(image, mask))

    def sharpen(self, rgb: Tensor) -> Tensor:
        return rgb if self.shp_cnn is None else self.shp_cnn(rgb)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (each replaced atomically), like PercHead's."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {"format": MODEL_FORMAT, "kind": "edit", "preset": self.config.preset}
        with atomic_output(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        edit = self.edit_config.to_dict()
        clip = Path(edit["clip"])
        if clip.is_dir() and clip.resolve().is_relative_to(directory.resolve()):
            # A CLIP shipped inside the checkpoint folder is named relative to it: the folder can move.
            edit["clip"] = BUNDLED + clip.resolve().relative_to(directory.resolve()).as_posix()
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.config.to_dict(), "edit": edit}
        if self.notice:
            config["notice"] = self.notice
        with atomic_output(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, source: str | Path, clip: str | ClipModels | None = None,
                        revision: str | None = None, map_location: str | torch.device = "cpu") -> EditNetwork:
        """An editing checkpoint (folder or hub id), or an edit-stage training checkpoint.
        ``clip``: a CLIP (hub id, folder or loaded) replacing the one the checkpoint names. A checkpoint whose
        config names its CLIP as ``./folder`` ships it: the folder is found next to config.json."""
        config_path, weights_path = checkpoint_files(source, revision)
        try:
            data = json.loads(Path(config_path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
        tensors, _ = read_weights(weights_path)
        notice = ""
        if isinstance(data, dict) and data.get("format") == FORMAT:
            if int(data.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"{config_path} has format version {data['format_version']}; this perchead "
                                 f"reads up to {FORMAT_VERSION}: upgrade perchead")
            config = ModelConfig.from_dict(data["model"])
            edit = EditConfig.from_dict(data["edit"])
            notice = str(data.get("notice") or "")
        elif isinstance(data, dict) and data.get("format") == MODEL_FORMAT:
            config = read_config(config_path)
            tensors = _from_training_checkpoint(tensors, source)
            vit = config.vit_width
            edit = EditConfig(clip_dim=int(tensors["encoder.fuse.0.weight"].shape[0]) - vit)
        else:
            raise ValueError(f"{config_path} is neither an editing checkpoint (\"format\": \"{FORMAT}\") nor a "
                             "perchead model checkpoint")
        loaded_clip = clip if isinstance(clip, ClipModels) else None
        if isinstance(clip, str | Path):
            edit = EditConfig(clip=str(clip), clip_dim=edit.clip_dim)
        elif loaded_clip is not None:
            edit = EditConfig(clip=loaded_clip.name, clip_dim=edit.clip_dim)
        elif edit.clip.startswith(BUNDLED):
            edit = EditConfig(clip=_bundled_clip(edit.clip, config_path, source), clip_dim=edit.clip_dim)
        net = cls(config, edit, HeadTemplate.placeholder(config.template_resolution), clip=loaded_clip)
        net.notice = notice
        own = net.state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        wrong = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"cannot load editing checkpoint {source}: {len(missing)} missing tensor(s) "
                             f"{missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, {len(wrong)} of "
                             f"another shape {wrong[:4]}: it was made for another architecture")
        net.load_state_dict(tensors)
        return net.to(map_location)


def _bundled_clip(name: str, config_path: Path, source: str | Path) -> str:
    """The absolute folder of a CLIP that a checkpoint ships (``./clip`` in its config)."""
    if not Path(source).is_dir():
        raise FileNotFoundError(f"editing checkpoint '{source}' ships its own CLIP ({name}), which is not fetched "
                                f"file by file: download the whole repository (`huggingface-cli download {source} "
                                "--local-dir DIR`) and load DIR, or pass clip= / --clip")
    folder = (Path(config_path).parent / name).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"editing checkpoint {source} names its bundled CLIP {name}, but {folder} does "
                                "not exist: the checkpoint folder is incomplete (copy it whole), or pass --clip")
    return str(folder)


def _from_training_checkpoint(tensors: dict[str, Tensor], source: str | Path) -> dict[str, Tensor]:
    """An edit-stage training checkpoint (a PercHead whose weights also hold ``edit_encoder.*``) -> the
    EditNetwork's tensors: the editing encoder replaces the image encoder."""
    if not any(k.startswith(TRAINER_PREFIX) for k in tensors):
        raise ValueError(f"{source} is a reconstruction checkpoint without an editing encoder: train one with "
                         f"`perchead train --stage edit --init-from {source}` (or pass an editing checkpoint)")
    out = {}
    for k, v in tensors.items():
        if k.startswith(TRAINER_PREFIX):
            out["encoder." + k[len(TRAINER_PREFIX):]] = v
        elif not k.startswith("encoder."):
            out[k] = v
    return out


def load_edit_network(checkpoint: str | Path, clip: str | None = None) -> EditNetwork:
    """``checkpoint``: an editing checkpoint folder / hub id, or "demo" for the bundled one."""
    source = str(checkpoint)
    if source == "demo":
        demo = DEMO_EDIT_CHECKPOINT
        if not (demo / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"the bundled editing demo checkpoint is missing from this installation "
                                    f"({demo} has no {WEIGHTS_NAME}); pass --checkpoint with an editing "
                                    "checkpoint folder (EditNetwork.save_pretrained or `perchead train --stage "
                                    "edit`)")
        source = str(demo)
    return EditNetwork.from_pretrained(source, clip=clip)


__all__ = ["FORMAT", "TRAINER_PREFIX", "EditConfig", "EditNetwork", "load_edit_network"]
