"""Evaluation protocol: view angles from cameras, novel / extreme / opposite-profile pairing, held-out lists,
target crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perchead.eval.protocol import (
    AVA256_HELD_OUT_COUNT,
    ProtocolConfig,
    View,
    angle_between,
    describe_protocol,
    extreme_view_pairs,
    held_out_subjects,
    novel_view_pairs,
    opposite_profile_pairs,
    target_crop,
    task_group,
    view_pairs,
    views_from_cameras,
)
from perchead.geometry import input_camera, intrinsics, look_at, orbit_viewmats, project_points


def ring(yaws, pitch=0.0, prefix="y"):
    return [View(f"{prefix}{y:+.0f}p{pitch:+.0f}", float(y), float(pitch)) for y in yaws]


DOME = ring(range(-180, 180, 15)) + ring(range(-90, 91, 45), 40.0) + ring(range(-90, 91, 45), -40.0)


def test_views_from_cameras_recover_yaw_pitch_and_sign():
    yaws = torch.tensor([0.0, 90.0, -90.0, 45.0, 170.0, -30.0])
    pitches = torch.tensor([0.0, 0.0, 0.0, 30.0, -20.0, 60.0])
    views = views_from_cameras([str(i) for i in range(6)], orbit_viewmats(yaws, pitches, 1.5))
    np.testing.assert_allclose([v.yaw_deg for v in views], yaws.numpy(), atol=1e-3)
    np.testing.assert_allclose([v.pitch_deg for v in views], pitches.numpy(), atol=1e-3)
    # positive yaw = camera centre on +x (the subject's left); positive pitch = above the head
    eye = torch.tensor([[0.8, 0.0, 0.0], [0.0, 0.5, 0.9], [0.0, 0.0, -2.0]])
    views = views_from_cameras(["x", "up", "back"], look_at(eye, torch.zeros(3)))
    assert views[0].yaw_deg == pytest.approx(90.0, abs=1e-3)
    assert views[1].pitch_deg == pytest.approx(math.degrees(math.atan2(0.5, 0.9)), abs=1e-3)
    assert abs(views[2].yaw_deg) == pytest.approx(180.0, abs=1e-3)


def test_views_from_cameras_around_an_offset_head_centre():
    centre = (0.02, 0.1, -0.05)
    mats = orbit_viewmats(torch.tensor([60.0, -120.0]), torch.tensor([20.0, -10.0]), 1.2, target=centre)
    views = views_from_cameras(["a", "b"], mats, head_center=centre)
    assert views[0].yaw_deg == pytest.approx(60.0, abs=1e-3)
    assert views[0].pitch_deg == pytest.approx(20.0, abs=1e-3)
    assert views[1].yaw_deg == pytest.approx(-120.0, abs=1e-3)
    with pytest.raises(ValueError, match="view names"):
        views_from_cameras(["a"], mats)


def test_novel_pairing_excludes_the_input_and_spreads_targets():
    (pair,) = novel_view_pairs(DOME)
    assert pair.setting == "novel"
    assert (pair.input.yaw_deg, pair.input.pitch_deg) == (0.0, 0.0)
    names = [t.name for t in pair.targets]
    assert pair.input.name not in names and len(names) == len(DOME) - 1 == len(set(names))
    (few,) = novel_view_pairs(DOME, ProtocolConfig(novel_targets=6))
    assert len(few.targets) == 6 and pair.input.name not in [t.name for t in few.targets]
    # spread around the head: the back is covered and no two targets are neighbours on the 15 degree ring
    assert max(abs(t.yaw_deg) for t in few.targets) >= 150
    spacing = min(angle_between(a, b) for i, a in enumerate(few.targets) for b in few.targets[i + 1:])
    assert spacing > 45


def test_novel_pairing_needs_a_near_frontal_input():
    assert novel_view_pairs(ring(range(60, 181, 30))) == []
    (pair,) = novel_view_pairs(ring([-40, 10, 50]))
    assert pair.input.yaw_deg == 10.0
    with pytest.raises(ValueError, match="at least 2 views"):
        novel_view_pairs(ring([0]))


# A rig with known yaw / pitch (degrees) around the limits of every task: which view each task picks is
# written out by hand below from the definitions, not computed with the code under test.
RIG = [View(name, float(y), float(p)) for name, y, p in [
    ("front", 4, 3), ("front_low", -20, -8), ("high_front", 0, 35), ("r45", -45, 0), ("l45", 45, 0),
    ("l74", 74, 0), ("l80", 80, 0), ("l90_high", 90, 25), ("l104", 104, -19), ("l106", 106, 0),
    ("r75", -75, 5), ("r95", -95, 10), ("r105", -105, -20), ("r120", -120, 0),
    ("l149", 149, 0), ("l150", 150, 0), ("r170", -170, 15), ("back", 180, -20), ("l160_high", 160, 30),
    ("above", 10, 50), ("below", -5, -45),
]]


def names(views):
    return {v.name for v in views}


def test_each_task_picks_exactly_the_pairs_its_definition_names():
    pairs = {p.setting: p for task in ("novel", "extreme", "opposite_profile") for p in view_pairs(RIG, task)}
    assert set(pairs) == {"novel", "extreme", "extreme_back", "opposite_profile_left_to_right",
                          "opposite_profile_right_to_left", "opposite_profile_above_to_below",
                          "opposite_profile_below_to_above"}
    # novel: the view closest to frontal -> every other view
    assert pairs["novel"].input.name == "front" and names(pairs["novel"].targets) == names(RIG) - {"front"}
    # extreme: the same input; profiles 75 <= |yaw| <= 105 with |pitch| <= 20 (l74, l106: outside the yaw
    # range; l90_high: from above) and, separately, the back |yaw| >= 150 with |pitch| <= 20 (l149: not yet
    # the back; l160_high: from above)
    assert pairs["extreme"].input.name == pairs["extreme_back"].input.name == "front"
    assert names(pairs["extreme"].targets) == {"l80", "l104", "r75", "r95", "r105"}
    assert names(pairs["extreme_back"].targets) == {"l150", "r170", "back"}
    # opposite_profile: the most sideways profile of each side (60-90 |yaw|, |pitch| <= 30) -> the opposite
    # profile closest to its mirror image; the steepest most frontal view above -> the one below, and back
    lr, rl = pairs["opposite_profile_left_to_right"], pairs["opposite_profile_right_to_left"]
    assert (lr.input.name, names(lr.targets)) == ("l90_high", {"r75"})  # mirror (-90, 25): r75 is closest
    assert (rl.input.name, names(rl.targets)) == ("r75", {"l74"})  # mirror (75, 5)
    ab, ba = pairs["opposite_profile_above_to_below"], pairs["opposite_profile_below_to_above"]
    assert (ab.input.name, names(ab.targets)) == ("above", {"below"})
    # mirror of below (-5, -45) is (-5, 45): high_front (0, 35) is 10.7 degrees from it, above (10, 50) 11.6
    assert (ba.input.name, names(ba.targets)) == ("below", {"high_front"})
    assert {task_group(s) for s in pairs} == {"novel", "extreme", "extreme_back", "opposite_profile"}


def test_extreme_needs_a_frontal_input_and_has_configurable_limits():
    sideways = [v for v in RIG if abs(v.yaw_deg) > 30 or abs(v.pitch_deg) > 30]
    assert extreme_view_pairs(sideways) == []  # the closest to frontal, l45 / r45, is 45 degrees away
    (only,) = extreme_view_pairs([View("f", 25, 10), View("p", 90, 0), View("q", 40, 0)])
    assert only.setting == "extreme" and only.input.name == "f" and names(only.targets) == {"p"}  # no back
    wide = ProtocolConfig(extreme_profile_min_deg=70, extreme_max_pitch_deg=30, extreme_back_min_deg=145)
    pairs = {p.setting: p for p in extreme_view_pairs(RIG, wide)}
    assert names(pairs["extreme"].targets) == {"l74", "l80", "l90_high", "l104", "r75", "r95", "r105"}
    assert names(pairs["extreme_back"].targets) == {"l149", "l150", "r170", "back", "l160_high"}
    strict = ProtocolConfig(extreme_input_max_deg=4)  # front is 5 degrees from frontal
    assert extreme_view_pairs(RIG, strict) == []
    with pytest.raises(ValueError, match="extreme_profile_min_deg"):
        ProtocolConfig(extreme_profile_min_deg=110)
    with pytest.raises(ValueError, match="both a profile and the back"):
        ProtocolConfig(extreme_back_min_deg=100)
    with pytest.raises(ValueError, match="extreme_max_pitch_deg"):
        ProtocolConfig(extreme_max_pitch_deg=-1)


def test_opposite_profile_pairing_picks_opposite_profiles():
    pairs = opposite_profile_pairs(DOME)
    lr = [p for p in pairs if p.setting.endswith(("left_to_right", "right_to_left"))]
    assert {p.setting for p in lr} == {"opposite_profile_left_to_right", "opposite_profile_right_to_left"}
    for p in lr:
        assert 60 <= abs(p.input.yaw_deg) <= 90
        assert len(p.targets) == 1
        for t in p.targets:
            assert np.sign(t.yaw_deg) == -np.sign(p.input.yaw_deg)  # the yaw flips sign
            assert 60 <= abs(t.yaw_deg) <= 90
            assert t.yaw_deg == pytest.approx(-p.input.yaw_deg)  # the mirror image exists on this rig
            assert t.pitch_deg == pytest.approx(p.input.pitch_deg)
    left = next(p for p in lr if p.setting == "opposite_profile_left_to_right")
    assert left.input.yaw_deg == 90.0  # the most sideways profile (float32 cameras give 90 +- 1e-5 too)


def test_opposite_profile_pairing_above_below_and_all_targets():
    pairs = {p.setting: p for p in opposite_profile_pairs(DOME, ProtocolConfig(opposite_targets="all"))}
    above, below = pairs["opposite_profile_above_to_below"], pairs["opposite_profile_below_to_above"]
    assert above.input.pitch_deg >= 30 and all(t.pitch_deg <= -30 for t in above.targets)
    assert below.input.pitch_deg <= -30 and all(t.pitch_deg >= 30 for t in below.targets)
    assert above.targets[0].yaw_deg == above.input.yaw_deg == 0.0  # mirror in pitch first
    lr = pairs["opposite_profile_left_to_right"]
    assert len(lr.targets) == 3 and all(-90 <= t.yaw_deg <= -60 for t in lr.targets)  # -90, -75, -60
    # a rig without views above/below gives left/right pairs only
    flat = {p.setting for p in opposite_profile_pairs(ring(range(-180, 180, 30)))}
    assert flat == {"opposite_profile_left_to_right", "opposite_profile_right_to_left"}


def test_opposite_profile_pairing_on_a_front_only_rig_is_empty_unless_the_range_is_lowered():
    nersemble_like = ring(np.linspace(-46, 46, 8))
    assert opposite_profile_pairs(nersemble_like) == []
    assert extreme_view_pairs(nersemble_like) == []  # no view beyond 46 degrees: no profile, no back
    pairs = opposite_profile_pairs(nersemble_like, ProtocolConfig(profile_min_deg=40))
    assert len(pairs) == 2 and all(p.input.yaw_deg * p.targets[0].yaw_deg < 0 for p in pairs)


def test_view_pairs_dispatch_and_config_validation():
    assert view_pairs(DOME, "novel")[0].setting == "novel"
    assert [p.setting for p in view_pairs(DOME, "extreme")] == ["extreme", "extreme_back"]
    assert view_pairs(DOME, "opposite_profile")[0].setting.startswith("opposite_profile_")
    with pytest.raises(ValueError, match="opposite_profile"):
        view_pairs(DOME, "frontal")
    with pytest.raises(ValueError, match="unknown pair setting"):
        task_group("extreme_left_to_right")  # the old name of an opposite-profile pair
    with pytest.raises(ValueError, match="crop convention"):
        ProtocolConfig(crop="ffhq")
    with pytest.raises(ValueError, match="profile_min_deg"):
        ProtocolConfig(profile_min_deg=95)
    with pytest.raises(ValueError, match="opposite_targets"):
        ProtocolConfig(opposite_targets="some")
    described = describe_protocol()
    assert "panohead" in described["crop"] and set(described) >= {"novel", "extreme", "opposite_profile"}


def test_held_out_subject_lists():
    assert held_out_subjects("nersemble") == ("059", "070", "370", "373", "374")
    assert held_out_subjects("nersemble", prefixed=True)[0] == "nersemble_059"
    with pytest.raises(ValueError, match=f"{AVA256_HELD_OUT_COUNT} unseen Ava-256"):
        held_out_subjects("ava256")
    cfg = ProtocolConfig(ava256_subjects=("20210817--0900--NRE683",))
    assert held_out_subjects("ava256", cfg, prefixed=True) == ("ava_20210817--0900--NRE683",)
    with pytest.raises(ValueError, match="unknown dataset"):
        held_out_subjects("ffhq")


def test_panohead_crop_frames_the_head_like_the_input_camera():
    cam = input_camera(512)
    crop = target_crop(cam.Ks[0], cam.viewmats[0], 512, 512, 512)
    np.testing.assert_allclose(crop.box, (0, 0, 512, 512), atol=1e-3)  # the input camera is the reference
    torch.testing.assert_close(crop.K, cam.Ks[0], atol=1e-3, rtol=1e-5)
    # a wider capture camera, further away and aimed off the head: the crop follows the head centre
    far = orbit_viewmats(torch.tensor([130.0]), 10.0, 3.0, target=(0.05, -0.03, 0.0))[0]
    K = intrinsics(1000.0, width=800, height=600)
    crop = target_crop(K, far, 800, 600, 256)
    pix, depth = project_points(torch.zeros(1, 3), far[None], K[None])
    cx, cy = (crop.box[0] + crop.box[2]) / 2, (crop.box[1] + crop.box[3]) / 2
    assert (cx, cy) == pytest.approx(tuple(pix[0, 0].tolist()), abs=1e-3)
    side = crop.box[2] - crop.box[0]
    assert side == pytest.approx(0.395 * 1000.0 / float(depth[0, 0]), rel=2e-3)  # 1.65 x 0.24 m head
    # rendering with the returned K puts the head centre in the middle of the crop
    pix_crop, _ = project_points(torch.zeros(1, 3), far[None], crop.K[None])
    assert tuple(pix_crop[0, 0].tolist()) == pytest.approx((128.0, 128.0), abs=1e-2)


def test_full_crop_is_the_centred_square():
    K = intrinsics(1000.0, width=800, height=600)
    crop = target_crop(K, torch.eye(4), 800, 600, 300, ProtocolConfig(crop="full"))
    assert crop.box == pytest.approx((100.0, 0.0, 700.0, 600.0))
    assert float(crop.K[0, 0]) == pytest.approx(500.0) and float(crop.K[0, 2]) == pytest.approx(150.0)
    behind = torch.eye(4)
    behind[2, 3] = -1.0  # head centre at z = -1 in camera space
    with pytest.raises(ValueError, match="behind"):
        target_crop(K, behind, 800, 600, 300)
    assert math.isclose(ProtocolConfig().crop_scale, 1.65)
