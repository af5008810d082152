"""The one place that loads frozen foundation models: DINOv2, the SAM 2.1 image encoder, CLIP.

Each loader takes a Hugging Face hub id (resolved through the local cache, online or offline) or a local
folder written by ``save_pretrained`` / ``huggingface-cli download``. It checks the folder's ``model_type``
before building anything, refuses checkpoints that leave any needed weight uninitialised (transformers
would silently fill those with random values), and returns the model frozen: eval mode, no gradients.
Anything missing ends in one ``WeightsNotFoundError`` that names the model and how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_DINOV2 = "facebook/dinov2-small"
DEFAULT_SAM2 = "facebook/sam2.1-hiera-small"
# The paper does not name its CLIP variant; ViT-B/32 is the lightest of OpenAI's and runs on a laptop CPU.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"

_TRUE = {"1", "on", "yes", "true"}


class FoundationModelError(RuntimeError):
    """A foundation model could not be loaded (base class of the two errors below)."""


class WeightsNotFoundError(FoundationModelError):
    """The weights are neither in the given folder nor in the Hugging Face cache (and cannot be fetched)."""


class WrongModelTypeError(FoundationModelError):
    """The folder or hub id holds a different kind of model than the loader expects."""


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE ask for the cache only (read at call time)."""
    if any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def how_to_get(name_or_path: str) -> str:
    if _looks_like_path(name_or_path):
        return (
            "Pass a folder holding config.json and model.safetensors (e.g. one made by "
            "`huggingface-cli download <hub id> --local-dir <folder>`), or a hub id such as "
            f"{DEFAULT_DINOV2!r}."
        )
    return (
        f"Download it once with `huggingface-cli download {name_or_path}` on a machine with internet (it "
        "lands in the Hugging Face cache, HF_HOME; copy that folder over for offline machines), or pass "
        f"a local folder made with `huggingface-cli download {name_or_path} --local-dir <folder>` instead "
        "of the hub id. No random weights are ever used in their place."
    )


def _looks_like_path(name_or_path: str) -> bool:
    s = str(name_or_path)
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or "\\" in s or Path(s).exists()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else 'no message'}"


def _resolve_local_files_only(local_files_only: bool | None) -> bool:
    return hub_offline() if local_files_only is None else bool(local_files_only)


def _load_config(name_or_path: str, what: str, expected: dict[str, type], local_only: bool, cache_dir):
    from transformers import AutoConfig

    path = Path(str(name_or_path)).expanduser()
    if _looks_like_path(str(name_or_path)):
        if not path.is_dir():
            raise WeightsNotFoundError(f"{what}: folder {str(path)!r} does not exist. {how_to_get(str(path))}")
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(f"{what}: {str(path)!r} has no config.json. {how_to_get(str(path))}")
        name_or_path = str(path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only, cache_dir=cache_dir)
    except OSError as exc:
        offline = " (offline: HF_HUB_OFFLINE or local_files_only is set)" if local_only else ""
        raise WeightsNotFoundError(
            f"{what} {name_or_path!r} not found{offline}: {_first_line(exc)}. {how_to_get(str(name_or_path))}"
        ) from exc
    except ValueError as exc:  # e.g. a model type this transformers version does not know
        raise WrongModelTypeError(f"{what}: cannot read the config of {name_or_path!r}: {_first_line(exc)}") from exc
    if config.model_type not in expected:
        raise WrongModelTypeError(
            f"{name_or_path!r} holds a {config.model_type!r} model, but {what} needs one of "
            f"{sorted(expected)}. Point this setting at the right checkpoint."
        )
    return name_or_path, config


def _from_pretrained(cls, name_or_path: str, config, what: str, local_only: bool, cache_dir, needed: tuple[str, ...]):
    try:
        model, info = cls.from_pretrained(
            name_or_path,
            config=config,
            local_files_only=local_only,
            cache_dir=cache_dir,
            dtype=torch.float32,
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"{what} {name_or_path!r}: the weights could not be loaded ({_first_line(exc)}). "
            f"{how_to_get(str(name_or_path))}"
        ) from exc
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(needed))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise WeightsNotFoundError(
            f"{what} {name_or_path!r}: the checkpoint lacks {len(missing)} weights the loss needs ({shown}); "
            f"refusing to use randomly initialised ones. {how_to_get(str(name_or_path))}"
        )
    return model


def load_dinov2(name_or_path: str = DEFAULT_DINOV2, *, local_files_only: bool | None = None, cache_dir=None):
    """A frozen ``Dinov2Model`` (or ``Dinov2WithRegistersModel`` for ``*-with-registers`` checkpoints)."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    expected = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
    local_only = _resolve_local_files_only(local_files_only)
    name, config = _load_config(name_or_path, "DINOv2", expected, local_only, cache_dir)
    model = _from_pretrained(expected[config.model_type], name, config, "DINOv2", local_only, cache_dir, ("",))
    return freeze(model)


class Sam2ImageEncoder(nn.Module):
    """SAM 2(.1)'s image encoder (Hiera + FPN neck) and no-memory embedding, without prompt and mask heads.

    ``no_memory_embedding`` is the learned vector SAM 2 adds to the lowest-resolution feature map of an
    image that has no memory (any single image); it is ``None`` when the checkpoint only held the vision
    encoder (model_type ``sam2_vision_model``).
    """

    def __init__(self, vision_encoder: nn.Module, no_memory_embedding: torch.Tensor | None, name: str):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.name = name
        if no_memory_embedding is None:
            self.no_memory_embedding = None
        else:
            self.no_memory_embedding = nn.Parameter(no_memory_embedding.detach().reshape(-1).clone())

    @property
    def config(self):
        return self.vision_encoder.config


def load_sam2_vision(
    name_or_path: str = DEFAULT_SAM2, *, local_files_only: bool | None = None, cache_dir=None
) -> Sam2ImageEncoder:
    """The frozen SAM 2.1 image encoder of a ``sam2`` / ``sam2_video`` / ``sam2_vision_model`` checkpoint."""
    from transformers import Sam2Model, Sam2VisionModel

    # transformers-format SAM 2.1 checkpoints are `sam2` or `sam2_video` ones; Sam2Model reads both (it skips
    # the video memory weights, which the loss does not use).
    expected = {"sam2": Sam2Model, "sam2_video": Sam2Model, "sam2_vision_model": Sam2VisionModel}
    local_only = _resolve_local_files_only(local_files_only)
    name, config = _load_config(name_or_path, "SAM 2.1 image encoder", expected, local_only, cache_dir)
    if config.model_type == "sam2_vision_model":
        vision = _from_pretrained(Sam2VisionModel, name, config, "SAM 2.1", local_only, cache_dir, ("",))
        encoder = Sam2ImageEncoder(vision, None, str(name_or_path))
    else:
        needed = ("vision_encoder.", "no_memory_embedding")
        full = _from_pretrained(Sam2Model, name, config, "SAM 2.1", local_only, cache_dir, needed)
        encoder = Sam2ImageEncoder(full.vision_encoder, full.no_memory_embedding, str(name_or_path))
        del full  # prompt encoder and mask decoder are not needed by the loss
    return freeze(encoder)


@dataclass
class ClipModels:
    """A frozen ``CLIPModel`` and its tokenizer, loaded from the same checkpoint."""

    model: nn.Module
    tokenizer: object
    name: str

    def to(self, device) -> ClipModels:
        self.model.to(device)
        return self


def load_clip(name_or_path: str = DEFAULT_CLIP, *, local_files_only: bool | None = None, cache_dir=None) -> ClipModels:
    """Frozen CLIP image and text encoders (one ``CLIPModel``) plus the checkpoint's tokenizer."""
    from transformers import CLIPModel, CLIPTokenizer

    expected = {"clip": CLIPModel}
    local_only = _resolve_local_files_only(local_files_only)
    name, config = _load_config(name_or_path, "CLIP", expected, local_only, cache_dir)
    model = _from_pretrained(CLIPModel, name, config, "CLIP", local_only, cache_dir, ("",))
    try:
        tokenizer = CLIPTokenizer.from_pretrained(name, local_files_only=local_only, cache_dir=cache_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsNotFoundError(
            f"CLIP {name_or_path!r}: its tokenizer files (tokenizer.json or vocab.json + merges.txt) "
            f"could not be loaded ({_first_line(exc)}). "
            f"{how_to_get(str(name_or_path))}"
        ) from exc
    return ClipModels(freeze(model), tokenizer, str(name_or_path))


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module
