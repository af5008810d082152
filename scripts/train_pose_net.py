"""Train ``src/perchead/assets/pose_net.safetensors``: the input camera's yaw and pitch from a matted photo.

Data: train-split synthetic heads of ``perchead synth``'s generator (seed 0; never a val or test subject),
alternately symmetric and asymmetric, each rendered by the standard head camera from ``--views`` random yaws
(full circle) and pitches (-20 to 30 degrees) at ``--render-size`` px and resized to the net's input, antialiased,
as a 512 px photo crop is at inference. Augmented on the fly: mirroring (yaw negated), foreground colour gains and
grey, and a small zoom/shift of the crop (real crops are not centred exactly). Validated on val-split heads at
fixed yaws; the test split's table (the subjects tests/test_fit.py checks) is printed once, at the end.

    python scripts/train_pose_net.py                  # ~45 min on 2 CPU cores; rewrites the asset
    python scripts/train_pose_net.py --evaluate-only  # the val / test tables of the shipped asset
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perchead.data.synth import SynthConfig, make_subject, subject_split
from perchead.geometry import HEAD_CAMERA_RADIUS, orbit_viewmats
from perchead.inference.pose import camera_K
from perchead.inference.pose_net import POSE_NET, PoseNet, PoseNetConfig, pose_input, pose_targets, yaw_error
from perchead.render import rasterize

KINDS = ("symmetric", "asymmetric")
EVAL_YAWS = (0.0, 30.0, -30.0, 45.0, -45.0, 60.0, -60.0, 75.0, -75.0, 90.0, -90.0, 135.0, 180.0)


def render_views(heads: str, index: int, yaws: np.ndarray, pitches: np.ndarray, render_size: int,
                 size: int) -> np.ndarray:
    """[V, 4, size, size] uint8 net inputs of subject ``index`` seen from the standard camera."""
    torch.set_num_threads(1)
    subject = make_subject(SynthConfig(heads=heads), index)
    vm = orbit_viewmats(yaws.tolist(), pitches.tolist(), HEAD_CAMERA_RADIUS)
    K = camera_K(render_size)[None].expand(len(vm), 3, 3)
    with torch.no_grad():
        out = rasterize(subject.gaussians, vm, K, render_size, render_size, backend="cpu")
    x = pose_input(out.rgb.permute(0, 3, 1, 2), out.alpha.permute(0, 3, 1, 2), size)
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _train_job(args: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    heads, index, views, render_size, size = args
    rng = np.random.default_rng([7, index])
    yaws = rng.uniform(-180.0, 180.0, views)
    pitches = rng.uniform(-20.0, 30.0, views)
    return render_views(heads, index, yaws, pitches, render_size, size), yaws, pitches


def make_train_data(path: Path, subjects: int, views: int, render_size: int, size: int, workers: int) -> dict:
    key = f"{subjects}-{views}-{render_size}-{size}"
    if path.is_file():
        data = dict(np.load(path))
        if str(data.get("key")) == key:
            print(f"{path}: {len(data['x'])} cached renders")
            return data
    cfg = SynthConfig(heads="symmetric")
    train = [i for i in range(5000) if subject_split(cfg, i) == "train"][:subjects]
    jobs = [(KINDS[n % 2], i, views, render_size, size) for n, i in enumerate(train)]
    xs, ys, ps = [], [], []
    t0 = time.time()
    # spawn: a forked child of a process that has run torch's and numba's thread pools can die.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for n, (x, y, p) in enumerate(pool.map(_train_job, jobs, chunksize=4)):
            xs.append(x), ys.append(y), ps.append(p)
            if (n + 1) % 40 == 0:
                print(f"  rendered {n + 1}/{len(jobs)} subjects, {time.time() - t0:.0f} s", flush=True)
    data = {"x": np.concatenate(xs), "yaw": np.concatenate(ys).astype(np.float32),
            "pitch": np.concatenate(ps).astype(np.float32), "key": np.array(key)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def make_eval_data(split: str, subjects: int, size: int, render_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Fixed yaws at pitch 0 from the standard camera, at 512 px as the tests' photos: ([N, 4, S, S], [N])."""
    cfg = SynthConfig(heads="symmetric")
    ids = [i for i in range(1000) if subject_split(cfg, i) == split][:subjects]
    yaws = np.array(EVAL_YAWS)
    xs = [render_views("symmetric", i, yaws, np.zeros_like(yaws), render_size, size) for i in ids]
    return np.concatenate(xs), np.tile(yaws, len(ids)).astype(np.float32)


def augment(x: torch.Tensor, yaw: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror, foreground colour gains / grey, zoom and shift of [B, 4, S, S] inputs in [0, 1]."""
    b = len(x)
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    yaw = torch.where(flip, -yaw, yaw)
    rgb, a = x[:, :3], x[:, 3:]
    fg = rgb - (1.0 - a)  # the premultiplied colour (the image is on white)
    gain = 0.6 + 0.8 * torch.rand(b, 3, 1, 1, generator=gen)
    gain = gain * (0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=gen))
    fg = fg * gain
    grey = (torch.rand(b, generator=gen) < 0.2)[:, None, None, None]
    fg = torch.where(grey, fg.mean(1, keepdim=True).expand_as(fg), fg)
    rgb = (fg + (1.0 - a)).clamp(0, 1)
    # Zoom 0.9-1.1 and shift up to 5% of the crop: warp the premultiplied colour and alpha (zeros outside).
    scale = 0.9 + 0.2 * torch.rand(b, generator=gen)
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 0.1
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(torch.cat([rgb - 1.0, a], 1), grid, align_corners=False)
    return torch.cat([warped[:, :3] + 1.0, warped[:, 3:]], 1), yaw


def evaluate(net: PoseNet, x: np.ndarray, yaw: np.ndarray) -> dict[float, tuple[float, float]]:
    """Per true yaw: (mean, max) absolute yaw error in degrees."""
    pred, _ = net.predict(torch.from_numpy(x).float() / 255.0)
    err = yaw_error(pred, torch.from_numpy(yaw)).numpy()
    return {float(y): (float(err[yaw == y].mean()), float(err[yaw == y].max())) for y in EVAL_YAWS}


def print_table(name: str, res: dict[float, tuple[float, float]]) -> None:
    print(f"{name}: yaw error (deg) mean / max per true yaw")
    print("  " + "  ".join(f"{y:+5.0f}: {m:4.1f}/{mx:4.1f}" for y, (m, mx) in res.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=480)
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--render-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("outputs/pose_net/train.npz"))
    ap.add_argument("--out", type=Path, default=POSE_NET)
    ap.add_argument("--evaluate-only", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.evaluate_only:
        net = PoseNet.load(args.out)
    else:
        net = PoseNet(PoseNetConfig())
    size = net.config.size
    val_x, val_y = make_eval_data("val", 10, size)
    if not args.evaluate_only:
        data = make_train_data(args.data, args.subjects, args.views, args.render_size, size, args.workers)
        torch.set_num_threads(args.threads)
        x_all = torch.from_numpy(data["x"])
        yaw_all, pitch_all = torch.from_numpy(data["yaw"]), torch.from_numpy(data["pitch"])
        steps_per_epoch = math.ceil(len(x_all) / args.batch)
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch,
                                                    pct_start=0.1)
        gen = torch.Generator().manual_seed(0)
        t0 = time.time()
        for epoch in range(args.epochs):
            net.train()
            order = torch.randperm(len(x_all), generator=gen)
            total = 0.0
            for s in range(steps_per_epoch):
                idx = order[s * args.batch:(s + 1) * args.batch]
                x, yaw = augment(x_all[idx].float() / 255.0, yaw_all[idx], gen)
                loss = F.smooth_l1_loss(net(x), pose_targets(yaw, pitch_all[idx]), beta=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
            net.eval()
            res = evaluate(net, val_x, val_y)
            worst = max(mx for y, (_, mx) in res.items() if abs(y) <= 60)
            print(f"epoch {epoch + 1}/{args.epochs}  loss {total / steps_per_epoch:.4f}  val max err within "
                  f"+-60: {worst:.1f} deg  {time.time() - t0:.0f} s", flush=True)
        net.save(args.out, {"train": f"{len(x_all)} renders of {args.subjects} train-split heads, "
                                     f"{args.epochs} epochs"})
        print(f"wrote {args.out}")
    print_table("val (10 subjects)", evaluate(net, val_x, val_y))
    test_x, test_y = make_eval_data("test", 10, size)
    print_table("test (10 subjects)", evaluate(net, test_x, test_y))


if __name__ == "__main__":
    main()
