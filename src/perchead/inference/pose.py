"""The input camera of a photo, relative to the predicted (canonical) head.

The network predicts the head in its canonical frame (face towards +z), but a photo is not always frontal. The
input camera is modelled as the one the preprocessing crop and the training data assume -- an orbit camera at
the standard radius and field of view looking at the head centre -- with an unknown yaw and pitch.

:func:`estimate_pose` reads them in two ways and weighs one against the other (:func:`fuse`):

* ``landmarks``: MediaPipe Face Mesh's 478 landmarks matched with a 3D model of where they lie on a head in the
  canonical frame (``assets/face_landmarks_3d.npy``, built from train-split synthetic heads by
  ``scripts/make_landmark_model.py``); OpenCV's RANSAC PnP gives the camera, its centre's direction the yaw and
  pitch. Face Mesh was trained on real faces, so on a real near-frontal photo it is the reading to trust; but
  beyond ~30 degrees it regresses a less turned face (a true 60 read as 35-48; on an Intel machine one held-out
  head turned 60 was read at 39.9, where the same head reads otherwise here) or finds none.
* ``pose_net``: the small CNN of :mod:`perchead.inference.pose_net`, trained on synthetic renders from every
  side; it reads turned heads, profiles and backs, but has seen only procedural heads (on the astronaut it
  reads -13.8 degrees where Face Mesh reads -0.1).

There is no hard switch on one method's reading: near a threshold a switch turns a small change in a reading
(another CPU, another photo) into a 20 degree jump. The landmarks' weight falls smoothly with how turned
*either* method reads the head, and near frontal it rises from an even average (where the two agree) to the
landmarks alone (where they disagree, which on a near-frontal photo means the net is out of its domain). Where
Face Mesh reads the head clearly *more* turned than the net, Face Mesh counts alone: that is not its failure,
but the net's on real turned photos.
benchmarks/bench_pose.py prints the error of each method and of the combination per true yaw.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
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
    """landmarks | pose_net | landmarks+pose_net (a weighted mean of the two) | frontal (not estimated: the
    standard camera) | given"""
    loss: float = math.nan
    """landmarks: the RANSAC inlier share (higher is better); otherwise none"""
    readings: dict[str, float] = field(default_factory=dict)
    """what :func:`estimate_pose` weighed: each method's yaw and pitch and the landmarks' weight"""
    shift_m: float = 0.0
    """metres the camera is moved sideways (along its own x axis) from the orbit camera: the photo's crop is
    centred between the eyes, which on a turned face is not in front of the head's centre
    (:func:`perchead.inference.fit.align_midline`)"""

    @property
    def viewmat(self) -> Tensor:
        vm = orbit_viewmats([self.yaw_deg], [self.pitch_deg], HEAD_CAMERA_RADIUS)[0]
        if self.shift_m:
            vm = vm.clone()
            vm[0, 3] += self.shift_m
        return vm

    def metadata(self, size: int) -> dict:
        """``reconstruction.json``'s ``input_camera``: K and viewmat at ``size`` pixels, and the angles."""
        return {"K": camera_K(size).tolist(), "viewmat": self.viewmat.tolist(), "width": size, "height": size,
                "yaw_deg": round(self.yaw_deg, 3), "pitch_deg": round(self.pitch_deg, 3),
                "radius_m": HEAD_CAMERA_RADIUS, "fov_deg": HEAD_CAMERA_FOV_DEG, "method": self.method,
                "shift_mm": round(self.shift_m * 1000, 2),
                "score": None if math.isnan(self.loss) else round(self.loss, 5),
                **{k: round(v, 3) for k, v in self.readings.items()}}


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
    yaw, pitch = centre_angles((-rot.T @ tvec).ravel())
    return Pose(yaw, pitch, "landmarks", len(inliers) / len(points))


def centre_angles(centre) -> tuple[float, float]:
    """Yaw and pitch (degrees, :func:`~perchead.geometry.orbit_viewmats`' convention) of a camera centre (x, y, z)
    in the head frame."""
    x, y, z = (float(v) for v in centre)
    return math.degrees(math.atan2(x, z)), math.degrees(math.atan2(y, math.hypot(x, z)))


FRONTAL_TURN_DEG = (20.0, 40.0)
"""The landmarks' weight falls from full to none as the more turned of the two readings goes from 20 to 40
degrees (benchmarks/bench_pose.py, docs/reconstruct.md: Face Mesh + PnP errs up to 8-9 degrees at a true 30, up
to 18-31 at 45 and 20-59 at 60, the pose net up to 3-6 there)."""

AGREEMENT_DEG = (8.0, 15.0)
"""Near frontal, readings within 8 degrees of each other are averaged; from 15 degrees apart the landmarks
alone count (the astronaut: Face Mesh -0.1, the net -13.8)."""

OVER_READ_DEG = (12.0, 22.0)
"""Where Face Mesh reads the head *more* turned than the net by 12 to 22 degrees or more, its weight rises to
full, however turned: Face Mesh's known failure is to read a less turned face (on held-out synthetic heads it
read at most 11 degrees more turned than the net), while the net, trained on procedural heads only, reads real
turned photos as frontal (a standing man Face Mesh reads at 53 degrees, the net at -3)."""


def _falling(x: float, lo: float, hi: float) -> float:
    """1 at x <= lo, 0 at x >= hi, a smoothstep between (no kink for a reading to sit on)."""
    t = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def landmark_weight(landmark_yaw: float, net_yaw: float) -> float:
    """How much of the landmarks' reading goes into the estimate (0..1); see :data:`FRONTAL_TURN_DEG`,
    :data:`AGREEMENT_DEG` and :data:`OVER_READ_DEG`."""
    from .pose_net import yaw_error

    apart = float(yaw_error(landmark_yaw, net_yaw))
    turn = max(abs(landmark_yaw), abs(net_yaw))
    near_frontal = 0.5 + 0.5 * (1.0 - _falling(apart, *AGREEMENT_DEG))
    over_read = 1.0 - _falling(abs(landmark_yaw) - abs(net_yaw), *OVER_READ_DEG)
    return max(near_frontal * _falling(turn, *FRONTAL_TURN_DEG), over_read)


def fuse(landmarks: Pose | None, net_yaw: float, net_pitch: float) -> Pose:
    """The estimate from the two readings: the landmarks' (None where Face Mesh found no face) and the net's."""
    readings = {"pose_net_yaw_deg": net_yaw, "pose_net_pitch_deg": net_pitch}
    if landmarks is None:
        return Pose(net_yaw, net_pitch, "pose_net", readings={**readings, "landmark_weight": 0.0})
    w = landmark_weight(landmarks.yaw_deg, net_yaw)
    readings.update(landmarks_yaw_deg=landmarks.yaw_deg, landmarks_pitch_deg=landmarks.pitch_deg,
                    landmark_weight=w)
    # Angles are mixed along the short way round (a back view's +179 and -179 are neighbours).
    to_net = (net_yaw - landmarks.yaw_deg + 180.0) % 360.0 - 180.0
    yaw = (landmarks.yaw_deg + (1.0 - w) * to_net + 180.0) % 360.0 - 180.0
    pitch = w * landmarks.pitch_deg + (1.0 - w) * net_pitch
    method = "landmarks" if w >= 0.999 else "pose_net" if w <= 0.001 else "landmarks+pose_net"
    return Pose(yaw, pitch, method, landmarks.loss, readings)


def estimate_pose(image: Tensor, mask: Tensor) -> Pose:
    """The input camera of ``image`` [3, S, S] (matted on white, in [0, 1]) with ``mask`` [1, S, S], relative
    to the canonical head: Face Mesh + PnP and the pose net, weighed by :func:`fuse`."""
    from ..preprocess.detect import face_mesh_landmarks
    from .pose_net import pose_from_net

    net_yaw, net_pitch = pose_from_net(image, mask)
    points = face_mesh_landmarks(np.ascontiguousarray(to_uint8(image.permute(1, 2, 0))))
    landmarks = None if points is None else pose_from_landmarks(points, image.shape[-1])
    return fuse(landmarks, net_yaw, net_pitch)


__all__ = ["AGREEMENT_DEG", "FRONTAL_TURN_DEG", "LANDMARK_MODEL", "OVER_READ_DEG", "Pose", "camera_K",
           "estimate_pose", "fuse", "landmark_model", "landmark_weight", "pose_from_landmarks", "resize_to"]
