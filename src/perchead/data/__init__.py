"""Datasets: the on-disk format, synthetic heads, converters for public datasets and the training sampler."""

from .format import (
    SEGMENT_CLASSES,
    DatasetFormatError,
    HeadDataset,
    LoadedView,
    SubjectRecord,
    ViewData,
    ViewRecord,
    load_view,
    read_dataset,
    read_subject,
    write_index,
    write_subject,
)
from .sampler import HeadViewsDataset, SamplerConfig, collate_views

__all__ = ["SEGMENT_CLASSES", "DatasetFormatError", "HeadDataset", "HeadViewsDataset", "LoadedView",
           "SamplerConfig", "SubjectRecord", "ViewData", "ViewRecord", "collate_views", "load_view", "read_dataset",
           "read_subject", "write_index", "write_subject"]
