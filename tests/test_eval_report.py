"""perchead eval: checkpoints + the mean-colour template -> CSV, JSON, markdown beside the paper, figures."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from perchead.cli import main
from perchead.eval.harness import EvalConfig, crop_view, load_sample
from perchead.eval.protocol import ProtocolConfig, target_crop
from perchead.eval.report import (
    PAPER_RESULTS,
    aggregate,
    bucket_edges,
    bucket_label,
    bucket_table,
    checkpoint_name,
    paired_table,
    parse_checkpoints,
    rank_subjects,
    results_table,
    run_eval,
    yaw_buckets,
)
from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras, project_points
from perchead.model import PercHead
from perchead.train.testing import tiny_model_config, write_toy_dataset

SIZE = 42
VIEWS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = write_toy_dataset(root / "data", subjects=3, views=VIEWS, size=SIZE, val=0)
    torch.manual_seed(0)
    template = PercHead(tiny_model_config(image_size=SIZE)).save_pretrained(root / "run_a" / "checkpoints" / "step_1")
    lifting = PercHead(tiny_model_config(image_size=SIZE, decoder="lifting")).save_pretrained(root / "lift")
    return data, template, lifting, root


def test_eval_command_writes_every_output(setup, tmp_path):
    data, template, lifting, _ = setup
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(template), "--checkpoint", f"lift={lifting}", "--data", str(data),
                 "--out", str(out), "--split", "train", "--metrics", "psnr", "ssim", "--figure-subjects", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    methods = ["run_a", "lift", "template_mean_colour"]  # untrained SHP-CNN: no sharpened columns (--shp auto)
    assert list(summary["info"]["methods"]) == methods
    assert summary["info"]["checkpoints"] == {"run_a": str(template), "lift": str(lifting)}
    groups = {(s["method"], s["group"]): s for s in summary["summary"]}
    for method in methods:
        for group in ("novel", "extreme", "extreme_back", "opposite_profile", "opposite_profile_left_to_right",
                      "opposite_profile_right_to_left"):
            s = groups[(method, group)]
            assert math.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1 and s["subjects"] == 3
    # yaw 0, 45, ..., 315: novel 7 targets; extreme the profiles +-90 and the back 180; opposite 2 pairs
    assert groups[("lift", "novel")]["images"] == 3 * (VIEWS - 1)
    assert groups[("lift", "extreme")]["images"] == 3 * 2 and groups[("lift", "extreme_back")]["images"] == 3
    assert groups[("lift", "opposite_profile")]["images"] == 3 * 2
    with open(out / "rows.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(methods) * 3 * (VIEWS - 1 + 2 + 1 + 2)
    assert {r["method"] for r in rows} == set(methods) and all(float(r["psnr"]) > 0 for r in rows)
    # the extreme pairs share the novel input: each of their targets scores what it scores as a novel target
    novel = {(r["subject"], r["target"], r["method"]): float(r["psnr"]) for r in rows if r["setting"] == "novel"}
    extreme = [r for r in rows if r["group"] in ("extreme", "extreme_back")]
    assert all(float(r["psnr"]) == pytest.approx(novel[r["subject"], r["target"], r["method"]], abs=1e-6)
               for r in extreme)
    with open(out / "subjects.csv") as fh:
        assert len([r for r in csv.DictReader(fh) if r["group"] == "novel"]) == 3 * len(methods)
    md = (out / "results.md").read_text()
    assert "not comparable" in md and f"{PAPER_RESULTS['novel']['psnr']:.2f}" in md
    assert "`lift`" in md and "perchead eval --checkpoint" in md
    for png in ("metric_vs_yaw.png", "best_worst.png", "yaw_buckets.png"):
        assert (out / png).stat().st_size > 1000 and png in md
    assert "## By input and target yaw" in md and "| `lift` | 60-90 |" not in md  # no input at |yaw| 60-90
    with open(out / "yaw_buckets.csv") as fh:
        cells = [r for r in csv.DictReader(fh) if r["method"] == "lift"]
    # every (input, target) view pair once: novel's 7 targets (the extreme ones among them) + 2 opposite pairs
    assert sum(int(c["images"]) for c in cells) == 3 * (VIEWS - 1 + 2)
    by_cell = {(c["input_abs_yaw"], c["target_abs_yaw"]): int(c["images"]) for c in cells}
    assert by_cell == {("0-30", "30-60"): 6, ("0-30", "90-120"): 6, ("0-30", "120-150"): 6,
                       ("0-30", "150-180"): 3, ("90-120", "90-120"): 6}
    with open(out / "metric_vs_yaw.csv") as fh:
        bins = [r for r in csv.DictReader(fh) if r["method"] == "lift" and r["group"] == "novel"]
    assert sum(int(b["images"]) for b in bins) == 3 * (VIEWS - 1)  # every novel target in one bin
    centres = [float(b["target_yaw_bin_deg"]) for b in bins]
    assert all(c % 30 == 0 and -180 < c <= 180 for c in centres) and 180.0 in centres  # the back view


def test_the_rows_are_the_renders_scores(setup, tmp_path):
    # The mean-colour template's PSNR in the CSV equals a PSNR computed here from a render made by hand.
    from perchead.eval.harness import mean_colour_gaussians
    from perchead.eval.metrics import psnr
    from perchead.render import rasterize
    from perchead.train.data import collate

    data, template, _, _ = setup
    result = run_eval({"a": str(template)}, data, tmp_path / "e", EvalConfig(split="train", max_subjects=1),
                      metrics=("psnr",), figure_subjects=0)
    from perchead.data.format import read_dataset

    subject = [s for s in read_dataset(data).split("train") if s.kind == "studio"][0]
    sample = load_sample(subject, list(range(VIEWS)), ProtocolConfig(), {})  # view 0 (yaw 0) is the input
    b = collate([sample], SIZE, SIZE)
    model = PercHead.from_pretrained(template)
    g = mean_colour_gaussians(model.template, b.input_image, b.input_mask)
    pred = rasterize(g, b.viewmats[:, 1:], b.Ks[:, 1:], SIZE, SIZE).rgb[0].permute(0, 3, 1, 2).clamp(0, 1)
    expected = psnr(pred, b.targets[0, 1:])
    with open(tmp_path / "e" / "rows.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "template_mean_colour" and r["setting"] == "novel"]
    by_target = {r["target"]: float(r["psnr"]) for r in rows}
    assert sorted(by_target) == [v.name for v in subject.views[1:]]
    got = torch.tensor([by_target[v.name] for v in subject.views[1:]], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-4)
    assert result["info"]["subjects"] == [subject.id]


def test_fitted_method_renders_the_fit_not_the_prediction(setup):
    from perchead.eval.harness import FittedMethod, ModelMethod
    from perchead.geometry import HEAD_CAMERA_RADIUS, orbit_viewmats
    from perchead.inference.fit import FitConfig
    from perchead.inference.pose import camera_K

    model = PercHead.from_pretrained(setup[1])
    torch.manual_seed(0)
    image, mask = torch.rand(1, 3, SIZE, SIZE), torch.ones(1, 1, SIZE, SIZE)
    vm = orbit_viewmats([0.0, 90.0], [0.0, 0.0], HEAD_CAMERA_RADIUS)[None]
    K = camera_K(SIZE).expand(1, 2, 3, 3)
    method = FittedMethod("a", model, FitConfig(steps=3, num_gaussians=0, size=32))
    fitted = method.render(image, mask, vm, K, SIZE, "cpu")["a_fitted"]
    plain = ModelMethod("a", model, sharpened=False).render(image, mask, vm, K, SIZE, "cpu")["a"]
    assert fitted.shape == plain.shape == (1, 2, 3, SIZE, SIZE) and 0 <= float(fitted.min())
    assert float((fitted - plain).abs().max()) > 1e-3  # the fit changed the head
    assert method.names == ("a_fitted",) and "3 steps" in method.description


def test_fit_settings_of_the_eval_are_checked():
    from perchead.eval.harness import EvalConfig

    with pytest.raises(ValueError, match="fit_size"):
        EvalConfig(fit_size=8)
    with pytest.raises(ValueError, match="fit_steps"):
        EvalConfig(fit_steps=-1)
    with pytest.raises(ValueError, match="fit_tune_steps"):
        EvalConfig(fit_tune_steps=-1)


@pytest.mark.slow
def test_fitted_method_scores_the_fit_of_each_template_checkpoint(setup, tmp_path):
    """``--fit-steps N`` adds NAME_fitted (perchead reconstruct's fit of the prediction to the input view) on
    the same pairs. Nothing is asserted about whether it scores better (random tiny network; docs/results.md has
    the measured rows of the demo)."""
    data, template, _, _ = setup
    out = tmp_path / "fit"
    code = main(["eval", "--checkpoint", str(template), "--data", str(data), "--out", str(out), "--split", "train",
                 "--metrics", "psnr", "--figure-subjects", "0", "--max-subjects", "1", "--fit-steps", "2",
                 "--fit-size", "48", "--fit-tune-steps", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["info"]["methods"]) == ["run_a", "run_a_fitted", "template_mean_colour"]
    assert "fitted to the input view: the network tuned for 1 steps, then 2 steps" in (
        summary["info"]["methods"]["run_a_fitted"])
    assert "48 px" in summary["info"]["methods"]["run_a_fitted"]
    groups = {(s["method"], s["group"]): s for s in summary["summary"]}
    for group in ("novel", "extreme", "extreme_back", "opposite_profile"):
        fitted, plain = groups[("run_a_fitted", group)], groups[("run_a", group)]
        assert fitted["images"] == plain["images"] and math.isfinite(fitted["psnr"])
        assert fitted["psnr"] != plain["psnr"]  # the fit changed the head
    assert "--fit-steps 2" in summary["info"]["command"] and "--fit-tune-steps 1" in summary["info"]["command"]


def test_unavailable_metrics_are_empty_columns_with_the_reason(setup, tmp_path):
    data, template, _, _ = setup
    from perchead.eval.metrics import MetricConfig

    # DreamSim without its weights (an empty cache folder) is unavailable whether or not the package exists.
    cfg = MetricConfig(dreamsim_cache_dir=str(tmp_path / "no_weights"))
    result = run_eval({"a": str(template)}, data, tmp_path / "e", EvalConfig(split="train", max_subjects=1),
                      metrics=("psnr", "dreamsim"), metric_config=cfg, figure_subjects=0)
    assert "dreamsim" in result["info"]["unavailable"]
    assert all(s["dreamsim"] is None for s in result["summary"])  # NaN -> null in the JSON, not a number
    with open(tmp_path / "e" / "rows.csv") as fh:
        assert all(r["dreamsim"] == "" for r in csv.DictReader(fh))
    md = (tmp_path / "e" / "results.md").read_text()
    assert "`dreamsim` not measured" in md and "DreamSim" not in md.split("## Results")[1].split("\n")[2]


def test_aggregate_means_and_subject_sd():
    rows = [{"subject": s, "setting": st, "group": "novel" if st == "novel" else "opposite_profile", "method": "m",
             "psnr": v, "ssim": 0.5} for s, st, v in
            [("a", "novel", 10.0), ("a", "novel", 12.0), ("b", "novel", 20.0), ("b", "novel", float("nan")),
             ("a", "opposite_profile_left_to_right", 8.0), ("b", "opposite_profile_right_to_left", 9.0)]]
    per_subject, summary = aggregate(rows, ["psnr", "ssim"], ["m"])
    s = {x["group"]: x for x in summary}
    assert s["novel"]["psnr"] == pytest.approx(14.0) and s["novel"]["psnr_n"] == 3 and s["novel"]["images"] == 4
    assert s["novel"]["psnr_sd"] == pytest.approx(math.sqrt(((11 - 15.5) ** 2 + (20 - 15.5) ** 2) / 1))
    assert s["opposite_profile"]["psnr"] == pytest.approx(8.5) and s["opposite_profile_left_to_right"]["psnr"] == 8.0
    assert "extreme" not in s  # no extreme rows: no extreme group
    assert {(x["subject"], x["group"]): x["psnr"] for x in per_subject}[("a", "novel")] == 11.0
    table = results_table(summary, ["psnr", "ssim"], ["m"])
    assert "| novel | `m` | 4 | 2 | 14.00 ± 6.36 | 0.500 ± 0.000 |" in table
    other = [dict(x, method="o", psnr=x["psnr"] + (1.0 if x["subject"] == "a" else -3.0)) for x in per_subject]
    paired = paired_table(per_subject + other, ["m", "o"])
    assert "| `o` | -1.00 | 1/2 subjects | -1.00 | 1/2 subjects |" in paired
    best, worst = rank_subjects(per_subject, "m", 1)
    assert best == ["b"] and worst == ["a"]


def test_checkpoint_names():
    assert checkpoint_name("runs/lift/checkpoints/step_00000800") == "lift"
    assert checkpoint_name("src/perchead/assets/demo/") == "demo"
    assert parse_checkpoints(["a=x/y", "runs/b/checkpoints/step_1"]) == {"a": "x/y", "b": "runs/b/checkpoints/step_1"}
    assert parse_checkpoints(["x/m1", "y/m2"], ["p", "q"]) == {"p": "x/m1", "q": "y/m2"}
    with pytest.raises(ValueError, match="two methods"):
        parse_checkpoints(["x/m", "y/m"])
    with pytest.raises(ValueError, match="one name per"):
        parse_checkpoints(["x/m", "y/m"], ["p"])


def test_crop_view_pads_with_white_and_moves_the_intrinsics():
    # A camera farther away and off-centre: the panohead crop (the head at the standard framing) lies partly
    # outside the image; the crop is padded white and the head centre projects to its middle.
    size = 64
    cams = Cameras.orbit([30.0], 10.0, HEAD_CAMERA_RADIUS * 0.8, HEAD_CAMERA_FOV_DEG, size)
    K = cams.Ks[0].clone()
    K[0, 2] += 20.0
    image = torch.rand(3, size, size)
    mask = torch.ones(1, size, size)
    out, out_mask, K2 = crop_view(image, mask, K, cams.viewmats[0], ProtocolConfig())
    box = target_crop(K, cams.viewmats[0], size, size, size).box
    side = round(box[2] - box[0])
    assert out.shape == (3, side, side) and side > size  # closer camera: the head crop is larger than the image
    x0, y0 = round(box[0]), round(box[1])
    assert x0 > 0 and y0 < 0 and x0 + side > size  # cut on the left, padded above and on the right
    assert torch.equal(out[:, 10 - y0, 20 - x0], image[:, 10, 20])  # a pixel moves with the crop
    assert bool((out_mask == 0).any()) and bool((out[:, out_mask[0] == 0] == 1).all())
    uv, _ = project_points(torch.zeros(1, 3), cams.viewmats, K2[None])
    assert torch.allclose(uv[0, 0], torch.full((2,), side / 2), atol=0.6)
    # the standard camera's own crop is the whole image: nothing changes
    std = Cameras.orbit([0.0], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, size)
    same = crop_view(image, mask, std.Ks[0], std.viewmats[0], ProtocolConfig())
    assert same[0] is image and torch.equal(same[2], std.Ks[0])


def test_yaw_buckets_count_each_view_pair_once_and_tabulate():
    def row(subject, setting, group, inp, iyaw, target, tyaw, psnr):
        return {"subject": subject, "setting": setting, "group": group, "input": inp, "input_yaw_deg": iyaw,
                "target": target, "target_yaw_deg": tyaw, "method": "m", "psnr": psnr, "ssim": 0.5}

    rows = [row("a", "novel", "novel", "f", 3.0, "p", 90.0, 10.0),
            row("a", "novel", "novel", "f", 3.0, "b", -180.0, 12.0),
            row("a", "extreme", "extreme", "f", 3.0, "p", 90.0, 10.0),  # the same view pair again: counted once
            row("b", "novel", "novel", "f", -29.99, "p", -119.99, 14.0),
            row("a", "opposite_profile_left_to_right", "opposite_profile", "p", 90.0, "q", -60.0, 16.0)]
    cells = {(c["input_abs_yaw"], c["target_abs_yaw"]): c for c in yaw_buckets(rows, ["m"], ["psnr"])}
    assert set(cells) == {("0-30", "90-120"), ("0-30", "150-180"), ("90-120", "60-90")}
    assert cells["0-30", "90-120"]["images"] == 2 and cells["0-30", "90-120"]["psnr"] == pytest.approx(12.0)
    assert cells["0-30", "150-180"]["psnr"] == 12.0 and cells["90-120", "60-90"]["subjects"] == 1
    table = bucket_table(list(cells.values()), ["m"], "psnr")
    assert "| `m` | 0-30 |  |  |  | 12.00 (2) |  | 12.00 (1) |" in table
    assert "| `m` | 90-120 |  |  | 16.00 (1) |  |  |  |" in table and "| `m` | 30-60 |" not in table
    assert [bucket_label(e) for e in bucket_edges(45)] == ["0-45", "45-90", "90-135", "135-180"]
    assert bucket_edges(100) == [(0.0, 100.0), (100.0, 180.0)]
    with pytest.raises(ValueError, match="bucket_deg"):
        bucket_edges(0)


def test_reads_input_option_writes_its_tables_and_swatches(setup, tmp_path):
    data, template, lifting, _ = setup
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(template), "--checkpoint", f"lift={lifting}", "--data", str(data),
                 "--out", str(out), "--split", "train", "--metrics", "psnr", "--figure-subjects", "0",
                 "--reads-input"]) == 0
    found = json.loads((out / "reads_input.json").read_text())
    methods = {r["method"] for r in found["yaw_summary"]}
    assert {"run_a", "lift", "template_mean_colour", "silhouette_mean_colour"} <= methods
    md = (out / "reads_input.md").read_text()
    assert "| 150-180 | lift |" in md and "| 150-180 | run_a |" in md
    # The toy heads have no segmentation maps: no colour rows, so no swatches (a synthetic dataset has both).
    assert not found["colour_rows"] and not (out / "reads_input.png").exists()
    assert "--reads-input" in json.loads((out / "summary.json").read_text())["info"]["command"]


def test_reads_input_swatches_show_each_subjects_colours(tmp_path):
    from perchead.data.synth import SynthConfig, generate
    from perchead.eval.reads_input import measure, swatch_figure

    data = tmp_path / "synth"
    generate(SynthConfig(subjects=2, views=8, size=48, surface_resolution=32, kind="studio"), data, progress=False)
    torch.manual_seed(0)
    res = measure({"net": PercHead(tiny_model_config(image_size=48))}, data, views="colour")
    back = [r for r in res.colour_rows if r["view"] == "back" and r["cls"] == "hair"]
    assert {r["method"] for r in back} == {"net", "template_mean_colour", "silhouette_mean_colour"}
    assert len({r["subject"] for r in back}) == 2
    assert swatch_figure(res, tmp_path / "s.png").stat().st_size > 1000
