"""The web app's handlers without a browser: good uploads give files, bad ones give a message (never an
exception), painted maps come back as the painted classes, and the viewer's copy is the same head turned."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from perchead.app import AppConfig, PercheadApp, labels_from_editor, labels_from_picture, nearest_class
from perchead.app import handlers as handlers_module
from perchead.app.handlers import EXAMPLE_PHOTO, VIEWER_SCALE, viewer_gaussians
from perchead.app.painting import MapError, palette_hex
from perchead.data.format import SEG
from perchead.edit import PALETTE, EditNetwork, colorize, load_segmentation, save_segmentation
from perchead.inference.reconstruct import TURNED_VIEWS
from perchead.io import load_ply
from perchead.io.commands import GRID_VIEWS
from perchead.losses import load_clip
from perchead.losses.testing import tiny_clip_config, tiny_clip_tokenizer
from perchead.model import PercHead, preset
from perchead.render.project import quat_scale_to_covar

SMALL = dict(size=48, frames=2, video_size=48, fit_steps=0, edit_fit_steps=10, device="cpu")


def save_tiny_edit_checkpoint(root):
    """A random tiny-preset EditNetwork and the tiny random CLIP it names (what tests can have offline)."""
    from transformers import CLIPModel

    tokenizer = tiny_clip_tokenizer()
    CLIPModel(tiny_clip_config(len(tokenizer))).save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    torch.manual_seed(0)
    net = EditNetwork.from_reconstruction(PercHead(preset("tiny")), clip=load_clip(str(root / "clip")))
    return net.save_pretrained(root / "edit")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    ckpt = save_tiny_edit_checkpoint(root)
    app = PercheadApp(AppConfig(edit_checkpoint=str(ckpt), work_dir=root / "work", max_results=3, **SMALL))
    assert app.edit_error is None
    yield app
    app.close()


@pytest.fixture(scope="module")
def example_map(app):
    result = app.map_from_photo(EXAMPLE_PHOTO)
    assert result.ok, result.message
    return result


def test_reconstruct_writes_every_file(app):
    seen = []
    result = app.reconstruct(EXAMPLE_PHOTO, progress=lambda f, what: seen.append((f, what)))
    assert result.ok, result.message
    assert result.message.startswith("Reconstructed 4,096 Gaussians")
    assert set(result.files) >= {"ply", "splat", "video", "views", "viewer", "json"}
    assert [p.name for p in result.downloads] == ["head.ply", "head.splat", "turntable.mp4", "views.png",
                                                  "reconstruction.json"]
    g = load_ply(result.files["ply"])
    assert len(g) == preset("tiny").num_gaussians and torch.isfinite(g.means).all()
    assert result.files["splat"].stat().st_size == 32 * len(g)
    views = np.asarray(Image.open(result.files["views"]))
    assert views.shape[2] == 3 and (views < 250).any()  # the renders drew something on the white background
    assert json.loads(result.files["json"].read_text())["num_gaussians"] == len(g)
    v = load_ply(result.files["viewer"])
    torch.testing.assert_close(v.means, g.means * torch.tensor([1.0, -1.0, -1.0]) * VIEWER_SCALE)
    # progress is reported, in order, from start to the files, with the turntable's frames counted
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] < 0.1 and fractions[-1] >= 0.8
    frames = [what for _, what in seen if "turntable" in what]
    assert frames[0].endswith("frame 0/2") and frames[-1].endswith("frame 2/2"), frames
    n_views = len(GRID_VIEWS) + 1 + len(TURNED_VIEWS)  # the grid's, the input camera's and its two turns
    assert any(what.endswith(f"views: {n_views}/{n_views}") for _, what in seen), seen
    # the delivered metadata names the photo, not where it lies on the server
    info = json.loads(result.files["json"].read_text())
    assert info["source"] == EXAMPLE_PHOTO.name
    assert not absolute_paths(info), absolute_paths(info)


def absolute_paths(value) -> list[str]:
    """Every absolute path among the strings of parsed JSON."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in absolute_paths(v)]
    return [value] if isinstance(value, str) and os.path.isabs(value) else []


def test_viewer_copy_is_the_head_turned_about_x_and_scaled():
    torch.manual_seed(1)
    n = 50
    g = handlers_module.Gaussians(torch.randn(n, 3), torch.randn(n, 3) * 0.3 - 3, torch.randn(n, 4),
                                  torch.randn(n), torch.randn(n, 4, 3))
    v = viewer_gaussians(g, scale=3.0)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(v.means, g.means @ flip.T * 3.0)
    cov = quat_scale_to_covar(g.rotations, g.scales)
    cov_v = quat_scale_to_covar(v.rotations, v.scales)
    torch.testing.assert_close(cov_v, flip @ cov @ flip.T * 9.0, rtol=1e-4, atol=1e-6)
    assert v.sh.shape == (n, 1, 3)  # only the rotation-invariant DC colour
    torch.testing.assert_close(v.opacity_logits, g.opacity_logits)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("corrupt", "not a recognised image"),
    ("truncated", "truncated"),
    ("empty", "empty"),
    ("missing", "gone from the server"),
    ("none", "no photo was uploaded"),
])
def test_bad_photo_uploads_are_messages(app, tmp_path, kind, expected):
    if kind == "corrupt":
        photo = _write(tmp_path / "photo.jpg", b"this is not a picture at all" * 10)
    elif kind == "truncated":
        data = EXAMPLE_PHOTO.read_bytes()
        photo = _write(tmp_path / "photo.png", b"")
        Image.open(EXAMPLE_PHOTO).save(photo)
        photo.write_bytes(photo.read_bytes()[: len(data) // 3])
    elif kind == "empty":
        photo = _write(tmp_path / "photo.jpg", b"")
    elif kind == "missing":
        photo = tmp_path / "gone.jpg"
    else:
        photo = None
    result = app.reconstruct(photo)
    assert not result.ok and not result.files
    assert expected in result.message
    assert str(tmp_path) not in result.message  # file names, not the server's paths
    assert "b'" not in result.message and "\\x" not in result.message  # no Python reprs of bytes
    if kind == "corrupt":
        assert "it looks like a text file" in result.message, result.message


def test_photo_without_a_face_is_a_message(app, tmp_path):
    photo = tmp_path / "wall.png"
    Image.fromarray(np.full((240, 320, 3), (180, 170, 160), np.uint8)).save(photo)
    result = app.reconstruct(photo)
    assert not result.ok and "No face was found" in result.message
    assert not app.map_from_photo(photo).ok


def test_oversized_upload_and_huge_image_are_messages(app, tmp_path, monkeypatch):
    monkeypatch.setattr(app.config, "max_upload_mb", 0.01)  # the example photo is ~66 kB
    result = app.reconstruct(EXAMPLE_PHOTO)
    assert not result.ok and "above this app's limit of 0.01 MB" in result.message
    monkeypatch.setattr(app.config, "max_upload_mb", 20.0)
    monkeypatch.setattr(app.config, "max_pixels", 1000)
    result = app.reconstruct(EXAMPLE_PHOTO)
    assert not result.ok and "Mpx" in result.message


def test_map_from_photo_and_from_files(app, example_map, tmp_path):
    labels = example_map.labels
    assert labels.shape == (app.map_size(), app.map_size())
    assert {SEG["skin"], SEG["hair"], SEG["background"]} <= set(np.unique(labels).tolist())
    np.testing.assert_array_equal(example_map.picture, colorize(labels))

    ids = np.zeros((64, 64), np.uint8)
    ids[10:50, 16:48] = SEG["skin"]
    save_segmentation(tmp_path / "ids.png", ids)
    ok = app.map_from_file(tmp_path / "ids.png")
    assert ok.ok and ok.labels.shape == (app.map_size(),) * 2 and ok.labels[app.map_size() // 2].max() == SEG["skin"]

    Image.fromarray(np.full((8, 8), 30, np.uint8)).save(tmp_path / "unknown.png")
    Image.fromarray(np.ones((8, 10), np.uint8)).save(tmp_path / "wide.png")
    _write(tmp_path / "broken.png", b"\x89PNG\r\n\x1a\n garbage")
    for name, expected in [("unknown.png", r"unknown label(s) [30]"), ("wide.png", "must be square"),
                           ("broken.png", "not a readable image")]:
        result = app.map_from_file(tmp_path / name)
        assert not result.ok and expected in result.message, (name, result.message)


def test_painted_strokes_become_classes_and_change_the_head(app, example_map):
    size = app.map_size()
    plain = app.render_edit({"background": example_map.picture, "layers": []}, "red hair")
    assert plain.ok, plain.message
    assert {"ply", "splat", "video", "views", "viewer", "map", "json"} <= set(plain.files)
    # a stroke of hair across the face, anti-aliased: full alpha inside, fading out over 3 pixels
    stroke = np.zeros((size, size, 4), np.uint8)
    stroke[..., :3] = PALETTE[SEG["hair"]]
    y0, y1 = size // 2 - 6, size // 2 + 6
    stroke[y0:y1, size // 4: 3 * size // 4, 3] = 255
    for k, a in enumerate((170, 90, 30)):
        stroke[y0 - 1 - k, size // 4: 3 * size // 4, 3] = a
    labels = labels_from_editor({"background": example_map.picture, "layers": [stroke]})
    assert (labels[y0:y1, size // 4: 3 * size // 4] == SEG["hair"]).all()
    assert labels[y0 - 1, size // 2] == SEG["hair"]  # alpha 170: painted
    assert labels[y0 - 2, size // 2] == example_map.labels[y0 - 2, size // 2]  # alpha 90: not
    changed = (labels != example_map.labels).mean()
    assert 0 < changed < 0.1

    painted = app.render_edit({"background": example_map.picture, "layers": [stroke]}, "red hair")
    assert painted.ok, painted.message
    saved = load_segmentation(painted.files["map"])
    assert (saved == SEG["hair"]).sum() > (load_segmentation(plain.files["map"]) == SEG["hair"]).sum()
    # The network saw the painted map. (A random network barely reacts to its map -- ~1e-5 -- so this asks for
    # any change at all; the same map twice gives the same bytes, inference being deterministic.)
    again = app.render_edit({"background": example_map.picture, "layers": []}, "red hair")
    assert again.files["ply"].read_bytes() == plain.files["ply"].read_bytes()
    assert painted.files["ply"].read_bytes() != plain.files["ply"].read_bytes()
    info = json.loads(painted.files["json"].read_text())
    assert info["style"] == {"text": "red hair"}
    # the page says how closely the head followed the painting (measured from the map's camera, after the fit),
    # apart from what was not measured: whether the style took
    measured, not_measured = painted.message.split("**Not measured**")
    assert info["map_fit"]["ran"] and "**Measured**" in measured and "silhouette IoU" in measured, painted.message
    assert "style" in not_measured and "IoU" not in not_measured
    iou = info["map_fidelity"]["silhouette_iou"]
    assert f"silhouette IoU {iou:.2f}" in painted.message
    assert not absolute_paths(info), absolute_paths(info)


def test_reference_image_style(app, example_map, tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((40, 40, 3), (30, 60, 200), np.uint8)).save(ref)
    result = app.render_edit(example_map.picture, "ignored when an image is given", ref)
    assert result.ok, result.message
    assert json.loads(result.files["json"].read_text())["style"] == {"image": "ref.png"}
    text = app.render_edit(example_map.picture, "a person with red hair")
    assert not torch.allclose(load_ply(result.files["ply"]).sh, load_ply(text.files["ply"]).sh)


@pytest.mark.parametrize("case, expected", [
    ("nothing", "there is no map"),
    ("photo", "not class colours"),
    ("wide", "must be square"),
    ("empty_map", "all background"),
    ("no_style", "no style"),
    ("bad_style_image", "not a recognised image"),
])
def test_bad_edit_inputs_are_messages(app, example_map, tmp_path, case, expected):
    rng = np.random.default_rng(0)
    picture, text, image = example_map.picture, "red hair", None
    if case == "nothing":
        picture = None
    elif case == "photo":
        picture = np.asarray(Image.open(EXAMPLE_PHOTO).convert("RGB").resize((128, 128)))
    elif case == "wide":
        picture = colorize(rng.integers(0, 19, (32, 48)).astype(np.uint8))
    elif case == "empty_map":
        picture = np.zeros((64, 64, 3), np.uint8)
    elif case == "no_style":
        text = "   "
    else:
        image = _write(tmp_path / "ref.jpg", b"not an image")
    result = app.render_edit(picture, text, image)
    assert not result.ok and not result.files
    assert expected in result.message, result.message


def test_nearest_class_and_layers():
    ids = np.arange(19, dtype=np.uint8).repeat(4).reshape(19, 4)
    noisy = PALETTE[ids].astype(np.int16) + np.random.default_rng(0).integers(-12, 13, (19, 4, 3))
    got, dist = nearest_class(np.clip(noisy, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(got, ids)
    assert dist.max() < 25
    assert palette_hex()[SEG["hair"]] == "#ff9933" and PALETTE[SEG["hair"]].tolist() == [255, 153, 51]
    # a transparent map is background; a layer of another size is refused
    clear = np.zeros((8, 8, 4), np.uint8)
    assert (labels_from_picture(clear) == 0).all()
    with pytest.raises(MapError, match="stroke layer 1 is 4x4"):
        labels_from_picture(clear, [np.zeros((4, 4, 4), np.uint8)])
    # without a background the composite is read
    comp = colorize(np.full((6, 6), SEG["skin"], np.uint8))
    assert (labels_from_editor({"background": None, "layers": [], "composite": comp}) == SEG["skin"]).all()


def test_edit_tab_without_a_checkpoint_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(handlers_module, "DEMO_EDIT_CHECKPOINT", tmp_path / "not_installed")
    app = PercheadApp(AppConfig(**SMALL))
    try:
        assert app.edit_rec is None and "Editing is not available" in app.edit_error
        assert "--edit-checkpoint" in app.edit_error
        result = app.map_from_photo(EXAMPLE_PHOTO)
        assert not result.ok and "Editing is not available" in result.message
        assert not app.render_edit(np.zeros((8, 8, 3), np.uint8), "x").ok
    finally:
        app.close()
    assert not app.root.exists()  # its own temporary folder is removed


def test_a_named_edit_checkpoint_that_fails_stops_the_start(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError)):
        PercheadApp(AppConfig(edit_checkpoint=str(tmp_path / "nothing"), **SMALL))


def test_old_results_are_deleted(app):
    made = []
    for _ in range(app.config.max_results + 3):
        made.append(app._new_result_dir("test"))
        made[-1].mkdir()
    kept = sorted(p for p in app.results_dir.iterdir() if p.is_dir())
    assert len(kept) == app.config.max_results and made[-1] in kept and made[0] not in kept


def test_a_session_keeps_only_its_newest_result_and_a_closed_page_takes_its_files(app, tmp_path):
    shared = app.rec
    app = PercheadApp(AppConfig(**SMALL, work_dir=tmp_path / "work"), reconstructor=shared)
    try:
        assert app.root.parent == tmp_path / "work" and app.root.name.startswith("perchead-app-")
        # an upload as gradio stores it: in its temporary folder, which is the app's folder
        upload = app.root / "0a1b2c" / "me.jpg"
        upload.parent.mkdir()
        upload.write_bytes(EXAMPLE_PHOTO.read_bytes())
        first = app.reconstruct(upload, session="page-1")
        second = app.reconstruct(upload, session="page-1")
        other = app.reconstruct(EXAMPLE_PHOTO, session="page-2")
        assert first.ok and second.ok and other.ok
        assert not first.files["ply"].parent.exists()  # replaced by the same page's next result
        assert second.files["ply"].is_file() and other.files["ply"].is_file()
        app.end_session("page-1")  # the page was closed
        assert not second.files["ply"].parent.exists() and not upload.exists() and not upload.parent.exists()
        assert other.files["ply"].is_file() and EXAMPLE_PHOTO.is_file()  # another page's; not an upload
        before = os.environ.get("GRADIO_TEMP_DIR")
        app.take_gradio_temp_dir()  # what ui.launch does: gradio's uploads and copies go into the app's folder
        assert os.environ["GRADIO_TEMP_DIR"] == str(app.root)
    finally:
        app.close()
    assert not any((tmp_path / "work").iterdir())
    assert os.environ.get("GRADIO_TEMP_DIR") == before  # no later page writes into the deleted folder


def test_keep_results_keeps_them_and_deletes_the_uploads(app, tmp_path):
    app = PercheadApp(AppConfig(**SMALL, work_dir=tmp_path, keep_results=True), reconstructor=app.rec)
    upload = app.root / "3d4e5f" / "me.jpg"
    upload.parent.mkdir()
    upload.write_bytes(EXAMPLE_PHOTO.read_bytes())
    first = app.reconstruct(upload, session="page")
    second = app.reconstruct(upload, session="page")
    app.end_session("page")
    app.close()
    assert first.files["ply"].is_file() and second.files["ply"].is_file()
    assert [p.name for p in app.root.iterdir()] == ["results"] and not upload.exists()


def test_class_colours_are_far_apart():
    """Every pair of brush colours at least 27 apart in CIELAB (34.3 measured; CelebAMask-HQ's colours, which
    the palette started from, had pairs 15 apart): people must tell them apart on screen."""
    rgb = PALETTE.astype(np.float64) / 255
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    lab = np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)
    distance = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(len(lab)) * 1e9
    assert distance.min() > 27, distance.min()


def test_cli_refuses_bad_options(capsys):
    from perchead.cli import main

    assert main(["app", "--max-upload-mb", "0"]) == 1
    assert "--max-upload-mb must be positive" in capsys.readouterr().err
    assert main(["app", "--port", "70000"]) == 1
    assert "--port must be 1..65535" in capsys.readouterr().err


def test_page_builds_with_and_without_editing(app, tmp_path, monkeypatch):
    from perchead.app import ui

    page = ui.build(app)
    apis = {d.api_name for d in page.fns.values()}
    assert {"reconstruct", "edit", "map_from_photo", "map_from_file"} <= apis
    monkeypatch.setattr(handlers_module, "DEMO_EDIT_CHECKPOINT", tmp_path / "not_installed")
    bare = PercheadApp(AppConfig(**SMALL), reconstructor=app.rec)
    try:
        config = json.dumps(ui.build(bare).get_config_file())
        assert "Editing is not available" in config and "map-editor" not in config
    finally:
        bare.close()


def test_app_reconstruction_is_fitted(tmp_path):
    """The Reconstruct tab runs the fit to the photo (a few steps here): more Gaussians, fit time in the note."""
    app = PercheadApp(AppConfig(**{**SMALL, "fit_steps": 2}, work_dir=tmp_path / "work"))
    try:
        app.rec.config.fit.size, app.rec.config.fit.num_gaussians = 32, 16384
        result = app.reconstruct(EXAMPLE_PHOTO)
        assert result.ok, result.message
        assert result.message.startswith("Reconstructed 16,384 Gaussians") and "fit " in result.message
    finally:
        app.close()

