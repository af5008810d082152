"""The training loop of all three stages.

One optimizer step: input view -> network -> Gaussians -> render every target camera -> (SHP-CNN in the
sharpen stage) -> loss against the target images, masked over padding views -> backward -> clip -> AdamW.

Stages (docs/design.md section 2):

* ``reconstruct`` -- the whole network except the frozen DINOv2 branch trains with the perceptual loss on
  the raw renders; SHP-CNN is neither applied nor trained.
* ``sharpen`` -- starts from a reconstruction checkpoint; only SHP-CNN trains, the 3D part runs without
  gradients; loss = DINOv2 layer-8 CLS ("sharpen").
* ``edit`` -- the editing encoder of issue 8 drives the same decoder; a hook into ``perchead.edit``.

Robustness: a step whose loss or gradient is NaN/inf on any process is skipped on all of them (no update)
and counted; ``optim.max_bad_steps`` in a row stop the run with an error, without writing a checkpoint, so
the last good one stays the newest. Every step is logged to ``<out>/steps.jsonl``; on resume the log is cut
back to the checkpoint's step, so after any number of kills it holds each step exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perchead.geometry import HEAD_CAMERA_FOV_DEG, HEAD_CAMERA_RADIUS, Cameras, Gaussians
from perchead.io.atomic import atomic_write_text
from perchead.losses import ImageLoss, build_loss
from perchead.model import PercHead
from perchead.model.lifting import batch_input_camera
from perchead.render import rasterize

from . import checkpoint as ckpt
from . import distributed as D
from .config import MapLossConfig, TrainConfig
from .data import PositionDataset, collate

STEP_LOG = "steps.jsonl"
CONFIG_FILE = "train_config.json"


# -- the differentiable part of a step (what DDP wraps) -----------------------------------------------------
class TrainStep(nn.Module):
    """Batch -> (scalar loss, per-view loss [B, V], predictions [B, V, 3, R, R]).

    Everything that needs gradients happens inside ``forward`` so DistributedDataParallel sees it: DDP only
    synchronises gradients of work done through its own forward call.
    """

    def __init__(self, model: PercHead, stage: str, loss: ImageLoss, backend: str, bf16: bool,
                 generator: nn.Module | None = None, map_loss: MapLossConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.stage = stage
        self.loss = loss
        self.backend = backend
        self.bf16 = bf16
        self.map_loss = map_loss if map_loss is not None and map_loss.active else None
        # The module image -> Gaussians: the PercHead itself, or the editing network of the edit stage.
        self.generator = generator if generator is not None else model

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.bf16 and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def gaussians(self, image: Tensor, mask: Tensor, segmentation: Tensor | None = None,
                  camera: tuple[Tensor, Tensor] | None = None) -> Gaussians:
        with self.autocast(image.device):
            # The editing network (issue 8) also reads the input's segmentation map; the lifting decoder
            # (perchead.model.lifting) the input camera.
            if self.stage == "edit":
                g = self.generator(image, mask, segmentation)
            else:
                g = self.generator(image, mask, camera=camera)
        # The rasterizers work in float32 whatever autocast produced.
        return g.to(torch.float32)

    def render(self, g: Gaussians, viewmats: Tensor, Ks: Tensor, size: int) -> Tensor:
        """[B, V, 3, size, size] renders on white, with SHP-CNN applied in the sharpen stage."""
        rgb = rasterize(g, viewmats, Ks, size, size, backend=self.backend).rgb  # [B, V, R, R, 3]
        rgb = rgb.permute(0, 1, 4, 2, 3)
        if self.stage == "sharpen":
            b, v = rgb.shape[:2]
            rgb = self.model.sharpen(rgb.flatten(0, 1)).unflatten(0, (b, v))
        return rgb

    def predict(self, image: Tensor, mask: Tensor, viewmats: Tensor, Ks: Tensor, size: int,
                segmentation: Tensor | None = None, camera: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.stage == "sharpen":
            # The 3D part is frozen: no graph through the network and the rasterizer, only through SHP-CNN.
            with torch.no_grad():
                g = self.gaussians(image, mask, camera=camera)
                raw = rasterize(g, viewmats, Ks, size, size, backend=self.backend).rgb.permute(0, 1, 4, 2, 3)
            b, v = raw.shape[:2]
            return self.model.sharpen(raw.flatten(0, 1)).unflatten(0, (b, v))
        return self.render(self.gaussians(image, mask, segmentation, camera), viewmats, Ks, size)

    def map_terms(self, g: Gaussians, input_segmentation: Tensor, viewmats: Tensor, Ks: Tensor,
                  target_masks: Tensor, target_segmentation: Tensor) -> Tensor:
        """[B, V] the edit stage's map loss (:class:`~perchead.train.config.MapLossConfig`): the Gaussians
        labelled from the input map (view 0's camera), their labels and alpha rendered in every target view
        against its exact map and mask."""
        from perchead.data.format import SEG
        from perchead.edit.fidelity import gaussian_labels, one_hot
        from perchead.render import render_features

        cfg, size = self.map_loss, target_segmentation.shape[-1]
        scale = input_segmentation.shape[-1] / size
        out = []
        for b in range(len(viewmats)):
            gb = g[b]
            K0 = Ks[b, 0].clone()
            K0[:2] *= scale  # view 0's camera at the input map's size
            with torch.no_grad():
                labels = gaussian_labels(gb.detach(), input_segmentation[b], viewmats[b, 0], K0, self.backend)
            feats, alpha = render_features(gb, labels, viewmats[b], Ks[b], size, size, backend=self.backend)
            seg = target_segmentation[b]
            target = one_hot(seg) * (seg != SEG["background"])[..., None]  # the background is never drawn
            per_view = cfg.label_weight * (feats - target).abs().sum(-1).mean((1, 2))
            per_view = per_view + cfg.alpha_weight * (alpha[..., 0] - target_masks[b, :, 0]).abs().mean((1, 2))
            out.append(per_view)
        return torch.stack(out)

    def forward(self, input_image: Tensor, input_mask: Tensor, viewmats: Tensor, Ks: Tensor, targets: Tensor,
                valid: Tensor, input_segmentation: Tensor | None = None, target_masks: Tensor | None = None,
                target_segmentation: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        b, v = valid.shape
        # View 0 is the input view (data.supervise_input_view, required for a lifting model).
        camera = batch_input_camera(self.model.config, viewmats, Ks, targets.shape[-1])
        if self.stage == "sharpen":
            pred = self.predict(input_image, input_mask, viewmats, Ks, targets.shape[-1], camera=camera)
        else:
            g = self.gaussians(input_image, input_mask, input_segmentation, camera)
            values = list(g.tensors().values())
            if not all(bool(torch.isfinite(t).all()) for t in values):
                # Diverged network: never hand NaN/inf Gaussians to a rasterizer. A NaN loss tied to the
                # network's outputs still runs backward (keeping DDP's collectives in step) and gets skipped.
                nan = sum(t.sum() for t in values) * float("nan")
                return nan, torch.full((b, v), float("nan"), device=nan.device), targets.detach()
            pred = self.render(g, viewmats, Ks, targets.shape[-1])
        per_view = self.loss.per_sample(pred.flatten(0, 1), targets.flatten(0, 1)).view(b, v)
        if self.map_loss is not None and self.stage == "edit":
            if input_segmentation is None or target_masks is None or target_segmentation is None:
                raise ValueError("map_loss needs every sample's segmentation maps (a dataset with maps of "
                                 "every view, e.g. from `perchead synth`)")
            per_view = per_view + self.map_terms(g, input_segmentation, viewmats, Ks, target_masks,
                                                 target_segmentation)
        weights = valid.to(per_view.dtype)
        loss = (per_view * weights).sum() / weights.sum().clamp_min(1.0)
        return loss, per_view.detach(), pred.detach()


# -- helpers ------------------------------------------------------------------------------------------------
def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float,
                 lr_scales: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only (decaying biases, norm gains and per-channel vectors just
    fights the loss). ``lr_scales`` {name prefix: factor} gives the parameters under a prefix their own
    learning rate (``lr_scale`` x the optimizer's lr; read by :func:`scale_group_lrs`)."""
    scales = {k: v for k, v in (lr_scales or {}).items() if v != 1.0}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in params:
        scale = next((v for k, v in scales.items() if name.startswith(k)), 1.0)
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    out = []
    for decay in (True, False):  # the two groups of old runs first, in their old order (optimizer states)
        for (scale, is_matrix), ps in groups.items():
            if is_matrix == decay:
                out.append({"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale})
    return out


def scale_group_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Apply each group's ``lr_scale`` to its learning rate (before the scheduler records initial_lr)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)


def truncate_step_log(path: Path, keep_through: int) -> int:
    """Keep the log lines of steps <= ``keep_through`` (drops steps a killed run did after its last
    checkpoint, which are about to be redone, and any half-written last line). Returns lines kept."""
    if not path.is_file():
        return 0
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= keep_through:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(kept)


def read_step_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _edit_generator(model: PercHead, cfg: TrainConfig) -> nn.Module:
    """The edit stage's network: net(image [B,3,S,S], mask [B,1,S,S], segmentation [B,S,S] class ids)
    -> Gaussians [B], from the editing package (segmentation map + CLIP style -> the same decoder)."""
    from perchead.edit.training import build_edit_network

    return build_edit_network(model, cfg)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss or gradient."""


@dataclass
class TrainResult:
    step: int
    skipped_steps: int
    last_loss: float
    checkpoint: Path | None
    stopped_by: int | None = None
    """the signal number (SIGINT / SIGTERM) that ended the run early, after saving a checkpoint"""


class StopRequest:
    """SIGINT / SIGTERM handlers that ask the loop to stop after the current step and save a checkpoint
    (schedulers and Ctrl-C send these); a second SIGINT interrupts at once. Only installable from the main
    thread; elsewhere (notebooks running the trainer in a thread) it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *_: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- the trainer ----------------------------------------------------------------------------------------------
class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig` and runs it (every process of a torchrun
    job runs one). ``model`` / ``loss`` can be handed in (tests, notebooks) instead of being built."""

    def __init__(self, cfg: TrainConfig, *, model: PercHead | None = None, loss: ImageLoss | None = None,
                 info: D.DistInfo | None = None) -> None:
        self.cfg = cfg
        self.info = info or D.env_info()
        self.device = D.resolve_device(cfg.device, self.info)
        D.init(self.info, self.device)
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self._given_model, self._given_loss = model, loss
        self._tb = None
        self._note_printed: set[str] = set()

    # -- messages (rank 0 only) -------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        if self.info.is_main and text not in self._note_printed:
            self._note_printed.add(text)
            print(f"perchead train: {text}", flush=True)

    # -- setup ----------------------------------------------------------------------------------------------
    def _resume_checkpoint(self) -> ckpt.LoadedCheckpoint | None:
        if self.cfg.resume is None:
            existing = ckpt.list_checkpoints(self.ckpt_dir)
            if existing:
                # Never overwrite a run by accident: its checkpoints and step log would be replaced.
                raise ValueError(f"{self.out} already holds checkpoints of a run (newest: {existing[-1].name}); "
                                 "continue it with --resume auto, or pick another --out")
            return None
        path = ckpt.resolve_resume(self.cfg.resume, self.out)
        if path is None:
            self.note(f"--resume auto: no checkpoint in {self.ckpt_dir} yet, starting from step 0")
            return None
        loaded = ckpt.load_train_state(path)
        if loaded.state["stage"] != self.cfg.stage:
            raise ValueError(f"checkpoint {path} is from stage '{loaded.state['stage']}' but this run is stage "
                             f"'{self.cfg.stage}'; to start a new stage from it use --init-from {path}")
        return loaded

    def _build_model(self, resume: ckpt.LoadedCheckpoint | None) -> PercHead:
        cfg = self.cfg
        if self._given_model is not None:
            model = self._given_model
            if resume is not None and cfg.stage == "edit":
                from perchead.edit.training import load_stage_weights  # also restores the editing encoder

                load_stage_weights(model, resume.weights, cfg)
            elif resume is not None:
                model.load_weights(resume.weights)
            return model
        source = resume.path if resume is not None else cfg.init_from
        if source is None:
            if cfg.stage != "reconstruct":
                raise ValueError(f"stage '{cfg.stage}' starts from a trained reconstruction model: pass "
                                 "--init-from CHECKPOINT (a step_XXXXXXXX folder of a reconstruct run, or a "
                                 "model folder / hub id)")
            return PercHead(cfg.model)
        if cfg.stage == "edit":
            # An edit-stage checkpoint also holds the editing encoder, which plain PercHead refuses to load.
            from perchead.edit.training import load_stage_model

            model = load_stage_model(source, cfg)
        else:
            model = PercHead.from_pretrained(source)
        arch = model.config
        differs = {k for k, v in arch.to_dict().items() if k != "preset" and cfg.model.to_dict()[k] != v}
        if Path(source).is_dir() and differs:
            self.note(f"the architecture comes from {source} (preset '{arch.preset}'); this run's model "
                      f"options (or their defaults) differ in {sorted(differs)} and are not used")
        return model

    def _configure_stage(self, model: PercHead) -> tuple[list[tuple[str, nn.Parameter]], nn.Module | None]:
        stage = self.cfg.stage
        generator = None
        if stage == "edit":
            generator = _edit_generator(model, self.cfg)
        model.requires_grad_(False)
        if stage == "sharpen":
            if model.shp_cnn is None:
                raise ValueError("stage 'sharpen' trains SHP-CNN, but this model's config has shp_cnn=False")
            model.shp_cnn.requires_grad_(True)
            trainable = [(f"shp_cnn.{n}", p) for n, p in model.shp_cnn.named_parameters()]
        else:
            train_root = generator if generator is not None else model
            train_root.requires_grad_(True)
            trainable = []
            for name, p in train_root.named_parameters():
                # DINOv2 stays frozen (docs/design.md section 2); SHP-CNN belongs to the sharpen stage.
                if ".dino." in f".{name}" or name.startswith(("shp_cnn.", "encoder.dino.")):
                    p.requires_grad_(False)
                else:
                    trainable.append((name, p))
        if not trainable:
            raise ValueError(f"stage '{stage}' has no trainable parameters")
        return trainable, generator

    def _build_loss(self, model: PercHead) -> ImageLoss:
        if self._given_loss is not None:
            return self._given_loss
        name = self.cfg.resolved_loss_name
        # One DINOv2 in memory when the network's frozen branch and the loss use the same checkpoint.
        dino_cfg = self.cfg.loss.sharpen if name == "sharpen" else self.cfg.loss.dino
        shared = None
        if model.encoder.dino is not None and model.config.dino == dino_cfg.model:
            shared = model.encoder.dino.model
        return build_loss(name, self.cfg.loss, dino_model=shared)

    def _datasets(self) -> tuple[PositionDataset, PositionDataset]:
        data = self.cfg.data
        if data.root is None:
            raise ValueError("no training data: pass --data.root DATASET_FOLDER (perchead's dataset format; "
                             "`perchead synth` writes a synthetic one)")
        from perchead.data.format import read_dataset

        dataset = read_dataset(data.root)
        seg = self.cfg.stage == "edit"  # the editing encoder reads segmentation maps
        train = PositionDataset(dataset, data.train_split, data, self.cfg.seed, seg)
        if not dataset.split(data.val_split):
            self.note(f"no '{data.val_split}' subjects: validation grids use training subjects")
            return train, train
        return train, PositionDataset(dataset, data.val_split, data, self.cfg.seed, seg)

    # -- run ----------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if self._tb is not None:
                self._tb.close()
            D.shutdown()

    def _run(self) -> TrainResult:
        cfg, info, device = self.cfg, self.info, self.device
        torch.manual_seed(cfg.seed + info.rank)
        # Cheap checks first (data, checkpoint), so a typo fails before any weights are loaded.
        train_set, val_set = self._datasets()
        resume = self._resume_checkpoint()
        model = self._build_model(resume).to(device)
        if model.config != cfg.model:
            # train_config.json and the checkpoints record the architecture that is trained: a run started from
            # a checkpoint takes it from there, not from its own (unused) model options.
            self.cfg = cfg = dataclasses.replace(cfg, model=model.config)
        if model.config.decoder == "lifting" and (cfg.stage == "edit" or not cfg.data.supervise_input_view):
            raise ValueError("the lifting decoder needs the input view's camera (view 0 of a batch with "
                             "--data.supervise-input-view) and has no editing stage")
        trainable, generator = self._configure_stage(model)
        loss_fn = self._build_loss(model).to(device)
        step_module = TrainStep(model, cfg.stage, loss_fn, cfg.render_backend, cfg.optim.bf16, generator,
                                cfg.map_loss)
        step_module.train()
        if cfg.stage == "sharpen":
            model.eval()
            model.shp_cnn.train()
        wrapped: nn.Module = step_module
        if info.enabled:
            # broadcast_buffers=False: the only buffers are the fixed template and frozen-net statistics.
            wrapped = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False)

        params = [p for _, p in trainable]
        optimizer = torch.optim.AdamW(
            param_groups(trainable, cfg.optim.weight_decay, {"encoder.": cfg.optim.encoder_lr_scale}),
            lr=cfg.optim.lr, betas=cfg.optim.betas)
        scale_group_lrs(optimizer)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_lambda, warmup=cfg.optim.warmup_steps, total=cfg.steps,
                               min_ratio=cfg.optim.min_lr_ratio))
        start, skipped, consecutive = 0, 0, 0
        if resume is not None:
            st = resume.state
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            start = int(st["step"])
            skipped = int(st.get("counters", {}).get("skipped_steps", 0))
            rngs = st["rng"]
            if len(rngs) == info.world_size:
                ckpt.restore_rng(rngs[info.rank])
            else:
                self.note(f"checkpoint was written by {len(rngs)} process(es), this run has {info.world_size}: "
                          "random states are re-seeded (the data order is still exact)")
            self.note(f"resumed from {resume.path} at step {start}")
        if start >= cfg.steps:
            self.note(f"already at step {start} of {cfg.steps}: nothing to do (raise --steps to train longer)")

        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config(resume is not None)
            truncate_step_log(self.out / STEP_LOG, start)
            self._open_tensorboard()
        D.barrier()

        render_size = cfg.data.render_size or model.config.image_size
        order = D.ShardedOrder(cfg.data.batch_size, info)
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=order.iterate(start + 1, cfg.steps), num_workers=cfg.data.num_workers,
            collate_fn=partial(collate, image_size=model.config.image_size, render_size=render_size,
                               supervise_input=cfg.data.supervise_input_view))
        val_items = list(range(cfg.log.val_samples))  # fixed across the run: the first sample positions

        bar = None
        if info.is_main and cfg.log.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.stage}", unit="step", dynamic_ncols=True)
        log_file = open(self.out / STEP_LOG, "a") if info.is_main else None  # noqa: SIM115 -- closed below
        step, last_loss, saved, stopped_by = start, float("nan"), None, None
        stop = StopRequest()
        try:
            stop.__enter__()
            t_prev = time.perf_counter()
            for step, batch in enumerate(loader, start=start + 1):
                t0 = time.perf_counter()
                data_s = t0 - t_prev  # waiting for the loader: the share of a step that is input pipeline
                batch = batch.to(device)
                loss, per_view, _ = wrapped(batch.input_image, batch.input_mask, batch.viewmats, batch.Ks,
                                            batch.targets, batch.valid, batch.input_segmentation,
                                            batch.target_masks, batch.target_segmentation)
                local_ok = bool(torch.isfinite(loss).item())
                # Backward runs on every process even for a bad loss, so all take part in the same gradient
                # all-reduce; the update is then skipped everywhere.
                loss.backward()
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
                ok = D.all_true(local_ok and math.isfinite(grad_norm), device)
                if ok:
                    optimizer.step()
                    consecutive = 0
                else:
                    skipped += 1
                    consecutive += 1
                optimizer.zero_grad(set_to_none=True)
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                loss_value = D.mean_scalar(float(loss.detach()) if local_ok else float("nan"), device)
                dt = time.perf_counter() - t0
                if ok:
                    last_loss = loss_value
                if log_file is not None:
                    rec = {"step": step, "loss": loss_value if ok else None, "lr": lr,
                           "grad_norm": grad_norm if ok else None, "skipped": not ok, "time_s": round(dt, 4),
                           "data_s": round(data_s, 4), "samples": cfg.data.batch_size * info.world_size}
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                    self._scalars(step, {"loss/train": loss_value, "lr": lr, "grad_norm": grad_norm,
                                         "skipped_steps": skipped, "steps_per_s": 1.0 / max(dt, 1e-9)})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", skipped=skipped)
                if consecutive >= cfg.optim.max_bad_steps:
                    latest = ckpt.read_latest(self.ckpt_dir)
                    where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
                    raise NonFiniteLossError(
                        f"{consecutive} consecutive steps (up to step {step}) had a NaN/inf loss or gradient; "
                        f"stopped without saving; {where}. Lower --optim.lr or --optim.warmup-steps, check the "
                        "data, then resume with --resume auto")
                if cfg.log.val_every and (step % cfg.log.val_every == 0 or step == cfg.steps):
                    self._validate(step_module, val_set, val_items, render_size, step)
                # A signal on any process stops every process after this same step (one all-reduce).
                stopping = not D.all_true(stop.signum is None, device)
                if step % cfg.checkpoint.every == 0 or step == cfg.steps or stopping:
                    saved = self._save(model, optimizer, scheduler, step, skipped)
                if stopping:
                    stopped_by = stop.signum or 15
                    self.note(f"stopped by signal {stopped_by} after step {step}; checkpoint {saved} written; "
                              "continue with --resume auto")
                    break
                t_prev = time.perf_counter()
        finally:
            stop.__exit__()
            if bar is not None:
                bar.close()
            if log_file is not None:
                log_file.close()
        if saved is None and info.is_main:
            saved = ckpt.read_latest(self.ckpt_dir)
        return TrainResult(step, skipped, last_loss, saved, stopped_by)

    # -- side work ----------------------------------------------------------------------------------------
    def _write_config(self, resuming: bool) -> None:
        path = self.out / CONFIG_FILE
        text = self.cfg.to_json()
        if resuming and path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = {}
            new = json.loads(text)
            changed = sorted(k for k in set(old) | set(new) if k != "resume" and old.get(k) != new.get(k))
            if changed:
                self.note(f"config differs from the run's previous {CONFIG_FILE} in {changed}; saving the new one")
        atomic_write_text(path, text)

    def _open_tensorboard(self) -> None:
        if not self.cfg.log.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.note("TensorBoard scalars are off: the `tensorboard` package is not installed "
                      f"(`pip install tensorboard`); every step is still in {self.out / STEP_LOG}")
            return
        self._tb = SummaryWriter(str(self.out / "tb"))

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb is not None and (step % self.cfg.log.log_every == 0 or step == 1):
            for key, value in values.items():
                if math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def _save(self, model: PercHead, optimizer, scheduler, step: int, skipped: int) -> Path | None:
        rngs = D.gather_objects(ckpt.capture_rng(), self.info)  # every rank's, for an exact resume
        path = None
        if self.info.is_main:
            state = {"step": step, "stage": self.cfg.stage, "world_size": self.info.world_size,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
                     "counters": {"skipped_steps": skipped}, "loss": self.cfg.resolved_loss_name}
            path = ckpt.save_checkpoint(self.ckpt_dir, model, state, self.cfg.checkpoint.keep_last,
                                        extra_files={CONFIG_FILE: self.cfg.to_json()})
        D.barrier()  # nobody runs ahead (or exits) while rank 0 is still writing
        return path

    @torch.no_grad()
    def _validate(self, step_module: TrainStep, val_set: PositionDataset, items: list[int], render_size: int,
                  step: int) -> None:
        """Rank 0: validation loss on fixed samples and a PNG grid of input, targets, predictions at the
        target cameras, and front / both profiles / back at the standard head camera."""
        if not self.info.is_main or not items:
            return
        from perchead.io.media import save_grid

        was_training = step_module.training
        step_module.eval()
        rows, labels, losses = [], [], []
        canon = Cameras.orbit([0.0, 90.0, -90.0, 180.0], 0.0, HEAD_CAMERA_RADIUS, HEAD_CAMERA_FOV_DEG, render_size)
        canon_names = ["front", "left profile", "right profile", "back"]
        samples = [val_set[item] for item in items]
        n_targets = max(len(s["images"]) for s in samples) - 1
        for sample in samples:
            b = collate([sample], step_module.model.config.image_size, render_size).to(self.device)
            camera = batch_input_camera(step_module.model.config, b.viewmats, b.Ks, render_size)
            pred = step_module.predict(b.input_image, b.input_mask, b.viewmats, b.Ks, render_size,
                                       b.input_segmentation, camera)[0]
            per_view = step_module.loss.per_sample(pred, b.targets[0])
            losses.append(float(per_view[b.valid[0]].mean()))
            vm = canon.viewmats.to(self.device)[None]
            Ks = canon.Ks.to(self.device)[None]
            novel = step_module.predict(b.input_image, b.input_mask, vm, Ks, render_size, b.input_segmentation,
                                        camera)[0]
            blank = torch.ones(3, render_size, render_size, device=self.device)
            inp = _resize_square(b.input_image[0], render_size)
            targets = [b.targets[0, v] for v in range(1, b.targets.shape[1])]
            preds = [pred[v] for v in range(1, pred.shape[0])]
            pad = n_targets - len(targets)
            cells = [inp, pred[0]] + targets + [blank] * pad + preds + [blank] * pad + list(novel)
            rows += [c.clamp(0, 1).permute(1, 2, 0) for c in cells]
            labels += (["input", "pred input"] + [f"target {i + 1}" for i in range(n_targets)]
                       + [f"pred {i + 1}" for i in range(n_targets)] + canon_names)
        ncols = 2 + 2 * n_targets + 4
        save_grid(rows, self.out / "val" / f"step_{step:08d}.png", ncols, labels)
        val_loss = sum(losses) / len(losses)
        if math.isfinite(val_loss) and self._tb is not None:
            self._tb.add_scalar("loss/val", val_loss, step)
        with open(self.out / "val" / "val.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "loss": val_loss}) + "\n")
        step_module.train(was_training)
        if self.cfg.stage == "sharpen":
            step_module.model.eval()
            step_module.model.shp_cnn.train()


def _resize_square(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)[0]


def train(cfg: TrainConfig, **kwargs: Any) -> TrainResult:
    """Run one training stage (in every process of a torchrun job)."""
    return Trainer(cfg, **kwargs).run()


__all__ = ["CONFIG_FILE", "STEP_LOG", "NonFiniteLossError", "StopRequest", "TrainResult", "TrainStep", "Trainer",
           "lr_lambda", "read_step_log", "train", "truncate_step_log"]
