"""The PercHead network: portrait + mask -> 3D Gaussians, and its checkpoints.

A checkpoint is a folder with ``config.json`` (the :class:`ModelConfig`) and ``model.safetensors`` (every
trained weight plus the template buffers, so it is self-contained). The frozen DINOv2 weights are *not*
stored: the config names them (hub id or folder) and loading fetches them from there, or from the folder
given as ``dino=``. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from perchead.geometry import Gaussians
from perchead.io.atomic import atomic_output

from .config import ModelConfig
from .decoder import Decoder
from .encoder import ImageEncoder, ImageTokens
from .heads import GaussianHeads
from .shp_cnn import ShpCnn
from .template import HeadTemplate

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "perchead-model"
FORMAT_VERSION = 1
_DINO_PREFIX = "encoder.dino."


class PercHead(nn.Module):
    def __init__(self, config: ModelConfig, template: HeadTemplate | None = None,
                 dino: nn.Module | None = None) -> None:
        """``template``: defaults to the built-in head surface (FLAME: ``HeadTemplate.from_flame``).
        ``dino``: an already-loaded DINOv2 module instead of loading ``config.dino``."""
        super().__init__()
        if template is None:
            if config.template != "builtin":
                raise ValueError(f"config.template is {config.template!r}: pass that template explicitly "
                                 "(HeadTemplate.from_flame(...)) or load a checkpoint, which stores it")
            template = HeadTemplate.builtin(config.template_resolution)
        if template.resolution != config.template_resolution:
            raise ValueError(f"template is {template.resolution}x{template.resolution} but the config wants "
                             f"{config.template_resolution}x{config.template_resolution}")
        self.config = config
        self.template = template
        self.encoder = ImageEncoder(config, dino)
        if config.decoder == "lifting":  # the 2D-lifting baseline (perchead.model.lifting)
            from .lifting import LiftingDecoder, LiftingHeads

            self.decoder: nn.Module = LiftingDecoder(config)
            self.heads: nn.Module = LiftingHeads(config, template)
        else:
            self.decoder = Decoder(config)
            self.heads = GaussianHeads(config, template)
        self.shp_cnn = ShpCnn(config.shp_channels, config.shp_blocks) if config.shp_cnn else None

    # -- inference ----------------------------------------------------------------------------------------
    def forward(self, image: Tensor, mask: Tensor, camera: tuple[Tensor, Tensor] | None = None) -> Gaussians:
        """image [B, 3, S, S] RGB in [0, 1], mask [B, 1, S, S] (or [B, S, S]) foreground in [0, 1]
        -> Gaussians with batch shape [B] and ``config.num_gaussians`` per head.

        ``camera``: the input view's (world-to-camera [B, 4, 4], intrinsics [B, 3, 3] in input-crop pixels).
        Only the lifting decoder uses it (default: the standard input camera); the template decoder infers
        the head's pose from the image and ignores it."""
        return self.decode(self.encode(image, mask), camera=camera)

    def encode(self, image: Tensor, mask: Tensor) -> ImageTokens:
        return self.encoder(image, mask)

    def initial_tokens(self) -> Tensor:
        """[T, width] template token embeddings (the decoder's input before any image information)."""
        if self.config.decoder != "template":
            raise ValueError(f"a '{self.config.decoder}' decoder has no template tokens")
        return self.decoder.embed(self.template)

    def decode(self, image_tokens: ImageTokens, initial_tokens: Tensor | None = None,
               camera: tuple[Tensor, Tensor] | None = None) -> Gaussians:
        if self.config.decoder == "lifting":
            from .lifting import resolve_cameras

            if initial_tokens is not None:
                raise ValueError("the lifting decoder has no template tokens: initial_tokens must be None")
            viewmats, Ks = resolve_cameras(self.config, camera, image_tokens.tokens.shape[0],
                                           image_tokens.tokens.device)
            return self.heads(self.decoder(image_tokens), image_tokens, viewmats, Ks)
        tokens = self.initial_tokens() if initial_tokens is None else initial_tokens
        features = self.decoder(*self.context(image_tokens), tokens)
        return self.heads(features, self.template, image_tokens)

    @staticmethod
    def context(image_tokens: ImageTokens) -> tuple[Tensor, Tensor]:
        """The 2D tokens the template decoder attends to and their key mask: the patch tokens, then the
        image-level token when the encoder made one."""
        if image_tokens.global_token is None:
            return image_tokens.tokens, image_tokens.valid
        g = image_tokens.global_token
        ones = torch.ones(g.shape[0], 1, dtype=torch.bool, device=g.device)
        return torch.cat([image_tokens.tokens, g], 1), torch.cat([image_tokens.valid, ones], 1)

    def sharpen(self, rgb: Tensor) -> Tensor:
        """SHP-CNN on rendered images [B, 3, H, W]; the identity when the config disables it."""
        return rgb if self.shp_cnn is None else self.shp_cnn(rgb)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything a checkpoint stores: all weights and template buffers except the frozen DINOv2."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(_DINO_PREFIX)}

    def parameter_counts(self) -> list[tuple[str, int, int]]:
        """(part, trainable, frozen) parameter counts."""
        parts = {"encoder.vit": "trainable ViT", "encoder.dino": "DINOv2 (frozen)",
                 "encoder.fuse": "fusion MLP",
                 "decoder.embed": "token embedding", "decoder": "decoder layers", "heads": "Gaussian heads",
                 "shp_cnn": "SHP-CNN"}
        counts = {label: [0, 0] for label in parts.values()}
        for name, p in self.named_parameters():
            label = next(lbl for prefix, lbl in parts.items() if name.startswith(prefix + "."))
            counts[label][0 if p.requires_grad else 1] += p.numel()
        return [(label, t, f) for label, (t, f) in counts.items() if t or f]

    # -- checkpoints --------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (each replaced atomically)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.trainable_state_dict().items()}
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "preset": self.config.preset}
        with atomic_output(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.config.to_dict()}
        with atomic_output(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, source: str | Path, dino: str | nn.Module | None = None,
                        revision: str | None = None, map_location: str | torch.device = "cpu") -> PercHead:
        """Load a checkpoint from a local folder or a Hugging Face hub id (``owner/name``).

        ``dino``: a hub id or folder that replaces the DINOv2 named in the config (e.g. your local copy),
        or an already-loaded DINOv2 module.
        """
        config_path, weights_path = checkpoint_files(source, revision)
        config = read_config(config_path)
        dino_module = dino if isinstance(dino, nn.Module) else None
        if dino is not None and config.dino is None:
            raise ValueError(f"checkpoint {source} has no DINOv2 branch (config dino=None): drop dino=")
        if isinstance(dino, str | Path):
            config = config.replace(dino=str(dino))
        model = cls(config, template=HeadTemplate.placeholder(config.template_resolution), dino=dino_module)
        model.load_weights(weights_path)
        return model.to(map_location)

    def load_weights(self, path: str | Path, strict: bool = True) -> None:
        """Load ``model.safetensors`` into this model, with a clear error for a file of another
        architecture, a damaged file, or missing / unexpected tensors. ``strict=False`` loads the tensors
        whose names and shapes match (e.g. to start editing from reconstruction weights) and ignores the
        rest."""
        tensors, meta = read_weights(path)
        own = self.trainable_state_dict()
        ckpt_preset = meta.get("preset", "unknown")
        where = f"{path} (preset '{ckpt_preset}') into a '{self.config.preset}' model"
        mismatched = [k for k in tensors if k in own and tensors[k].shape != own[k].shape]
        if mismatched and strict:
            k = mismatched[0]
            raise ValueError(f"cannot load {where}: tensor '{k}' has shape {tuple(tensors[k].shape)} in the "
                             f"file but {tuple(own[k].shape)} in the model ({len(mismatched)} tensor(s) "
                             "differ): the checkpoint was made for another preset/config")
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(f"cannot load {where}: {len(missing)} missing tensor(s) {missing[:5]}, "
                             f"{len(unexpected)} unexpected tensor(s) {unexpected[:5]}")
        usable = {k: v for k, v in tensors.items() if k in own and k not in mismatched}
        self.load_state_dict(usable, strict=False)


# -- files ----------------------------------------------------------------------------------------------
def read_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a perchead model config (no \"format\": \"{FORMAT}\")")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {data['format_version']}; this perchead reads up to "
                         f"{FORMAT_VERSION}: upgrade perchead")
    return ModelConfig.from_dict({k: v for k, v in data.items() if k not in ("format", "format_version")})


def read_weights(path: str | Path, fmt: str = FORMAT) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with errors that say what is wrong with it (``fmt``: the
    ``format`` its metadata must name, when it names one)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (a checkpoint folder holds {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME})")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        size = path.stat().st_size
        raise ValueError(f"{path} ({size} bytes) is truncated or not a safetensors file: {exc}; "
                         "re-download or re-save the checkpoint") from exc
    if meta.get("format") not in (None, fmt):
        raise ValueError(f"{path} holds '{meta.get('format')}' weights, not '{fmt}' weights")
    return tensors, meta


def checkpoint_files(source: str | Path, revision: str | None = None) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a checkpoint folder, or of a hub id (``owner/name``, fetched into
    the Hugging Face cache). The weights file of a folder may be missing: its reader says so."""
    path = Path(source)
    if path.is_dir():
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: not a perchead checkpoint folder")
        return config_path, path / WEIGHTS_NAME
    if path.exists():
        raise ValueError(f"{path} is a file; from_pretrained wants the checkpoint folder (or a hub id)")
    text = str(source)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"checkpoint folder {path} not found (and it is not a hub id 'owner/name')")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    files = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files.append(Path(hf_hub_download(text, name, revision=revision)))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            raise FileNotFoundError(f"cannot get {name} of checkpoint '{text}' from the Hugging Face hub or "
                                    f"its local cache: {exc}") from exc
    return files[0], files[1]
