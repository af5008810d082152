"""Cameras and the Gaussian container."""

from .cameras import (
    HEAD_CAMERA_FOV_DEG,
    HEAD_CAMERA_RADIUS,
    Cameras,
    camera_centers,
    focal_from_fov,
    input_camera,
    intrinsics,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_viewmats,
    project_points,
    turntable_viewmats,
    unproject_depth,
    yaw_pitch_grid,
)
from .gaussians import SH_C0, Gaussians, eval_sh, rgb_to_sh_dc, sh_dc_to_rgb

__all__ = [
    "HEAD_CAMERA_FOV_DEG", "HEAD_CAMERA_RADIUS", "SH_C0", "Cameras", "Gaussians", "camera_centers", "eval_sh",
    "focal_from_fov", "input_camera", "intrinsics", "look_at", "opencv_to_opengl", "opengl_to_opencv",
    "orbit_viewmats", "project_points", "rgb_to_sh_dc", "sh_dc_to_rgb", "turntable_viewmats", "unproject_depth",
    "yaw_pitch_grid",
]
