"""Training checkpoints that survive a kill at any instant.

Layout of ``<out>/checkpoints``::

    step_00001000/
      config.json          model architecture   } written by PercHead.save_pretrained: the folder is also
      model.safetensors    model weights        } a model checkpoint that PercHead.from_pretrained loads
      train_state.pt       optimizer, scheduler, step, counters, every rank's RNG states
      train_config.json    the training config that wrote it (provenance only)
    latest                 one line: the name of the newest complete checkpoint folder

A checkpoint is written into a hidden temporary folder, flushed to disk, then renamed into place in one
``os.replace``; only after that does ``latest`` (itself replaced atomically) point at it, and only then are
checkpoints beyond the newest ``keep_last`` deleted. A kill at any moment leaves either the old or the new
checkpoint complete, never half of one.

``train_state.pt`` is written with ``torch.save`` but read only with ``torch.load(weights_only=True)``: it
holds nothing but tensors, numbers, strings, lists, tuples and dicts (numpy's RNG state is converted to a
tensor), so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perchead.io.atomic import atomic_write_text
from perchead.model import PercHead
from perchead.model.perchead_model import CONFIG_NAME, WEIGHTS_NAME

STATE_NAME = "train_state.pt"
LATEST_NAME = "latest"
STATE_FORMAT = "perchead-train-state"
STATE_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# -- RNG states ---------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Every random generator a training step draws from, in weights_only-loadable types."""
    # numpy's legacy global generator is the one third-party code draws from, so it is the one to save.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- writing ------------------------------------------------------------------------------------------------
def _fsync_tree(folder: Path) -> None:
    """Flush the files of a finished checkpoint so the rename never publishes data still in flight."""
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(folder: str | Path, model: PercHead, train_state: dict[str, Any], keep_last: int,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write ``<folder>/step_XXXXXXXX`` atomically, point ``latest`` at it, prune old ones. Rank 0 only.
    ``extra_files``: small text files to put in the folder too (e.g. the run's config, for provenance)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    step = int(train_state["step"])
    final = folder / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder))
    try:
        model.save_pretrained(tmp)
        torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **train_state}, tmp / STATE_NAME)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _fsync_tree(tmp)
        if final.exists():
            # The same step saved again (a resumed run redoing steps): swap the old folder out first,
            # because a directory cannot be renamed onto a non-empty one.
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=folder))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(folder / LATEST_NAME, final.name + "\n", fsync=True)
    prune(folder, keep_last)
    return final


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary folders of an interrupted save are not)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints and leftovers of interrupted saves."""
    latest = read_latest(folder)
    for path in list_checkpoints(folder)[:-keep_last]:
        if latest is None or path.resolve() != latest.resolve():
            shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(".step_*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def read_latest(folder: str | Path) -> Path | None:
    """The checkpoint ``latest`` names, or None when there is no pointer yet."""
    pointer = Path(folder) / LATEST_NAME
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not _STEP_DIR.match(name):
        raise ValueError(f"{pointer} is damaged (it should name a step_XXXXXXXX folder, it says {name[:40]!r}); "
                         f"resume from one of {[p.name for p in list_checkpoints(folder)]} explicitly")
    path = Path(folder) / name
    if not path.is_dir():
        raise ValueError(f"{pointer} names {name}, which does not exist; resume from one of "
                         f"{[p.name for p in list_checkpoints(folder)]} explicitly")
    return path


# -- reading ------------------------------------------------------------------------------------------------
@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def step(self) -> int:
        return int(self.state["step"])


def resolve_resume(resume: str, out: str | Path) -> Path | None:
    """The checkpoint folder ``--resume`` means: 'auto' = the latest in ``out`` (None when the run has none);
    a path = that checkpoint, or the latest of that run / checkpoints folder."""
    if resume == "auto":
        return read_latest(Path(out) / "checkpoints")
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint or run folder")
    if (path / STATE_NAME).is_file() or (path / WEIGHTS_NAME).is_file():
        return path
    for folder in (path, path / "checkpoints"):
        latest = read_latest(folder)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {STATE_NAME}) and no "
                            f"'{LATEST_NAME}' pointer in it or in its checkpoints/ folder")


def load_train_state(path: str | Path) -> LoadedCheckpoint:
    """Read and check ``train_state.pt`` of a checkpoint folder (weights are loaded by the model)."""
    path = Path(path)
    others = [p.name for p in list_checkpoints(path.parent) if p != path]
    hint = f"; older checkpoints there: {others}" if others else ""
    state_path = path / STATE_NAME
    for required in (state_path, path / WEIGHTS_NAME, path / CONFIG_NAME):
        if not required.is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {required.name} is missing{hint}")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bit rot, or a pickle of arbitrary objects (refused)
        size = state_path.stat().st_size
        raise ValueError(f"checkpoint {state_path} ({size} bytes) is truncated or corrupt, or holds objects "
                         f"that are not plain tensors and numbers ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}); resume from an older checkpoint with "
                         f"--resume PATH{hint}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{state_path} is not a perchead training state (no format '{STATE_FORMAT}')")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise ValueError(f"{state_path} has version {state['version']}; this perchead reads up to "
                         f"{STATE_VERSION}: upgrade perchead")
    missing = [k for k in ("step", "optimizer", "scheduler", "rng", "stage") if k not in state]
    if missing:
        raise ValueError(f"{state_path} lacks {missing}: not a complete training state")
    return LoadedCheckpoint(path, state)


__all__ = ["LATEST_NAME", "STATE_NAME", "LoadedCheckpoint", "capture_rng", "list_checkpoints",
           "load_train_state", "prune", "read_latest", "resolve_resume", "restore_rng", "save_checkpoint",
           "step_dir_name"]
