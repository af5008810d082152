"""Build ``src/perchead/assets/face_landmarks_3d.npy``: where MediaPipe Face Mesh's 478 landmarks lie on a head
in the canonical frame, the 3D model that ``perchead.inference.pose`` solves the input camera against (PnP).

Train-split synthetic heads (``perchead synth``'s generator, never the test subjects) are rendered from the
standard camera at yaws -20, 0 and +20 degrees; each landmark that Face Mesh finds is lifted to 3D with the
rendered depth and mapped back to the head frame; the model is the per-landmark median over all renders.

    python scripts/make_landmark_model.py            # rewrites the asset (deterministic)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from perchead.data.synth import SynthConfig, make_subject, subject_split
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras
from perchead.inference.pose import LANDMARK_MODEL
from perchead.preprocess.detect import face_mesh_landmarks
from perchead.render import rasterize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=LANDMARK_MODEL)
    args = ap.parse_args()
    # Symmetric heads: the shipped asset was built from them (before `perchead synth` made asymmetric heads by
    # default); pinned so this script still builds it from the same renders.
    cfg = SynthConfig(heads="symmetric")
    train = [i for i in range(1000) if subject_split(cfg, i) == "train"][:args.subjects]
    lifted = []
    for i in train:
        subject = make_subject(cfg, i)
        cams = Cameras.orbit([-20.0, 0.0, 20.0], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, args.size)
        with torch.no_grad():
            out = rasterize(subject.gaussians, cams.viewmats, cams.Ks, args.size, args.size, backend="cpu")
        for c in range(len(cams)):
            pts = face_mesh_landmarks((out.rgb[c].numpy() * 255 + 0.5).astype(np.uint8))
            if pts is None:
                continue
            depth = out.depth[c, ..., 0].numpy()
            K, vm = cams.Ks[c].numpy(), cams.viewmats[c].numpy()
            ij = np.clip(np.round(pts).astype(int), 0, args.size - 1)
            z = depth[ij[:, 1], ij[:, 0]]
            cam = np.stack([(pts[:, 0] - K[0, 2]) / K[0, 0] * z, (pts[:, 1] - K[1, 2]) / K[1, 1] * z, z,
                            np.ones_like(z)], 1)
            lifted.append((np.linalg.inv(vm) @ cam.T).T[:, :3])
    if not lifted:
        raise SystemExit("Face Mesh found no face on any render")
    model = np.median(np.stack(lifted), axis=0).astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, model)
    print(f"{args.out}: {model.shape[0]} landmarks from {len(lifted)} renders of {len(train)} train subjects")


if __name__ == "__main__":
    main()
