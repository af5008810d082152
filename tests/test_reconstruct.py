"""``perchead reconstruct``: photo, folder and video inputs, the files written, and the errors.

A tiny random model of the ``tiny`` preset (no DINOv2 branch) is saved with ``save_pretrained`` and loaded
through the same ``--checkpoint`` path a user's checkpoint takes. Renders are 64 px with a few frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from perchead.cli import COMMANDS, main
from perchead.inference import PHOTO_FILES, ReconstructConfig, Reconstructor
from perchead.inference import fit as fit_module
from perchead.inference import reconstruct as reconstruct_module
from perchead.inference.fit import FitConfig, turned_viewmats
from perchead.io import image_grid, load_ply
from perchead.model import PercHead, preset

PHOTO = Path(__file__).resolve().parents[1] / "src" / "perchead" / "assets" / "example_photo.jpg"
# The network's output alone (--fit-steps 0): these tests are about inputs, files and errors; the fit has its
# own tests below and in tests/test_fit.py.
FAST = ["--size", "64", "--frames", "4", "--video-size", "64", "--device", "cpu", "--no-progress",
        "--fit-steps", "0", "--no-likeness"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = PercHead(preset("tiny"))
    assert model.config.dino is None  # the tiny preset needs no DINOv2 weights
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def photo_run(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("photo") / "out"
    rc = main(["reconstruct", str(PHOTO), "-o", str(out), "--checkpoint", str(checkpoint), *FAST])
    return rc, out


def _video_frames(path: Path) -> tuple[int, tuple[int, int]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return count, tuple(meta["size"])


def test_command_is_registered():
    assert COMMANDS["reconstruct"][0] == "perchead.inference.commands:reconstruct"


def test_photo_writes_every_file(photo_run):
    rc, out = photo_run
    assert rc == 0
    for name in PHOTO_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # Nothing else: no staging folder or temporary file left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(PHOTO_FILES)


def test_ply_opens_with_load_ply_and_plyfile(photo_run, checkpoint):
    from plyfile import PlyData

    _, out = photo_run
    n = PercHead.from_pretrained(checkpoint).config.num_gaussians
    g = load_ply(out / "head.ply")
    assert len(g) == n == 4096
    g.check_finite()
    vertex = PlyData.read(str(out / "head.ply"))["vertex"]
    assert vertex.count == n
    names = [p.name for p in vertex.properties]
    for prop in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "rot_0", "rot_3"):
        assert prop in names
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), g.means.numpy())
    # The splat holds the same Gaussians (32 bytes each).
    assert (out / "head.splat").stat().st_size == 32 * n


def test_ply_is_the_networks_output(photo_run, checkpoint):
    """The written PLY is exactly what the model predicts for the preprocessed photo."""
    _, out = photo_run
    rec = Reconstructor(ReconstructConfig(checkpoint=str(checkpoint), device="cpu", size=64, video=False))
    expected = rec.predict(rec.preprocess(PHOTO))
    g = load_ply(out / "head.ply")
    torch.testing.assert_close(g.means, expected.means)
    torch.testing.assert_close(g.sh, expected.sh)
    torch.testing.assert_close(g.opacity_logits, expected.opacity_logits)


def test_fit_steps_0_is_the_feed_forward_result(photo_run, checkpoint):
    """--fit-steps 0 renders exactly what the code did before the fit existed: the network's Gaussians from
    the grid cameras and the estimated input camera turned by +-45 degrees (views.png) and, from the input
    camera, input_view.png."""
    _, out = photo_run
    rec = Reconstructor(ReconstructConfig(checkpoint=str(checkpoint), device="cpu", size=64, video=False,
                                          fit=FitConfig(steps=0), likeness=False))
    pre = rec.preprocess(PHOTO)
    g = rec.predict(pre)
    pose, _ = rec.fit(g, pre)  # no steps: the estimated camera only
    views = rec.render(g, rec.grid_viewmats())
    turned = rec.render(g, turned_viewmats(pose.viewmat, reconstruct_module.TURNED_VIEWS))
    expected = rec.views_image(reconstruct_module.Reconstruction(pre.source, pre, g, views, None, turned=turned))
    assert expected.shape[1] > 5 * 64  # five columns: the turned views are in the grid
    np.testing.assert_array_equal(np.asarray(Image.open(out / "views.png").convert("RGB")), expected)


def test_a_small_head_is_fitted_with_children_no_finer_than_its_pixels(checkpoint):
    """The photo at a third of its size: its head's crop is 81 photo pixels a side, fewer than the 112 px fit
    renders, so the network's Gaussians are split into children coarser than the finest (FitConfig.child_shrink,
    set from the photo's own pixels); at full size (244 photo pixels) they are the finest."""
    rec = Reconstructor(ReconstructConfig(checkpoint=str(checkpoint), device="cpu", size=32, video=False,
                                          fit=FitConfig(steps=1, size=112, num_gaussians=16384), likeness=False))
    small = Image.open(PHOTO).convert("RGB").resize((170, 170), Image.Resampling.LANCZOS)
    for photo, enlarged in ((small, True), (Image.open(PHOTO).convert("RGB"), False)):
        pre = rec.preprocess(np.asarray(photo))
        _, fit = rec.fit(rec.predict(pre), pre)
        assert (pre.source_side < 112) == enlarged, pre.source_side  # measured 81 and 244 photo pixels
        expected = fit_module.child_shrink(112 / pre.source_side) if enlarged else fit_module.CHILD_SHRINK
        assert fit.child_shrink == pytest.approx(expected) and (fit.child_shrink > 0.6) == enlarged


@pytest.fixture(scope="module")
def fitted_run(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted") / "out"
    fast = [a for a in FAST if a not in ("--fit-steps", "0", "--no-likeness")]
    rc = main(["reconstruct", str(PHOTO), "-o", str(out), "--checkpoint", str(checkpoint), *fast,
               "--fit-steps", "4", "--fit-size", "48", "--fit-gaussians", "16384", "--fit-tune-steps", "2"])
    return rc, out


def test_fitted_photo_writes_the_fit_and_the_likeness(fitted_run):
    rc, out = fitted_run
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(PHOTO_FILES)
    assert len(load_ply(out / "head.ply")) == 16384  # 4,096 predicted Gaussians split 4 ways
    meta = json.loads((out / "reconstruction.json").read_text())
    fit = meta["fit"]
    assert fit["ran"] and fit["steps"] == 4 and fit["size"] == 48 and fit["num_gaussians"] == 16384
    assert fit["child_shrink"] == 0.5  # a 48 px fit of a 244 px crop of the photo: the finest children
    assert fit["loss_last"] < fit["loss_first"] and fit["input_l1_after"] < fit["input_l1_before"]
    assert fit["tune_steps"] == 2 and fit["tune_loss_first"] > 0 and fit["config"]["tune_steps"] == 2
    assert meta["num_gaussians"] == 16384 and meta["sharpened"] is False  # SHP-CNN is not run on a fit
    assert meta["times_s"]["fit"] > 0
    # A random network's head is not a face: dlib finds the photo's face, not necessarily one in the renders.
    like = meta["likeness"]
    assert like["photo_face_found"] is True
    assert set(like) >= {"input_view", "yaw_+0", "turn_+30", "turn_-30", "turn_+45", "turn_-45", "back_delta_e"}
    assert all(v is None or 0 <= v < 2 for k, v in like.items() if k.startswith(("input_view", "yaw", "turn")) and
               not k.endswith("_db"))
    assert like["back_delta_e"] is None or like["back_delta_e"] >= 0
    # whether the fit trusted the matte and the camera is recorded, and every warning is listed at the top
    assert 0 <= fit["silhouette_iou"] <= 1 and isinstance(fit["geometry_fitted"], bool)
    assert set(fit["warnings"]) <= set(meta["warnings"])
    assert np.isfinite(like["input_view_masked_psnr_db"])
    view = np.asarray(Image.open(out / "input_view.png").convert("RGB"))
    assert view.shape == image_grid([np.zeros((64, 64, 3), np.uint8)] * 2, ncols=2, labels=["x"] * 2).shape


def test_diverging_fit_writes_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    from perchead.inference import fit as fit_module

    real = fit_module.view_loss
    calls = []

    def nan_on_third(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(fit_module, "view_loss", nan_on_third)
    out = tmp_path / "out"
    fast = [a for a in FAST if a not in ("--fit-steps", "0")]
    rc = main(["reconstruct", str(PHOTO), "-o", str(out), "--checkpoint", str(checkpoint), *fast,
               "--fit-steps", "5", "--fit-size", "32", "--fit-gaussians", "4096"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "diverged at step 2" in err and "--fit-steps 0" in err
    assert not out.exists()


def test_views_png_size_and_content(photo_run):
    _, out = photo_run
    views = np.asarray(Image.open(out / "views.png").convert("RGB"))
    # 5 x 2 labelled cells of 64 px: input crop, front, left/right profile, back / matted input, the input camera
    # turned 45 degrees towards either ear, above, below.
    blank = image_grid([np.zeros((64, 64, 3), np.uint8)] * 10, ncols=5, labels=["x"] * 10)
    assert views.shape == blank.shape
    assert views.shape[1] > 5 * 64 and views.shape[0] > 2 * 64
    # Every rendered cell shows something on the white background (the head), the input cell a photo.
    cell_w = (views.shape[1] - 4) // 5
    cell_h = (views.shape[0] - 4) // 2
    for row in range(2):
        for col in range(5):
            y, x = 4 + row * cell_h, 4 + col * cell_w
            cell = views[y:y + 64, x:x + 64].astype(int)
            assert (cell.sum(-1) < 3 * 250).mean() > 0.05, (row, col)


def test_turntable_frame_count(photo_run):
    _, out = photo_run
    assert _video_frames(out / "turntable.mp4") == (4, (64, 64))


def test_crop_mask_and_metadata(photo_run):
    _, out = photo_run
    crop = Image.open(out / "input_crop.png")
    mask = np.asarray(Image.open(out / "input_mask.png"))
    assert crop.size == (512, 512) and crop.mode == "RGB"
    assert mask.shape == (512, 512) and mask.min() == 0 and mask.max() == 255
    meta = json.loads((out / "reconstruction.json").read_text())
    assert meta["num_gaussians"] == 4096 and meta["preset"] == "tiny"
    assert meta["render"]["size"] == 64 and meta["render"]["frames"] == 4
    assert meta["preprocess"]["detector"] != "whole-image"
    assert set(meta["times_s"]) == {"preprocess", "network", "fit", "render"}
    assert all(v > 0 for k, v in meta["times_s"].items() if k != "fit")
    assert meta["fit"] == {"ran": False, "steps": 0}
    camera = meta["input_camera"]
    assert abs(camera["yaw_deg"]) < 10 and abs(camera["pitch_deg"]) < 10  # the astronaut faces the camera
    assert np.asarray(camera["K"]).shape == (3, 3) and np.asarray(camera["viewmat"]).shape == (4, 4)
    assert camera["width"] == camera["height"] == 64


def test_folder_batch_with_a_corrupt_file(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "astronaut.jpg").write_bytes(PHOTO.read_bytes())
    (folder / "broken.jpg").write_bytes(PHOTO.read_bytes()[:200])  # a truncated JPEG
    out = tmp_path / "out"
    rc = main(["reconstruct", str(folder), "-o", str(out), "--checkpoint", str(checkpoint), "--no-video",
               *FAST])
    assert rc == 1
    assert (out / "astronaut" / "head.ply").is_file() and (out / "astronaut" / "views.png").is_file()
    assert not (out / "astronaut" / "turntable.mp4").exists()  # --no-video
    assert not (out / "broken").exists()
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("perchead reconstruct: failed")]
    assert len(failed) == 1 and "broken.jpg" in failed[0] and "truncated" in failed[0].lower()
    assert "astronaut" not in failed[0]


def test_video_per_frame_splats_and_side_by_side(checkpoint, tmp_path):
    photo = np.asarray(Image.open(PHOTO))
    frames = [np.roll(photo, 4 * i, axis=1) for i in range(3)]  # the head moves a little
    video = tmp_path / "clip.mp4"
    imageio.mimwrite(video, frames, fps=10, macro_block_size=1)
    out = tmp_path / "out"
    rc = main(["reconstruct", str(video), "-o", str(out), "--checkpoint", str(checkpoint), *FAST])
    assert rc == 0
    plys = sorted(p.name for p in (out / "frames").iterdir())
    assert plys == ["000000.ply", "000001.ply", "000002.ply"]
    assert len(load_ply(out / "frames" / "000001.ply")) == 4096
    assert _video_frames(out / "side_by_side.mp4") == (3, (128, 64))  # input crop | render, 64 px each
    meta = json.loads((out / "video.json").read_text())
    assert meta["frames"] == [0, 1, 2] and meta["failures"] == []

    # --every / --max-frames pick source frames 0 and 2, then stop.
    out2 = tmp_path / "out2"
    rc = main(["reconstruct", str(video), "-o", str(out2), "--checkpoint", str(checkpoint), "--every", "2",
               "--max-frames", "1", *FAST])
    assert rc == 0
    assert sorted(p.name for p in (out2 / "frames").iterdir()) == ["000000.ply"]


def test_corrupt_checkpoint(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken_ckpt"
    broken.mkdir()
    (broken / "config.json").write_bytes((checkpoint / "config.json").read_bytes())
    data = (checkpoint / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    rc = main(["reconstruct", str(PHOTO), "-o", str(out), "--checkpoint", str(broken), *FAST])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("model.safetensors" in line and "truncated" in line for line in err)
    assert not out.exists()


def test_missing_photo(checkpoint, tmp_path, capsys):
    rc = main(["reconstruct", str(tmp_path / "nobody.jpg"), "-o", str(tmp_path / "out"),
               "--checkpoint", str(checkpoint), *FAST])
    assert rc != 0
    assert "nobody.jpg: no such file" in capsys.readouterr().err


def test_no_face_photo(checkpoint, tmp_path, capsys):
    grey = tmp_path / "grey.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(grey)
    out = tmp_path / "out"
    rc = main(["reconstruct", str(grey), "-o", str(out), "--checkpoint", str(checkpoint), *FAST])
    assert rc != 0
    err = capsys.readouterr().err
    assert "no face found" in err and "--allow-no-face" in err
    assert not out.exists()


def test_a_photo_above_max_pixels_is_refused(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["reconstruct", str(PHOTO), "-o", str(out), "--checkpoint", str(checkpoint), "--max-pixels", "1000",
               *FAST])
    assert rc != 0
    assert "above the limit of" in capsys.readouterr().err
    assert not out.exists()


def test_missing_demo_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reconstruct_module, "DEMO_CHECKPOINT", tmp_path / "demo")
    rc = main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "out"), *FAST])
    assert rc != 0
    err = capsys.readouterr().err
    assert "demo checkpoint" in err and "--checkpoint" in err


def test_unknown_hub_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "out"), "--checkpoint", "nobody/no-such-model",
               *FAST])
    assert rc != 0
    assert "no-such-model" in capsys.readouterr().err


def test_failed_write_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    """A failure while writing (here: the video encoder) leaves no partial outputs and keeps older ones."""
    rec = Reconstructor(ReconstructConfig(checkpoint=str(checkpoint), device="cpu", size=32, frames=2,
                                          fit=FitConfig(steps=0), likeness=False))
    result = rec.reconstruct(PHOTO)
    out = tmp_path / "out"
    out.mkdir()
    (out / "head.ply").write_text("older result")

    def broken_video(frames, path, fps):
        Path(path).write_bytes(b"half a video")
        raise RuntimeError("ffmpeg died")

    monkeypatch.setattr(reconstruct_module, "write_video", broken_video)
    with pytest.raises(RuntimeError, match="ffmpeg died"):
        rec.write(result, out)
    assert [p.name for p in out.iterdir()] == ["head.ply"]
    assert (out / "head.ply").read_text() == "older result"


def test_sharpen_applies_shp_cnn(checkpoint):
    model = PercHead.from_pretrained(checkpoint)
    # An untrained SHP-CNN (zero-initialised last layer) is the identity: it is skipped, pixels unchanged.
    untrained = Reconstructor(ReconstructConfig(device="cpu", size=32, sharpen=True), model=model)
    assert model.shp_cnn is not None and not untrained.sharpens
    g0 = untrained.predict(untrained.preprocess(PHOTO))
    with torch.no_grad():
        rgb = untrained.render(g0, untrained.grid_viewmats()[:1])
        direct = model.sharpen(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_array_equal(rgb, (direct.permute(0, 2, 3, 1) * 255).round().byte().numpy())
    with torch.no_grad():
        model.shp_cnn.tail.bias.fill_(-0.2)  # a trained SHP-CNN is no longer the identity
    plain = Reconstructor(ReconstructConfig(device="cpu", size=32, sharpen=False), model=model)
    sharp = Reconstructor(ReconstructConfig(device="cpu", size=32, sharpen=True), model=model)
    assert sharp.sharpens and not plain.sharpens
    g = plain.predict(plain.preprocess(PHOTO))
    a, b = plain.render(g, plain.grid_viewmats()[:1]), sharp.render(g, sharp.grid_viewmats()[:1])
    # White background stays ~0.8 after the bias: the sharpened render is darker everywhere.
    assert a.shape == b.shape == (1, 32, 32, 3)
    assert (a.astype(int) - b.astype(int)).min() >= 0 and (a.astype(int) - b.astype(int)).mean() > 40


def test_sharpen_runs_at_the_trained_size(checkpoint):
    model = PercHead.from_pretrained(checkpoint)
    torch.manual_seed(1)
    with torch.no_grad():
        model.shp_cnn.tail.weight.normal_(0.0, 0.05)  # a "trained", non-identity SHP-CNN
    seen = []
    model.shp_cnn.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    s = model.config.image_size
    native = Reconstructor(ReconstructConfig(device="cpu", size=s, sharpen=True), model=model)
    large = Reconstructor(ReconstructConfig(device="cpu", size=2 * s, sharpen=True), model=model)
    assert native.sharpen_size == large.sharpen_size == s
    g = native.predict(native.preprocess(PHOTO))
    vm = native.grid_viewmats()[:2]
    with torch.no_grad():
        render = native.rasterize(g, vm, s)
        direct = model.sharpen(render.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        a, b = native.render(g, vm), large.render(g, vm)
    # At the trained size the output is SHP-CNN's own; larger renders only ever feed it images of that size.
    # Equal up to the 8-bit rounding of float noise (batched and single renders sum in other orders: one value
    # of 98,304 was 1 apart once); a wrong size or a missing SHP-CNN moves thousands by much more.
    diff = np.abs(a.astype(int) - (direct.clamp(0, 1) * 255).round().byte().numpy().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert set(seen) == {(s, s)}
    # ... and their correction is the upsampled one: box-downsampled back, they match the native result.
    down = b.reshape(2, s, 2, s, 2, 3).astype(np.float64).mean(axis=(2, 4))
    plain = Reconstructor(ReconstructConfig(device="cpu", size=s, sharpen=False), model=model).render(g, vm)
    assert np.abs(down - a).mean() < 0.25 * np.abs(a.astype(float) - plain).mean()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_gpu(checkpoint, tmp_path, capsys):
    rc = main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
               "--size", "64", "--device", "cuda"])
    assert rc != 0
    assert "no CUDA GPU" in capsys.readouterr().err


def test_back_colour_difference_compares_the_back_with_the_top_of_the_photos_head():
    from perchead.inference.reconstruct import back_colour_difference

    s = 32
    mask = np.zeros((s, s))
    mask[4:30, 8:24] = 1.0
    crop = np.ones((s, s, 3))
    crop[:12] = [0.8, 0.65, 0.3]  # blond hair at the top of the head
    crop[12:] = [0.9, 0.7, 0.6]
    alpha = mask.copy()
    blond_back = np.broadcast_to(np.array([0.8, 0.65, 0.3]), (s, s, 3))
    dark_back = np.full((s, s, 3), 0.05)
    assert back_colour_difference(blond_back, alpha, crop, mask) < 1e-6
    assert back_colour_difference(dark_back, alpha, crop, mask) > 40  # near-black against blond: measured 83
    assert np.isnan(back_colour_difference(dark_back, np.zeros((s, s)), crop, mask))
