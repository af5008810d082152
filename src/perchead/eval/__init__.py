"""Evaluation: metrics with pinned settings and the novel / extreme / opposite-profile protocol (docs/evaluation.md).

    from perchead.eval import MetricSuite, extreme_view_pairs, views_from_cameras
    suite = MetricSuite(["psnr", "ssim", "lpips", "id_dlib"])   # unavailable ones: a message, empty column
    suite.update(pred, target, mask, info=[{"subject": "nersemble_059", "target": "cam_222200037"}])
    print(suite.report())
"""

from .metrics import (
    METRICS,
    PAPER_METRICS,
    ArcFaceMetric,
    DlibIdentityMetric,
    DreamSimMetric,
    LPIPSMetric,
    Metric,
    MetricConfig,
    MetricSuite,
    MetricUnavailable,
    MetricValues,
    PSNRMetric,
    SSIMMetric,
    as_image_batch,
    as_mask_batch,
    available_metrics,
    build_metric,
    psnr,
    ssim,
)
from .protocol import (
    AVA256_HELD_OUT,
    AVA256_HELD_OUT_COUNT,
    BACKGROUND,
    CROP_CONVENTIONS,
    GROUPS,
    NERSEMBLE_HELD_OUT,
    TASKS,
    ProtocolConfig,
    TargetCrop,
    View,
    ViewPair,
    angle_between,
    describe_protocol,
    extreme_view_pairs,
    held_out_subjects,
    novel_view_pairs,
    opposite_profile_pairs,
    target_crop,
    task_group,
    view_pairs,
    views_from_cameras,
)

__all__ = [
    "AVA256_HELD_OUT", "AVA256_HELD_OUT_COUNT", "BACKGROUND", "CROP_CONVENTIONS", "GROUPS", "METRICS",
    "NERSEMBLE_HELD_OUT", "TASKS", "PAPER_METRICS", "ArcFaceMetric", "DlibIdentityMetric", "DreamSimMetric",
    "LPIPSMetric", "Metric",
    "MetricConfig", "MetricSuite", "MetricUnavailable", "MetricValues", "PSNRMetric", "ProtocolConfig",
    "SSIMMetric", "TargetCrop", "View", "ViewPair", "angle_between", "as_image_batch", "as_mask_batch",
    "available_metrics", "build_metric", "describe_protocol", "extreme_view_pairs", "held_out_subjects",
    "novel_view_pairs", "opposite_profile_pairs", "psnr", "ssim", "target_crop", "task_group", "view_pairs",
    "views_from_cameras",
]
