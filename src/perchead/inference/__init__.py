"""Inference: photos, folders and videos -> 3D Gaussian heads, renders and files (``perchead reconstruct``).

See docs/reconstruct.md.
"""

from .fit import FitConfig, FitDivergedError, FitResult, densify, fit_to_photo
from .pose import Pose, estimate_pose
from .reconstruct import (
    DEMO_CHECKPOINT,
    PHOTO_FILES,
    STAGES,
    Progress,
    ReconstructConfig,
    Reconstruction,
    Reconstructor,
    StageTimes,
    load_model,
    no_progress,
    set_threads,
    staged_output,
)
from .tune import fit_network, tune_network
from .video import VIDEO_SUFFIXES, VideoResult, is_video, reconstruct_video

__all__ = ["DEMO_CHECKPOINT", "PHOTO_FILES", "STAGES", "VIDEO_SUFFIXES", "FitConfig", "FitDivergedError", "FitResult",
           "Pose", "Progress", "ReconstructConfig", "densify", "estimate_pose", "fit_network", "fit_to_photo",
           "Reconstruction", "Reconstructor", "StageTimes", "VideoResult", "is_video", "load_model",
           "no_progress", "reconstruct_video", "set_threads", "staged_output", "tune_network"]
