"""Training: the three-stage trainer (reconstruct, sharpen, edit), crash-safe checkpoints and resume, and
multi-process (torchrun / DDP) runs. See docs/training.md."""

from .checkpoint import LoadedCheckpoint, list_checkpoints, load_train_state, read_latest, save_checkpoint
from .config import CheckpointConfig, DataConfig, LogConfig, MapLossConfig, OptimConfig, TrainConfig
from .trainer import NonFiniteLossError, Trainer, TrainResult, TrainStep, read_step_log, train

__all__ = ["CheckpointConfig", "DataConfig", "LoadedCheckpoint", "LogConfig", "MapLossConfig", "NonFiniteLossError",
           "OptimConfig", "TrainConfig", "TrainResult", "TrainStep", "Trainer", "list_checkpoints",
           "load_train_state", "read_latest", "read_step_log", "save_checkpoint", "train"]
