"""The bundled editing demo checkpoint (assets/demo_edit, when present) loads offline from any directory, says
that its CLIP is a stand-in, and turns a map + a style image into Gaussians that follow the style."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perchead.cli import main
from perchead.data.format import SEG
from perchead.edit import load_edit_network, save_segmentation
from perchead.inference import DEMO_CHECKPOINT

DEMO_EDIT = DEMO_CHECKPOINT.parent / "demo_edit"
pytestmark = pytest.mark.skipif(not (DEMO_EDIT / "model.safetensors").is_file(),
                                reason="the editing demo checkpoint is not in this checkout")


def head_map(size: int) -> np.ndarray:
    """An oval face with hair on top, eyes, nose, lips and a neck, on background."""
    y, x = np.mgrid[:size, :size] / size
    seg = np.zeros((size, size), np.uint8)
    seg[((x - 0.5) / 0.36) ** 2 + ((y - 0.42) / 0.4) ** 2 < 1] = SEG["hair"]
    seg[((x - 0.5) / 0.28) ** 2 + ((y - 0.5) / 0.34) ** 2 < 1] = SEG["skin"]
    seg[(np.abs(x - 0.5) < 0.12) & (y > 0.8)] = SEG["neck"]
    for cx, name in ((0.4, "r_eye"), (0.6, "l_eye")):
        seg[((x - cx) / 0.05) ** 2 + ((y - 0.45) / 0.025) ** 2 < 1] = SEG[name]
    seg[(np.abs(x - 0.5) < 0.03) & (y > 0.47) & (y < 0.6)] = SEG["nose"]
    seg[(np.abs(x - 0.5) < 0.08) & (y > 0.66) & (y < 0.69)] = SEG["u_lip"]
    seg[(np.abs(x - 0.5) < 0.08) & (y >= 0.69) & (y < 0.72)] = SEG["l_lip"]
    return seg


def solid(rgb, size: int = 64) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_demo_edit_loads_offline_and_follows_the_style(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the bundled CLIP is found next to the checkpoint, not in the cwd
    net = load_edit_network("demo").eval()
    assert "not a real CLIP" in net.notice and "other words are refused" in net.notice
    assert net.edit_config.clip.startswith(str(DEMO_EDIT.resolve()))
    s = net.config.image_size
    seg = torch.from_numpy(head_map(s).astype(np.int64))[None]
    with torch.no_grad():
        dark = net.generate(seg, net.style_from_image(solid((0.25, 0.15, 0.1))))
        light = net.generate(seg, net.style_from_image(solid((0.9, 0.75, 0.6))))
    dark.check_finite()
    assert dark.means.shape == (1, net.template.num_points, 3)
    # the style sets the colours: a light reference gives a clearly lighter head than a dark one, same map
    assert (light.rgb - dark.rgb).abs().mean() > 0.1 and light.rgb.mean() > dark.rgb.mean() + 0.1


def test_perchead_edit_demo_writes_the_notice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    save_segmentation(tmp_path / "map.png", head_map(128))
    Image.fromarray(np.full((48, 48, 3), (180, 120, 90), np.uint8)).save(tmp_path / "ref.png")
    code = main(["edit", "--seg", "map.png", "--style-image", "ref.png", "-o", "out", "--checkpoint", "demo",
                 "--size", "48", "--frames", "2", "--no-video", "--device", "cpu"])
    assert code == 0
    info = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert info["checkpoint"] == "demo" and "not a real CLIP" in info["notice"]


def _text_hair_rgb() -> dict[str, torch.Tensor]:
    """Mean RGB of the hair Gaussians of the demo's head for three typed styles, on one map."""
    from perchead.edit.fidelity import gaussian_labels
    from perchead.edit.pipeline import map_camera

    net = load_edit_network("demo").eval()
    s = net.config.image_size
    seg = torch.from_numpy(head_map(s).astype(np.int64))
    with torch.no_grad():
        heads = {p: net.generate(seg[None], net.style_from_text(p))[0] for p in ("red hair", "black hair",
                                                                                  "blonde hair")}
    vm, K = map_camera(s)
    hair = gaussian_labels(heads["black hair"], seg, vm, K)[:, SEG["hair"]] > 0.5
    return {p: g.rgb[hair].mean(0) for p, g in heads.items()}


def test_demo_edit_text_styles_follow_the_lightness_named(monkeypatch):
    # The demo's CLIP stand-in was trained on the synthetic heads' captions and the network on its image
    # embeddings: a prompt's text embedding must reach the network as the images it describes would.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rgb = _text_hair_rgb()
    # measured on this map (mean RGB of the hair Gaussians): 0.464 for "blonde hair" vs 0.086 for "black hair";
    # the bound is a third of the gap (0.38).
    assert rgb["blonde hair"].mean() > rgb["black hair"].mean() + 0.12


def test_demo_edit_text_styles_follow_the_hue_named(monkeypatch):
    from perchead.inference.reconstruct import srgb_to_lab

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rgb = _text_hair_rgb()
    red, black, blonde = (srgb_to_lab(rgb[p].double().numpy()) for p in ("red hair", "black hair", "blonde hair"))
    # Issue 31's bounds on this map's hair Gaussians (mean colour): "red hair" redder (a*) than "black hair" by 10
    # and than "blonde hair" by 5. Measured: a* 32.4 / 7.8 / -3.2 (margins 14.6 and 30.6); the demo before the
    # editing network's colour read: 3.4 above "black hair".
    assert red[1] > black[1] + 10.0 and red[1] > blonde[1] + 5.0, (red, black, blonde)


def test_perchead_edit_demo_refuses_unknown_words(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    save_segmentation(tmp_path / "map.png", head_map(128))
    code = main(["edit", "--seg", "map.png", "--style-text", "curly purple hair", "-o", "out", "--no-video",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and not (tmp_path / "out").exists()
    assert "unknown word(s) 'curly'" in err and "ginger" in err and "platinum" in err
