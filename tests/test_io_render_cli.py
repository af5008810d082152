"""`perchead render` and the media writers: valid files out, clear errors, nothing partial on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from perchead.cli import main
from perchead.geometry import Cameras, Gaussians
from perchead.io import commands as render_command
from perchead.io import example_head_path, image_grid, load_ply, save_ply, save_splat, write_video
from perchead.io.commands import UP_ROTATIONS, frame_scene, parse_background
from perchead.render import rasterize


def toy_scene() -> Gaussians:
    """A red blob on top and a blue one below a green one: orientation and framing are easy to check."""
    means = torch.tensor([[0.0, 0.25, 0.0], [0.0, 0.0, 0.0], [0.0, -0.25, 0.0]])
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return Gaussians.from_activated(means, torch.full((3, 3), 0.1), torch.tensor([[1.0, 0, 0, 0]] * 3),
                                    torch.full((3,), 0.95), rgb)


def read_video(path):
    with imageio.get_reader(str(path)) as reader:
        return np.stack([frame for frame in reader]), reader.get_meta_data()  # list() chokes on len() = inf


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_render_writes_turntable_and_grid(tmp_path, capsys):
    save_ply(toy_scene(), tmp_path / "toy.ply")
    out_mp4, out_png = tmp_path / "out" / "turn.mp4", tmp_path / "views.png"
    code, out, err = run(["render", str(tmp_path / "toy.ply"), "--turntable", str(out_mp4), "--grid", str(out_png),
                          "--size", "64", "--frames", "6", "--fps", "12", "--backend", "cpu"], capsys)
    assert code == 0, err
    assert "wrote" in out and "turn.mp4" in out

    frames, meta = read_video(out_mp4)
    assert frames.shape == (6, 64, 64, 3)
    assert meta["codec"] == "h264" and meta["fps"] == pytest.approx(12.0)
    # The scene is in the middle of every frame and the corners are the white background.
    assert frames[:, 28:36, 28:36].mean() < 200
    assert frames[:, :4, :4].min() > 240

    grid = np.asarray(Image.open(out_png).convert("RGB"))
    pad = 4
    assert grid.shape[1] == 3 * (64 + pad) + pad  # three columns of views
    assert grid.shape[0] > 2 * (64 + pad)  # two rows, plus label strips
    front = grid[pad:pad + 64, pad:pad + 64].astype(int)
    # Red blob above blue in the front view (+y is up by default): not upside down.
    top, bottom = front[:32].reshape(-1, 3), front[32:].reshape(-1, 3)
    assert (top[:, 0] - top[:, 2]).max() > 100 and (bottom[:, 2] - bottom[:, 0]).max() > 100
    # Labels are drawn under the first cell.
    assert grid[pad + 64:pad + 64 + 20, pad:pad + 64].min() < 100
    assert not [p.name for p in tmp_path.rglob("*partial*")]


@pytest.mark.parametrize("up", ["-y", "+z", "-z"])
def test_up_axis_option_undoes_a_rotated_world(tmp_path, capsys, up):
    scene = toy_scene()  # isotropic blobs, so only the centres need rotating
    save_ply(scene, tmp_path / "up.ply")
    # The same scene stored with ``up`` as its up axis (e.g. "-y": OpenCV world, y down and z back).
    to_canonical = torch.tensor(UP_ROTATIONS[up], dtype=torch.float32)
    save_ply(scene.replace(means=scene.means @ to_canonical), tmp_path / "rotated.ply")
    common = ["--size", "48", "--backend", "cpu"]
    assert main(["render", str(tmp_path / "up.ply"), "--grid", str(tmp_path / "a.png"), *common]) == 0
    assert main(["render", str(tmp_path / "rotated.ply"), "--grid", str(tmp_path / "b.png"), "--up", up,
                 *common]) == 0
    assert main(["render", str(tmp_path / "rotated.ply"), "--grid", str(tmp_path / "c.png"), *common]) == 0
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(float) for n in "abc")
    assert np.abs(a - b).mean() < 1.0  # same pictures
    assert np.abs(a - c).mean() > 3.0  # without --up the rotated file renders differently


def test_render_reads_splat_and_odd_sizes(tmp_path, capsys):
    save_splat(toy_scene(), tmp_path / "toy.splat")
    code, _, err = run(["render", str(tmp_path / "toy.splat"), "--turntable", str(tmp_path / "t.mp4"), "--size",
                        "33", "--frames", "3", "--backend", "cpu", "--background", "0,0,0"], capsys)
    assert code == 0, err
    frames, _ = read_video(tmp_path / "t.mp4")
    assert frames.shape == (3, 34, 34, 3)  # yuv420p needs even sizes: padded by one row and column
    assert frames[:, :3, :3].max() < 20  # black background


@pytest.mark.parametrize("argv,message", [
    (["--grid", "g.png"], "no such file"),
    ([], "nothing to write"),
    (["--turntable", "t.avi"], "unsupported video format"),
    (["--grid", "g.png", "--background", "purple"], "--background"),
])
def test_bad_arguments_exit_1_with_a_message(tmp_path, capsys, argv, message):
    scene = tmp_path / "missing.ply" if message == "no such file" else tmp_path / "toy.ply"
    if scene.name == "toy.ply":
        save_ply(toy_scene(), scene)
    argv = [a if not a.endswith((".png", ".avi")) else str(tmp_path / a) for a in argv]
    code, _, err = run(["render", str(scene), *argv, "--backend", "cpu"], capsys)
    assert code == 1
    assert message in err and "perchead render: error" in err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.avi"))


def test_not_a_ply_exits_1(tmp_path, capsys):
    (tmp_path / "notes.ply").write_text("these are not Gaussians\n")
    code, _, err = run(["render", str(tmp_path / "notes.ply"), "--grid", str(tmp_path / "g.png")], capsys)
    assert code == 1 and "not a PLY file" in err
    assert not (tmp_path / "g.png").exists()


def test_failure_midway_leaves_no_output(tmp_path, capsys, monkeypatch):
    save_ply(toy_scene(), tmp_path / "toy.ply")
    (tmp_path / "turn.mp4").write_bytes(b"old video")

    def broken_video(frames, path, fps):
        next(iter(frames))
        raise RuntimeError("disk full")

    monkeypatch.setattr(render_command, "write_video", broken_video)
    code, _, err = run(["render", str(tmp_path / "toy.ply"), "--grid", str(tmp_path / "g.png"), "--turntable",
                        str(tmp_path / "turn.mp4"), "--size", "32", "--frames", "2", "--backend", "cpu"], capsys)
    assert code == 1 and "disk full" in err
    assert not (tmp_path / "g.png").exists()  # the grid had rendered, but is not committed
    assert (tmp_path / "turn.mp4").read_bytes() == b"old video"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.ply", "turn.mp4"]


def test_framing_centres_the_scene_and_ignores_floaters():
    g = toy_scene()
    target, distance = frame_scene(g, fov_deg=15.0)
    torch.testing.assert_close(target, torch.zeros(3), rtol=0, atol=1e-6)
    # Half-height 0.25 + 2 sigma = 0.45 spans 60% of the half frame (plus the near-side margin).
    assert distance == pytest.approx(0.45 / (0.6 * np.tan(np.radians(7.5))) + 0.45, rel=1e-4)

    crowd = Gaussians.from_activated(torch.randn(500, 3) * 0.05, torch.full((500, 3), 0.005),
                                     torch.tensor([[1.0, 0, 0, 0]]).repeat(500, 1), torch.full((500,), 0.9),
                                     torch.rand(500, 3))
    floater = Gaussians.from_activated(torch.tensor([[50.0, 0, 0]]), torch.full((1, 3), 1.0),
                                       torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([0.9]), torch.rand(1, 3))
    t1, d1 = frame_scene(crowd, 15.0)
    t2, d2 = frame_scene(Gaussians.cat([crowd, floater]), 15.0)
    assert float((t1 - t2).norm()) < 0.01 and d2 < 1.1 * d1


def test_framing_refuses_an_invisible_scene():
    g = toy_scene().replace(opacity_logits=torch.full((3,), -20.0))
    with pytest.raises(ValueError, match="transparent"):
        frame_scene(g, 15.0)


def test_parse_background():
    assert parse_background("white") == (1.0, 1.0, 1.0)
    assert parse_background("0.5,0,1") == (0.5, 0.0, 1.0)
    assert parse_background("255,0,51") == pytest.approx((1.0, 0.0, 0.2))
    for bad in ("blue-ish", "1,2", "300,0,0", "-1,0,0"):
        with pytest.raises(ValueError):
            parse_background(bad)


def test_image_grid_layout_and_labels():
    images = [np.full((20, 30, 3), v, np.uint8) for v in (0, 60, 120, 180)]
    plain = image_grid(images, ncols=3)
    assert plain.dtype == np.uint8 and plain.shape == (2 * 24 + 4, 3 * 34 + 4, 3)
    assert plain[4:24, 38:68].max() == 60 and plain[28:48, 4:34].max() == 180  # row-major order
    labelled = image_grid(images, ncols=2, labels=["a", "b", "c", "d"])
    assert labelled.shape[0] > 2 * 24 + 4 and labelled.shape[1] == 2 * 34 + 4
    assert labelled[24:34, 4:34].min() < 128  # a dark label under the first image
    with pytest.raises(ValueError, match="labels"):
        image_grid(images, 2, labels=["a"])
    with pytest.raises(ValueError, match="one size"):
        image_grid([images[0], np.zeros((5, 5, 3), np.uint8)], 2)


def test_write_video_float_frames_and_gif(tmp_path):
    frames = np.linspace(0, 1, 5)[:, None, None, None] * np.ones((5, 16, 24, 3))
    assert write_video(frames, tmp_path / "v.mp4", fps=10) == 5
    video, meta = read_video(tmp_path / "v.mp4")
    assert video.shape == (5, 16, 24, 3) and meta["fps"] == pytest.approx(10.0)
    np.testing.assert_allclose(video.mean(axis=(1, 2, 3)), np.linspace(0, 255, 5), atol=6)
    assert write_video(torch.from_numpy(frames).float(), tmp_path / "v.gif", fps=10) == 5
    assert Image.open(tmp_path / "v.gif").n_frames == 5
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4"]


def test_example_head_asset_is_a_head_in_the_canonical_frame():
    path = example_head_path()
    assert path.stat().st_size <= 3_000_000
    head = load_ply(path)
    assert head.sh_degree == 0 and 15_000 <= len(head) <= 22_000
    lo, hi = head.means.min(0).values, head.means.max(0).values
    assert 0.16 < float(hi[0] - lo[0]) < 0.2  # ~0.18 m wide with the ears
    assert abs(float(hi[0] + lo[0])) < 0.005  # left-right symmetric about x = 0
    # Front (camera on +z) sees skin around the middle; the back sees dark hair.
    cams = Cameras.orbit([0.0, 180.0], 0.0, radius=1.2, fov_deg=15.0, size=48)
    rgb = rasterize(head, cams.viewmats, cams.Ks, 48, 48, backend="cpu").rgb[:, 16:32, 18:30].mean((1, 2))
    front, back = rgb[0], rgb[1]
    assert float(front[0]) > 0.6 and float(front[0]) > float(front[2]) + 0.1  # warm skin tone
    assert float(back.mean()) < 0.3  # hair


@pytest.mark.slow
def test_example_head_script_is_deterministic(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_example_splat.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "head.ply")], check=True)
    assert (tmp_path / "head.ply").read_bytes() == example_head_path().read_bytes()
