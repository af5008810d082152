"""Converters from public head datasets into the perchead format (docs/data.md)."""

from __future__ import annotations

from pathlib import Path

from .ava256 import AVA256_TEST_IDS, Ava256Config, convert_ava256
from .cafca import CafcaConfig, convert_cafca
from .common import ConversionReport, canonical_rig, look_at_center
from .ffhq import FFHQConfig, convert_ffhq, load_eg3d_labels
from .nersemble import NERSEMBLE_TEST_IDS, NeRSembleConfig, convert_nersemble

_CONVERTERS = {"nersemble": (convert_nersemble, NeRSembleConfig), "cafca": (convert_cafca, CafcaConfig),
               "ffhq": (convert_ffhq, FFHQConfig), "ava256": (convert_ava256, Ava256Config)}


def convert_dataset(source: str, src: str | Path, out: str | Path, size: int | None = 512,
                    progress: bool = True) -> ConversionReport:
    """Convert ``src`` laid out as ``source`` (nersemble, cafca, ffhq, ava256) with default settings."""
    if source not in _CONVERTERS:
        raise ValueError(f"unknown dataset {source!r}; choose one of {', '.join(_CONVERTERS)}")
    fn, cfg_cls = _CONVERTERS[source]
    return fn(src, out, cfg_cls(max_side=size), progress)


__all__ = ["AVA256_TEST_IDS", "NERSEMBLE_TEST_IDS", "Ava256Config", "CafcaConfig", "ConversionReport",
           "FFHQConfig", "NeRSembleConfig", "canonical_rig", "convert_ava256", "convert_cafca", "convert_dataset",
           "convert_ffhq", "convert_nersemble", "load_eg3d_labels", "look_at_center"]
