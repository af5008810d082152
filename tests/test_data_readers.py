"""Converters: each dataset's documented layout, written by the test from synthetic renders, round-trips into
the perchead format (cameras back in the canonical head frame, images intact); bad files are collected."""

import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from perchead.data.format import load_view, read_dataset
from perchead.data.readers import (
    Ava256Config,
    CafcaConfig,
    FFHQConfig,
    NeRSembleConfig,
    canonical_rig,
    convert_ava256,
    convert_cafca,
    convert_ffhq,
    convert_nersemble,
)
from perchead.data.synth import SynthConfig, make_subject, render_with_labels
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras

YAWS = [-45.0, -15.0, 15.0, 45.0]  # symmetric, pitch 0: the rig's mean position is exactly in front


@pytest.fixture(scope="module")
def scene():
    """Canonical cameras, their renders (RGBA uint8) and a random rigid world frame of the 'capture'."""
    subj = make_subject(SynthConfig(subjects=1, views=1, size=64, seed=9, surface_resolution=64), 0)
    cams = Cameras.orbit(YAWS, 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, 64)
    r = render_with_labels(subj.gaussians, subj.labels, cams)
    rgba = torch.cat([r.rgb * r.alpha[..., None] + 1 - r.alpha[..., None], r.alpha[..., None]], -1)
    rgba = (rgba * 255).round().byte().numpy()
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    to_world = np.eye(4)
    to_world[:3, :3], to_world[:3, 3] = q, [0.3, 1.1, -0.4]
    w2c_world = cams.viewmats.double().numpy() @ np.linalg.inv(to_world)
    return {"cams": cams, "rgba": rgba, "w2c_world": w2c_world, "K": cams.Ks[0].double().numpy(),
            "to_world": to_world}


def _assert_cameras_recovered(views, scene, atol=1e-4):
    for v in views:
        i = int(np.argmin([abs(v.yaw_deg - y) for y in YAWS]))
        assert v.yaw_deg == pytest.approx(YAWS[i], abs=0.05)
        assert torch.allclose(v.world_to_cam.double(), scene["cams"].viewmats[i].double(), atol=atol)


def test_canonical_rig_recovers_head_frame(scene):
    canon, info = canonical_rig(scene["w2c_world"])
    assert np.allclose(canon, scene["cams"].viewmats.double().numpy(), atol=1e-6)
    assert np.allclose(info["head_center_world"], [0.3, 1.1, -0.4], atol=1e-6)


# -- NeRSemble ----------------------------------------------------------------------------------------------

def _nersemble(root, scene, pid, bad_calib=False, bad_frame=False, video=False):
    p = root / pid
    (p / "calibration").mkdir(parents=True)
    serials = [f"22220004{i}" for i in range(4)]
    K_full = scene["K"].copy()
    K_full[:2] *= 2  # intrinsics given for 128 x 128 "full resolution" frames
    calib = {"world_2_cam": {s: scene["w2c_world"][i].tolist() for i, s in enumerate(serials)},
             "intrinsics": K_full.tolist()}
    (p / "calibration/camera_params.json").write_text("{broken" if bad_calib else json.dumps(calib))
    frames = p / "sequences/EXP-1-head/timesteps/frame_00000"
    (frames / "images").mkdir(parents=True)
    (frames / "alpha_map").mkdir()
    for i, s in enumerate(serials):
        rgb = scene["rgba"][i, ..., :3]
        if video and i == 3:
            import imageio.v2 as iio

            vdir = p / "sequences/EXP-1-head/images"
            vdir.mkdir(parents=True)
            iio.mimwrite(vdir / f"cam_{s}.mp4", [rgb, rgb], fps=2, macro_block_size=16)
            continue
        Image.fromarray(rgb).save(frames / f"images/cam_{s}.png")
        Image.fromarray(scene["rgba"][i, ..., 3]).save(frames / f"alpha_map/cam_{s}.png")
    if bad_frame:
        (frames / f"images/cam_{serials[1]}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return serials


def test_nersemble_round_trip_and_bad_files(tmp_path, scene):
    src = tmp_path / "src"
    _nersemble(src, scene, "017", bad_frame=True)
    _nersemble(src, scene, "059", video=True)  # a PercHead test participant, one camera as a v2 mp4
    _nersemble(src, scene, "100", bad_calib=True)
    report = convert_nersemble(src, tmp_path / "out", NeRSembleConfig(calibration_size=(128, 128)), progress=False)
    assert sorted(report.converted) == ["nersemble_017", "nersemble_059"]
    assert len(report.failed) == 1 and "100" in report.failed[0][0] and "camera_params.json" in report.failed[0][1]
    assert len(report.skipped_views) == 1 and "nersemble_017/222200041" in report.skipped_views[0][0]
    assert "truncated or corrupt" in report.skipped_views[0][1] or "not an image" in report.skipped_views[0][1]
    ds = read_dataset(tmp_path / "out", check_images=True)
    by_id = {s.id: s for s in ds.subjects}
    assert by_id["nersemble_059"].split == "test" and by_id["nersemble_017"].split == "train"
    s = by_id["nersemble_059"]
    assert len(s.views) == 4
    _assert_cameras_recovered(s.views, scene)
    for v in s.views:
        assert torch.allclose(v.K.double(), torch.from_numpy(scene["K"]), atol=1e-5)  # scaled from 128 to 64
        lv = load_view(v)
        i = int(np.argmin([abs(v.yaw_deg - y) for y in YAWS]))
        ref = torch.from_numpy(scene["rgba"][i, ..., :3]).permute(2, 0, 1).float() / 255
        err = (lv.image - ref).abs().mean()
        assert err < (0.05 if v.name.endswith("3") else 1e-6)  # the mp4 frame is lossy
        if lv.has_mask:
            assert torch.equal((lv.mask[0] * 255).round().byte(), torch.from_numpy(scene["rgba"][i, ..., 3]))
    assert report.summary().count("\n") >= 3


# -- Cafca --------------------------------------------------------------------------------------------------

def _cafca(root, scene, sid, bad_camera=False):
    d = root / "00000-00099" / sid / "00000_000"
    for sub in ("cameras_json", "color_image", "foreground_mask", "segmentation"):
        (d / sub).mkdir(parents=True)
    for i in range(4):
        w2c = scene["w2c_world"][i]
        cam = {"K": scene["K"].tolist(), "world2cam": w2c.tolist(), "cam2world": np.linalg.inv(w2c).tolist(),
               "P": (scene["K"] @ w2c[:3]).tolist(), "position": np.linalg.inv(w2c)[:3, 3].tolist()}
        (d / "cameras_json" / f"C{i:02d}.json").write_text(json.dumps(cam))
        Image.fromarray(scene["rgba"][i, ..., :3]).save(d / "color_image" / f"C{i:02d}.png")
        Image.fromarray(scene["rgba"][i, ..., 3]).save(d / "foreground_mask" / f"C{i:02d}.png")
        Image.fromarray(np.zeros((64, 64), np.uint16)).save(d / "segmentation" / f"C{i:02d}.png")
    if bad_camera:
        (d / "cameras_json" / "C02.json").write_text('{"K": [[1, 0]]}')


def test_cafca_round_trip(tmp_path, scene):
    src = tmp_path / "src"
    _cafca(src, scene, "00000")
    _cafca(src, scene, "00001", bad_camera=True)
    report = convert_cafca(src, tmp_path / "out", CafcaConfig(val_ids=("00001",)), progress=False)
    assert sorted(report.converted) == ["cafca_00000", "cafca_00001"] and not report.failed
    assert report.skipped_views and "C02" in report.skipped_views[0][0]
    assert "C02.json: expected JSON with 'K'" in report.skipped_views[0][1]
    ds = read_dataset(tmp_path / "out", check_images=True)
    s0, s1 = ds.subjects
    assert len(s0.views) == 4 and len(s1.views) == 3 and s1.split == "val"
    _assert_cameras_recovered(s0.views, scene)
    lv = load_view(s0.views[0])
    assert lv.has_mask and lv.segmentation is None
    assert torch.equal((lv.mask[0] * 255).round().byte(), torch.from_numpy(scene["rgba"][0, ..., 3]))


# -- FFHQ ---------------------------------------------------------------------------------------------------

def test_ffhq_with_eg3d_labels_and_bad_files(tmp_path, scene):
    src = tmp_path / "ffhq"
    (src / "00000").mkdir(parents=True)
    labels = []
    for i in range(3):
        name = f"00000/img{i:08d}.png"
        Image.fromarray(scene["rgba"][i]).save(src / name)
        c2w = np.diag([1.0, -1.0, -1.0, 1.0])  # EG3D's frontal camera, rotated about +y by the yaw
        a = np.radians(YAWS[i])
        rot_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        c2w[:3, :3] = rot_y @ c2w[:3, :3]
        c2w[:3, 3] = rot_y @ np.array([0, 0, 2.7])
        labels.append([name, c2w.reshape(-1).tolist() + [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]])
    (src / "00000/img00000003.png").write_bytes(b"this is text, not a PNG")
    (src / "00000/img00000004.png").write_bytes(b"")
    Image.fromarray(scene["rgba"][3]).save(src / "00000/unlabelled.png")
    labels += [["00000/img00000003.png", labels[0][1]], ["00000/img00000004.png", labels[0][1]]]
    (src / "dataset.json").write_text(json.dumps({"labels": labels}))
    report = convert_ffhq(src, tmp_path / "out", FFHQConfig(metres_per_unit=1.0 / 1.8), progress=False)
    assert len(report.converted) == 3
    msgs = dict(report.failed)
    assert "not an image" in msgs[str(src / "00000/img00000003.png")]
    assert "empty" in msgs[str(src / "00000/img00000004.png")]
    assert "no camera label for 00000/unlabelled.png" in msgs[str(src / "00000/unlabelled.png")]
    ds = read_dataset(tmp_path / "out", check_images=True)
    assert all(s.kind == "wild" and len(s.views) == 1 for s in ds.subjects)
    v = ds.subjects[1].views[0]
    assert v.yaw_deg == pytest.approx(-15.0, abs=1e-3)
    assert float(v.K[0, 0]) == pytest.approx(4.2647 * 64, rel=1e-5) and float(v.K[0, 2]) == pytest.approx(32)
    centre = -v.world_to_cam[:3, :3].T @ v.world_to_cam[:3, 3]
    assert float(centre.norm()) == pytest.approx(1.5, rel=1e-4)  # 2.7 units at 1/1.8 m per unit
    assert load_view(v).has_mask  # RGBA input keeps its alpha


def test_ffhq_without_labels_uses_standard_camera(tmp_path, scene):
    src = tmp_path / "plain"
    src.mkdir()
    Image.fromarray(scene["rgba"][1, ..., :3]).save(src / "a.jpg")
    report = convert_ffhq(src, tmp_path / "out", progress=False)
    assert report.converted == ["ffhq_a"]
    v = read_dataset(tmp_path / "out").subjects[0].views[0]
    frontal = Cameras.orbit([0.0], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, 64).viewmats[0]
    assert torch.allclose(v.world_to_cam, frontal, atol=1e-6)
    assert not load_view(v).has_mask
    # The CLI entry point (for `perchead convert-data`) runs the same converter.
    from perchead.data.commands import convert

    assert convert("ffhq", src, tmp_path / "out2", size=32) == 0
    assert read_dataset(tmp_path / "out2").subjects[0].views[0].width == 32


# -- Ava-256 ------------------------------------------------------------------------------------------------

def _ava(root, scene, name, frame=123, corrupt_cam=None):
    from PIL import features

    dec = root / name / "decoder"
    (dec / "image").mkdir(parents=True)
    (dec / "head_pose").mkdir()
    krt = []
    ids = [f"40094{i}" for i in range(4)]
    for i, cid in enumerate(ids):
        w2c = scene["w2c_world"][i].copy()
        w2c[:3, 3] *= 1000.0  # millimetres
        T = np.zeros((4, 4))
        T[:4, :3] = w2c[:3, :].T  # Ava-256 stores [R | t] transposed
        T[3, 3] = 1.0
        K = scene["K"].copy()
        K[:2] *= 4  # calibrated at 256 x 256 here, images stored at 64 x 64
        krt.append({"cameraId": cid, "projectionModel": "Pinhole", "K": K.T.tolist(), "T": T.tolist(),
                    "distortion": [0.0, 0.0, 0.0, 0.0]})
        buf = io.BytesIO()
        fmt = "AVIF" if features.check("avif") else "PNG"
        Image.fromarray(scene["rgba"][i, ..., :3]).save(buf, format=fmt, quality=95)
        ext = "avif" if fmt == "AVIF" else "png"
        with zipfile.ZipFile(dec / "image" / f"cam{cid}.zip", "w") as z:
            z.writestr(f"cam{cid}/{frame:06d}.{ext}", buf.getvalue())
        if cid == corrupt_cam:
            data = (dec / "image" / f"cam{cid}.zip").read_bytes()
            (dec / "image" / f"cam{cid}.zip").write_bytes(data[: len(data) // 3])
    (dec / "camera_calibration.json").write_text(json.dumps({"KRT": krt}))
    with (dec / "frame_list.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["seg_id", "frame_id"], ["EXP_free", "000100"], ["EXP_neutral_peak", str(frame)]])
    pose = np.hstack([scene["to_world"][:3, :3], 1000 * scene["to_world"][:3, 3:]])
    with zipfile.ZipFile(dec / "head_pose" / "head_pose.zip", "w") as z:
        z.writestr(f"{frame:06d}.txt", "\n".join(" ".join(str(x) for x in row) for row in pose))
    return ids


def test_ava256_round_trip(tmp_path, scene):
    src = tmp_path / "ava"
    _ava(src, scene, "20230405--1635--AAN112")
    _ava(src, scene, "20230831--0814--ADL311", corrupt_cam="400942")
    cfg = Ava256Config(calibration_size=(256, 256), test_ids=("20230831--0814--ADL311",))
    report = convert_ava256(src, tmp_path / "out", cfg, progress=False)
    assert len(report.converted) == 2 and not report.failed
    assert len(report.skipped_views) == 1
    assert "400942" in report.skipped_views[0][0] and "BadZipFile" in report.skipped_views[0][1]
    ds = read_dataset(tmp_path / "out", check_images=True)
    a, b = ds.subjects
    assert a.split == "train" and b.split == "test" and len(b.views) == 3
    _assert_cameras_recovered(a.views, scene)
    assert a.meta["frame"] == "123" and a.meta["head_center"] == "head_pose"
    v = a.views[0]
    assert torch.allclose(v.K.double(), torch.from_numpy(scene["K"]), atol=1e-4)
    i = int(np.argmin([abs(v.yaw_deg - y) for y in YAWS]))
    ref = torch.from_numpy(scene["rgba"][i, ..., :3]).permute(2, 0, 1).float() / 255
    assert (load_view(v).image - ref).abs().mean() < 0.03


def test_ava256_missing_avif_plugin_is_named(monkeypatch):
    import builtins

    from PIL import features

    from perchead.data.readers.ava256 import avif_support

    monkeypatch.setattr(features, "check", lambda name: False)
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pillow_avif":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match="pillow-avif-plugin"):
        avif_support()


def test_missing_sources_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="no participant folders"):
        convert_nersemble(tmp_path, tmp_path / "o", progress=False)
    with pytest.raises(FileNotFoundError, match="no images"):
        convert_ffhq(tmp_path, tmp_path / "o2", progress=False)
    with pytest.raises(FileNotFoundError, match="camera_calibration.json"):
        convert_ava256(tmp_path, tmp_path / "o3", progress=False)
