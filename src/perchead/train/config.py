"""Typed training configuration: one :class:`TrainConfig` holds every number of a run.

``perchead train`` builds its options from these dataclasses (tyro), so every field here is a command-line
option (``--optim.lr 3e-4``, ``--data.batch-size 8``, ``model:small --model.image-size 192``). The resolved
config is written to ``<out>/train_config.json`` when a run starts, next to its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

import tyro

from perchead.losses import LOSS_NAMES, LossConfig
from perchead.model import PRESETS, ModelConfig, preset

Stage = Literal["reconstruct", "sharpen", "edit"]
STAGES: tuple[str, ...] = ("reconstruct", "sharpen", "edit")

# On the command line the model is chosen as a preset subcommand (`model:small`) whose fields can then be
# overridden (`--model.image-size 192`); in Python it is a plain ModelConfig.
ModelChoice = Union[tuple(  # noqa: UP007 -- tyro needs a real Union of Annotated members here
    Annotated[ModelConfig, tyro.conf.subcommand(name, default=preset(name))] for name in PRESETS)]

# The loss each stage uses unless --loss-name says otherwise (docs/design.md section 2).
DEFAULT_STAGE_LOSS = {"reconstruct": "perceptual", "sharpen": "sharpen", "edit": "perceptual"}


@dataclass
class DataConfig:
    """Where samples come from and how they are shaped."""

    root: str | None = None
    """dataset folder in perchead's format (docs/data.md), e.g. written by `perchead synth`"""
    train_split: str = "train"
    val_split: str = "val"
    """split the validation grid and loss use; the training split when this one is empty"""
    batch_size: int = 4
    """samples per optimizer step and per process (the global batch is batch_size x processes)"""
    target_views: int = 3
    """target views per multi-view sample besides the input view (the paper: 3)"""
    supervise_input_view: bool = True
    """also render and supervise the input view (the only view of a single-view subject)"""
    studio_fraction: float = 0.8
    """share of samples from multi-view ("studio") subjects when both kinds exist (the mixing ratio)"""
    drop_faceless_inputs: bool = True
    """never use a view without a visible face (e.g. the back) as the input view"""
    render_size: int | None = None
    """side of the rendered and target images; None = the model's input size"""
    num_workers: int = 0
    """DataLoader worker processes per training process"""
    input_shoulders: float = 0.0
    """share of samples whose *input* view gets shoulders in a random clothing colour, painted behind the head
    (the targets keep none): real crops show a torso that synthetic heads lack, and a network that never saw
    one reads hair colour beside the neck, so a dark suit becomes dark hair at the back (issue 27)"""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    """applied to weight matrices only (not biases, norms or embeddings of size 1 per channel)"""
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1
    """the cosine ends at lr x min_lr_ratio at the last step"""
    encoder_lr_scale: float = 1.0
    """learning rate of the 2D encoder (parameters under ``encoder.``) relative to ``lr``"""
    grad_clip: float = 1.0
    """max global gradient norm; 0 disables clipping"""
    bf16: bool = True
    """bf16 autocast for the network on CUDA (ignored on CPU, where bf16 matmuls are slower)"""
    max_bad_steps: int = 5
    """stop the run after this many consecutive steps with a NaN/inf loss or gradient"""


@dataclass
class LogConfig:
    """What the run reports and how often."""

    log_every: int = 10
    """steps between TensorBoard scalar writes (the JSONL step log records every step)"""
    progress: bool = True
    """progress bar with loss and speed (rank 0 only)"""
    tensorboard: bool = True
    """write TensorBoard scalars under <out>/tb when the tensorboard package is installed"""
    val_every: int = 500
    """steps between validation grids (PNG under <out>/val) and validation losses; 0 disables"""
    val_samples: int = 2
    """samples (rows) in the validation grid"""


@dataclass
class MapLossConfig:
    """Edit stage only: terms that make the geometry follow the segmentation maps of the target views
    (issue 16). Each Gaussian takes its class from the input map (``perchead.edit.fidelity.gaussian_labels``,
    fixed within the step); rendered into every target view, its labels must draw that view's exact map and
    its alpha that view's mask. 0 (the default) leaves the stage's image loss alone."""

    label_weight: float = 0.0
    """weight of the mean per-pixel sum_c |rendered label c - the view's one-hot map c|"""
    alpha_weight: float = 0.0
    """weight of the mean |rendered alpha - the view's mask|"""

    @property
    def active(self) -> bool:
        return self.label_weight > 0 or self.alpha_weight > 0


@dataclass
class CheckpointConfig:
    every: int = 1000
    """steps between checkpoints (the last step is always saved)"""
    keep_last: int = 3
    """checkpoints kept on disk; older ones are deleted once a newer one is complete"""


@dataclass
class TrainConfig:
    """One training run of one stage."""

    out: str = "runs/perchead"
    """run folder: train_config.json, checkpoints/, steps.jsonl, val/, tb/"""
    stage: Stage = "reconstruct"
    """reconstruct: whole network; sharpen: SHP-CNN only (3D part frozen); edit: editing encoder (issue 8)"""
    steps: int = 100_000
    """total optimizer steps of the run (a resumed run continues up to this number)"""
    seed: int = 0
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N; under torchrun each process takes its local rank's GPU"""
    resume: str | None = None
    """'auto' (latest checkpoint in <out>, or a fresh start when there is none), or a checkpoint / run folder"""
    init_from: str | None = None
    """model checkpoint folder (or hub id) to start from; its config.json fixes the architecture
    (required by the sharpen and edit stages)"""
    loss_name: str | None = None
    """one of the losses in perchead.losses.LOSS_NAMES; None = the stage's default (perceptual / sharpen)"""
    clip: str | None = None
    """edit stage only: the frozen CLIP whose embeddings are the style, a hub id or a local folder; None =
    openai/clip-vit-base-patch32 (the editing checkpoints of the run name it)"""
    render_backend: Literal["auto", "cpu", "gsplat", "reference"] = "auto"
    model: ModelChoice = field(default_factory=lambda: preset("tiny"))
    """network architecture: a preset (model:tiny, model:small, model:base, model:paper) plus overrides"""
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    map_loss: MapLossConfig = field(default_factory=MapLossConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.stage not in STAGES:
            problems.append(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.clip is not None and self.stage != "edit":
            problems.append(f"clip is used by the edit stage only (this run is stage '{self.stage}')")
        if self.loss_name is not None and self.loss_name not in LOSS_NAMES:
            problems.append(f"loss_name {self.loss_name!r} is not one of {', '.join(LOSS_NAMES)}")
        if self.loss_name == "pixel" and self.loss.pixel_weights_problem():
            problems.append(f"loss: {self.loss.pixel_weights_problem()}")
        ml = self.map_loss
        if not all(math.isfinite(w) and w >= 0 for w in (ml.label_weight, ml.alpha_weight)):
            problems.append("map_loss: label_weight and alpha_weight must be finite and >= 0")
        elif ml.active and self.stage != "edit":
            problems.append(f"map_loss is used by the edit stage only (this run is stage '{self.stage}')")
        elif ml.active and not self.data.supervise_input_view:
            problems.append("map_loss labels the Gaussians from the input view, which needs "
                            "data.supervise_input_view (view 0 of a batch is the input)")
        if self.data.batch_size < 1:
            problems.append(f"data.batch_size must be >= 1, got {self.data.batch_size}")
        if self.data.target_views < 0:
            problems.append(f"data.target_views must be >= 0, got {self.data.target_views}")
        if self.data.target_views == 0 and not self.data.supervise_input_view:
            problems.append("nothing to supervise: data.target_views is 0 and data.supervise_input_view off")
        if not 0.0 <= self.data.studio_fraction <= 1.0:
            problems.append(f"data.studio_fraction must be in [0, 1], got {self.data.studio_fraction}")
        if not 0.0 <= self.data.input_shoulders <= 1.0:
            problems.append(f"data.input_shoulders must be in [0, 1], got {self.data.input_shoulders}")
        if not self.optim.encoder_lr_scale > 0:
            problems.append("optim: encoder_lr_scale must be > 0")
        if self.optim.lr <= 0 or self.optim.warmup_steps < 0 or not 0.0 <= self.optim.min_lr_ratio <= 1.0:
            problems.append("optim: lr must be > 0, warmup_steps >= 0 and min_lr_ratio in [0, 1]")
        if self.optim.max_bad_steps < 1:
            problems.append(f"optim.max_bad_steps must be >= 1, got {self.optim.max_bad_steps}")
        if self.checkpoint.every < 1 or self.checkpoint.keep_last < 1:
            problems.append("checkpoint.every and checkpoint.keep_last must be >= 1")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def resolved_loss_name(self) -> str:
        return self.loss_name or DEFAULT_STAGE_LOSS[self.stage]

    # -- (de)serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, plain JSON types

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (for reading a run's train_config.json)."""
        return _from_dict(cls, data, "train config")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}: written by another perchead version?")
    hints = _type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        # TrainConfig.model is annotated with the tyro preset union; its value is a plain ModelConfig.
        hint = ModelConfig if (cls is TrainConfig and name == "model") else hints[name]
        if hint is ModelConfig:
            value = ModelConfig.from_dict(value)
        elif dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


__all__ = ["DEFAULT_STAGE_LOSS", "STAGES", "CheckpointConfig", "DataConfig", "LogConfig", "ModelConfig",
           "MapLossConfig", "OptimConfig", "Stage", "TrainConfig"]
