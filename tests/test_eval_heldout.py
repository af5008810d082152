"""perchead.eval.heldout: the held-out table of a checkpoint against the mean-colour template baseline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from perchead.eval.heldout import (
    METHODS,
    HeldoutConfig,
    checks,
    eval_heldout,
    evaluate_heldout,
    format_table,
    mean_colour_template,
    mean_foreground_colour,
    predict,
)
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras, Gaussians
from perchead.model import PercHead
from perchead.render import rasterize
from perchead.train.testing import tiny_model_config, write_toy_dataset

SIZE = 40
VIEWS = 8  # yaw 0, 45, ..., 315: a frontal input, 7 novel targets of which +-90 are extreme and 180 the back;
# the profiles at +-90 also make the two opposite-profile pairs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    data = write_toy_dataset(root / "data", subjects=2, views=VIEWS, size=SIZE, val=0)
    torch.manual_seed(0)
    model = PercHead(tiny_model_config(image_size=SIZE))
    ckpt = model.save_pretrained(root / "ckpt")
    return data, ckpt, root


def test_table_has_every_row_with_finite_values(setup):
    data, ckpt, _ = setup
    result = evaluate_heldout(ckpt, data, HeldoutConfig(split="train"))
    groups = {(s["group"], s["method"]): s for s in result.summary}
    all_groups = ("novel", "extreme", "extreme_back", "opposite_profile", "opposite_profile_left_to_right",
                  "opposite_profile_right_to_left")
    for group in all_groups:
        for method in METHODS:
            row = groups[(group, method)]
            assert math.isfinite(row["psnr"]) and math.isfinite(row["ssim"]), row
            assert row["subjects"] == 2
    # novel: every view but the frontal input is a target; extreme: the two profiles, extreme_back: yaw 180;
    # opposite_profile: one mirrored profile per direction
    assert groups[("novel", "model")]["images"] == 2 * (VIEWS - 1)
    assert groups[("extreme", "model")]["images"] == 2 * 2 and groups[("extreme_back", "model")]["images"] == 2
    assert groups[("opposite_profile", "model")]["images"] == 2 * 2
    assert len(result.rows) == len(METHODS) * 2 * (VIEWS - 1 + 2 + 1 + 2)
    table = format_table(result)
    for method in METHODS:
        assert table.count(f"| {method} |") == len(all_groups)
    assert set(result.checks) >= {"novel", "extreme", "opposite_profile", "all_pass"}
    assert "extreme_back" not in result.checks  # reported, not checked
    assert result.info["image_size"] == SIZE and result.info["subjects"] == 2


def test_untrained_shp_cnn_is_the_identity(setup):
    # SHP-CNN's last layer starts at zero: sharpened and unsharpened scores agree exactly.
    data, ckpt, _ = setup
    result = evaluate_heldout(ckpt, data, HeldoutConfig(split="train", max_subjects=1))
    raw = [r["psnr"] for r in result.rows if r["method"] == "model"]
    sharp = [r["psnr"] for r in result.rows if r["method"] == "model_sharpened"]
    assert raw == sharp and len(raw) > 0
    assert result.checks["novel"]["sharpening_not_worse"]


def test_baseline_is_the_documented_template():
    model = PercHead(tiny_model_config(image_size=SIZE))
    image = torch.zeros(2, 3, SIZE, SIZE)
    image[0, 0] = 1.0  # subject 0 red
    image[1, :, : SIZE // 2] = 0.2
    image[1, :, SIZE // 2 :] = 0.6
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[0] = 1.0
    mask[1, :, : SIZE // 4] = 1.0  # only the 0.2 half is foreground, and only half of it
    colour = mean_foreground_colour(image, mask)
    assert torch.allclose(colour, torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.2, 0.2]]), atol=1e-6)

    g = mean_colour_template(model, image, mask, opacity=0.9, scale=0.5)
    anchors, _ = model.template.points()
    sigma = 0.5 * model.template.point_spacing()
    assert g.means.shape == (2, anchors.shape[0], 3)
    assert torch.allclose(g.means, anchors.expand_as(g.means))
    assert torch.allclose(g.scales, torch.full_like(g.scales, sigma), rtol=1e-5)
    assert torch.allclose(g.opacities, torch.full_like(g.opacities, 0.9), atol=1e-5)
    assert torch.allclose(g.rotations, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand_as(g.rotations))
    assert torch.allclose(g.rgb, colour[:, None].expand_as(g.rgb), atol=1e-5)

    # predict() renders exactly those Gaussians (built here independently) for the baseline column.
    cams = Cameras.orbit([0.0, 90.0], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, SIZE)
    vm, Ks = cams.viewmats[None].expand(2, -1, -1, -1), cams.Ks[None].expand(2, -1, -1, -1)
    n = anchors.shape[0]
    by_hand = Gaussians.from_activated(anchors.expand(2, n, 3), torch.full((2, n, 3), sigma),
                                       torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(2, n, 4),
                                       torch.full((2, n), 0.9), colour[:, None].expand(2, n, 3))
    expected = rasterize(by_hand, vm, Ks, SIZE, SIZE).rgb.permute(0, 1, 4, 2, 3)
    got = predict(model, image, mask, vm, Ks, SIZE, HeldoutConfig())["template_mean_colour"]
    assert torch.allclose(got, expected.clamp(0, 1), atol=1e-5)
    # and it is a head: the frontal render covers the image centre in the subject's colour
    assert torch.allclose(got[0, 0, :, SIZE // 2, SIZE // 2], torch.tensor([1.0, 0.0, 0.0]), atol=0.15)


def test_checks_use_the_margin_and_the_sharpening_rule():
    def summary(base, raw, sharp):
        return [{"group": g, "method": m, "psnr": v} for g in ("novel", "extreme", "opposite_profile")
                for m, v in zip(METHODS, (base, raw, sharp), strict=True)]

    good = checks(summary(15.0, 17.4, 17.5))
    assert good["all_pass"] and good["novel"]["beats_baseline"]
    assert good["extreme"]["model_sharpened_minus_baseline_db"] == pytest.approx(2.5)
    assert not checks(summary(15.0, 16.0, 16.9))["novel"]["beats_baseline"]
    worse = checks(summary(15.0, 17.5, 17.4))
    assert worse["novel"]["beats_baseline"] and not worse["novel"]["sharpening_not_worse"] and not worse["all_pass"]
    # a task without pairs (a front-only rig has no profiles) fails the checks instead of passing unseen
    front_only = checks([s for s in summary(15.0, 17.4, 17.5) if s["group"] == "novel"])
    assert front_only["extreme"] == {"evaluated": False} and not front_only["all_pass"]


def test_command_writes_json_and_rejects_data_without_multiview_subjects(setup, tmp_path, capsys):
    data, ckpt, root = setup
    out = tmp_path / "heldout.json"
    assert eval_heldout(str(ckpt), data, out=out, figure=tmp_path / "fig.png",
                        config=HeldoutConfig(split="train", max_subjects=1)) == 0
    saved = json.loads(out.read_text())
    assert {"summary", "checks", "info", "rows"} <= set(saved)
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert "model_sharpened" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no multi-view"):
        evaluate_heldout(ckpt, data, HeldoutConfig(split="test"))
