"""The input camera of a photo, relative to the predicted (canonical) head.

The network predicts the head in its canonical frame (face towards +z), but a photo is not always frontal. The
input camera is modelled as the one the preprocessing crop and the training data assume -- an orbit camera at
the standard radius and field of view looking at the head centre -- with an unknown yaw and pitch.

:func:`estimate_pose` finds them in one of two ways:

* ``landmarks`` (when MediaPipe Face Mesh finds the face and the landmark yaw is within
  :data:`~perchead.inference.pose_net.LANDMARK_MAX_YAW_DEG`): its 478 landmarks are matched with a 3D model of
  where they lie on a head in the canonical frame (``assets/face_landmarks_3d.npy``, built from train-split
  synthetic heads by ``scripts/make_landmark_model.py``) and OpenCV's RANSAC PnP gives the camera; its centre's
  direction is the yaw and pitch. Measured on held-out synthetic heads: within 5 degrees at 0 and +-30 degrees
  of yaw on the subjects of tests/test_fit.py, 8.8 at most at +-30 over those of benchmarks/bench_pose.py.
  Beyond ~45 degrees Face Mesh regresses a less turned face (47-62 at a true 60) or finds none.
* ``pose_net`` (a turned head, a profile, the back of a head): the small CNN of
  :mod:`perchead.inference.pose_net`, trained on synthetic renders from every side, reads yaw and pitch from
  the matted photo.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from ..geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, focal_from_fov, intrinsics, orbit_viewmats
from ..io import to_uint8

LANDMARK_MODEL = Path(__file__).resolve().parents[1] / "assets" / "face_landmarks_3d.npy"
"""[478, 3] float32: MediaPipe Face Mesh landmarks on a head in the canonical frame (metres)."""


@dataclass
class Pose:
    """The input camera: an orbit camera at the standard radius and field of view (yaw 0 = frontal)."""

    yaw_deg: float
    pitch_deg: float
    method: str = "frontal"
    """landmarks | pose_net | frontal (not estimated: the standard camera) | given"""
    loss: float = math.nan
    """landmarks: the RANSAC inlier share (higher is better); pose_net: none"""

    @property
    def viewmat(self) -> Tensor:
        return orbit_viewmats([self.yaw_deg], [self.pitch_deg], HEAD_CAMERA_RADIUS)[0]

    def metadata(self, size: int) -> dict:
        """``reconstruction.json``'s ``input_camera``: K and viewmat at ``size`` pixels, and the angles."""
        return {"K": camera_K(size).tolist(), "viewmat": self.viewmat.tolist(), "width": size, "height": size,
                "yaw_deg": round(self.yaw_deg, 3), "pitch_deg": round(self.pitch_deg, 3),
                "radius_m": HEAD_CAMERA_RADIUS, "fov_deg": HEAD_CAMERA_FOV_DEG, "method": self.method,
                "score": None if math.isnan(self.loss) else round(self.loss, 5)}


def camera_K(size: int) -> Tensor:
    """Intrinsics of the standard head camera at ``size`` pixels (what the preprocessing crop assumes)."""
    return intrinsics(focal_from_fov(HEAD_CAMERA_FOV_DEG, size), width=size, height=size)


def resize_to(image: Tensor, size: int) -> Tensor:
    """[..., C, H, W] -> [..., C, size, size] (antialiased bilinear, as the training data)."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    flat = image.reshape(-1, *image.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*image.shape[:-2], size, size)


# -- landmarks + PnP -----------------------------------------------------------------------------------------
@functools.cache
def landmark_model() -> np.ndarray:
    if not LANDMARK_MODEL.is_file():
        raise FileNotFoundError(f"{LANDMARK_MODEL} is missing from this installation; rebuild it with "
                                "`python scripts/make_landmark_model.py`")
    return np.load(LANDMARK_MODEL).astype(np.float64)


def pose_from_landmarks(points: np.ndarray, size: int) -> Pose | None:
    """Yaw/pitch of the camera from [478, 2] Face Mesh landmarks in a ``size`` px crop (RANSAC PnP against
    :func:`landmark_model`, started from the frontal camera), or None when PnP fails."""
    import cv2

    model = landmark_model()
    K = camera_K(size).double().numpy()
    start = orbit_viewmats([0.0], [0.0], HEAD_CAMERA_RADIUS)[0].double().numpy()
    rvec, _ = cv2.Rodrigues(start[:3, :3])
    tvec = start[:3, 3:].copy()
    # 1% of the crop: Face Mesh's landmark noise on a clear face, well below the face's own size.
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(model, points.astype(np.float64), K, None, rvec, tvec,
                                                 useExtrinsicGuess=True, reprojectionError=0.012 * size,
                                                 iterationsCount=200)
    if not ok or inliers is None or len(inliers) < 20:
        return None
    rot, _ = cv2.Rodrigues(rvec)
    centre = (-rot.T @ tvec).ravel()  # camera centre in the head frame
    yaw = math.degrees(math.atan2(centre[0], centre[2]))
    pitch = math.degrees(math.atan2(centre[1], math.hypot(centre[0], centre[2])))
    return Pose(yaw, pitch, "landmarks", len(inliers) / len(points))


def estimate_pose(image: Tensor, mask: Tensor) -> Pose:
    """The input camera of ``image`` [3, S, S] (matted on white, in [0, 1]) with ``mask`` [1, S, S], relative
    to the canonical head: from Face Mesh landmarks when it finds the face turned by at most
    :data:`~perchead.inference.pose_net.LANDMARK_MAX_YAW_DEG`, else from the pose net (also when the pose net
    reads a near-profile on the side the landmarks saw: :data:`~perchead.inference.pose_net.NET_PROFILE_YAW_DEG`)."""
    from ..preprocess.detect import face_mesh_landmarks
    from .pose_net import LANDMARK_MAX_YAW_DEG, NET_PROFILE_YAW_DEG, pose_from_net

    net_yaw, net_pitch = pose_from_net(image, mask)
    points = face_mesh_landmarks(np.ascontiguousarray(to_uint8(image.permute(1, 2, 0))))
    pose = None if points is None else pose_from_landmarks(points, image.shape[-1])
    if pose is not None and abs(pose.yaw_deg) <= LANDMARK_MAX_YAW_DEG:
        near_profile = abs(net_yaw) >= NET_PROFILE_YAW_DEG and net_yaw * pose.yaw_deg > 0
        if not near_profile:
            return pose
    return Pose(net_yaw, net_pitch, "pose_net")


__all__ = ["LANDMARK_MODEL", "Pose", "camera_K", "estimate_pose", "landmark_model", "pose_from_landmarks",
           "resize_to"]
