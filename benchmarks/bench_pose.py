"""The input camera's yaw error of each pose method, per true yaw, on held-out synthetic heads (and the real
photos' estimates, where no true yaw is known).

    python benchmarks/bench_pose.py [--subjects 8] [--size 512] [--heads symmetric] [--pitch 0]

Test-split heads (by default the symmetric kind that the demo and tests/test_fit.py use) are rendered by the
standard head camera at the given pitch from each yaw. For each: Face Mesh + PnP (``landmarks``: how many of the
subjects it finds a face on, mean and max error where it does), the pose net alone, and
:func:`perchead.inference.pose.estimate_pose` (what ``perchead reconstruct`` uses: the two readings weighed by
:func:`perchead.inference.pose.fuse`). Then the package-shipped photos, cropped and matted as
``perchead reconstruct`` does: each method's yaw and pitch there, and on the mirrored photo.

MediaPipe's TFLite kernels ignore torch's settings, and torch's own kernels follow ``ATEN_CPU_CAPABILITY``
(e.g. ``avx2`` on an AVX-512 machine): the header names both, so tables from two machines can be told apart.
"""

from __future__ import annotations

import argparse
import platform
import time

from bench_reconstruct import cpu_name  # same folder: run as python benchmarks/bench_pose.py

YAWS = (0.0, 30.0, -30.0, 45.0, -45.0, 60.0, -60.0, 75.0, -75.0, 90.0, -90.0, 135.0, 180.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8, help="held-out synthetic subjects")
    parser.add_argument("--size", type=int, default=512, help="render size (px) of the synthetic photos")
    parser.add_argument("--heads", default="symmetric", choices=["symmetric", "asymmetric"],
                        help="kind of synthetic head")
    parser.add_argument("--pitch", type=float, default=0.0, help="camera pitch (degrees) of every view")
    args = parser.parse_args()

    import numpy as np
    import torch

    from perchead.data.synth import SynthConfig, make_subject, subject_split
    from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras
    from perchead.inference.pose import AGREEMENT_DEG, FRONTAL_TURN_DEG, estimate_pose, pose_from_landmarks
    from perchead.inference.pose_net import bundled_pose_net, pose_from_net, yaw_error
    from perchead.io import to_uint8
    from perchead.preprocess.detect import face_mesh_landmarks
    from perchead.render import rasterize

    def landmarks(image: torch.Tensor):
        points = face_mesh_landmarks(np.ascontiguousarray(to_uint8(image.permute(1, 2, 0))))
        return None if points is None else pose_from_landmarks(points, image.shape[-1])

    synth = SynthConfig(heads=args.heads)
    indices = [i for i in range(1000) if subject_split(synth, i) == "test"][: args.subjects]
    net = bundled_pose_net()
    rows, t_net, t_all = {y: {"lm": [], "net": [], "est": [], "pitch": [], "methods": set()} for y in YAWS}, [], []
    for index in indices:
        subject = make_subject(synth, index)
        cams = Cameras.orbit(list(YAWS), args.pitch, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, args.size)
        with torch.no_grad():
            out = rasterize(subject.gaussians, cams.viewmats, cams.Ks, args.size, args.size, backend="cpu")
        for c, yaw in enumerate(YAWS):
            image, mask = out.rgb[c].permute(2, 0, 1), out.alpha[c].permute(2, 0, 1)
            lm = landmarks(image)
            if lm is not None:
                rows[yaw]["lm"].append(float(yaw_error(lm.yaw_deg, yaw)))
            t0 = time.perf_counter()
            rows[yaw]["net"].append(float(yaw_error(pose_from_net(image, mask, net)[0], yaw)))
            t_net.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pose = estimate_pose(image, mask)
            t_all.append(time.perf_counter() - t0)
            rows[yaw]["est"].append(float(yaw_error(pose.yaw_deg, yaw)))
            rows[yaw]["methods"].add(pose.method)
            rows[yaw]["pitch"].append(abs(pose.pitch_deg - args.pitch))

    def cell(errors: list[float]) -> str:
        return f"{np.mean(errors):.1f} / {np.max(errors):.1f}" if errors else "-"

    import os

    aten = os.environ.get("ATEN_CPU_CAPABILITY", "")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()} (ATEN_CPU_CAPABILITY={aten!r}), Python "
          f"{platform.python_version()}, torch {torch.__version__}")
    print(f"settings: {len(indices)} test-split {args.heads} heads {indices}, {args.size} px, pitch {args.pitch:g}; "
          f"the landmarks' weight falls as the more turned reading goes from {FRONTAL_TURN_DEG[0]:g} to "
          f"{FRONTAL_TURN_DEG[1]:g} degrees, and near frontal rises from an even mean to 1 as the readings go "
          f"from {AGREEMENT_DEG[0]:g} to {AGREEMENT_DEG[1]:g} degrees apart")
    print()
    print("| true yaw | Face Mesh finds the face | landmarks: error mean / max | pose net: mean / max | "
          "estimate_pose: mean / max | its pitch error: mean / max | what it weighed |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for yaw, r in rows.items():
        print(f"| {yaw:+.0f} | {len(r['lm'])}/{len(indices)} | {cell(r['lm'])} | {cell(r['net'])} | "
              f"{cell(r['est'])} | {cell(r['pitch'])} | {', '.join(sorted(r['methods']))} |")
    worst = {yaw: max(r["est"]) for yaw, r in rows.items()}
    near = max(v for y, v in worst.items() if abs(y) in (0.0, 30.0, 60.0))
    far = max(v for y, v in worst.items() if abs(y) not in (0.0, 30.0, 60.0))
    print(f"\nworst estimate_pose error: {near:.1f} degrees at 0, +-30, +-60; {far:.1f} at the other yaws")
    print()
    print(f"time per photo (median): pose net {1e3 * np.median(t_net):.1f} ms, estimate_pose (Face Mesh + PnP "
          f"or pose net) {1e3 * np.median(t_all):.1f} ms")

    from bench_likeness import package_photos

    from perchead.preprocess import preprocess_image

    print()
    print("| photo | landmarks yaw / pitch | pose net yaw / pitch | pose net, mirrored photo | estimate_pose |")
    print("|---|---:|---:|---:|---|")
    for name, photo in package_photos().items():
        pre = preprocess_image(photo)
        image = torch.from_numpy(np.array(pre.image)).permute(2, 0, 1).float() / 255.0
        mask = torch.from_numpy(np.array(pre.mask, dtype=np.float32))[None]
        lm = landmarks(image)
        y, p = pose_from_net(image, mask, net)
        ym, pm = pose_from_net(image.flip(-1), mask.flip(-1), net)
        pose = estimate_pose(image, mask)
        lm_cell = "no face" if lm is None else f"{lm.yaw_deg:+.1f} / {lm.pitch_deg:+.1f}"
        print(f"| {name} | {lm_cell} | {y:+.1f} / {p:+.1f} | {ym:+.1f} / {pm:+.1f} | "
              f"{pose.method} {pose.yaw_deg:+.1f} / {pose.pitch_deg:+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
