"""`perchead train --stage edit` runs the editing network through the real trainer and its checkpoints load."""

import pytest
import torch

from perchead.data.format import SEG
from perchead.data.synth import SynthConfig, generate
from perchead.edit import EditNetwork
from perchead.edit.training import build_edit_network, load_stage_model
from perchead.geometry import Gaussians
from perchead.losses.foundation import WeightsNotFoundError
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead
from perchead.train import (
    CheckpointConfig,
    DataConfig,
    LogConfig,
    MapLossConfig,
    OptimConfig,
    TrainConfig,
    Trainer,
    TrainStep,
)
from perchead.train.data import collate
from perchead.train.testing import tiny_model_config


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_edit_stage_trains_encoder_and_decoder_not_the_image_encoder(tmp_path, one_thread):
    clip = save_tiny_models(tmp_path / "models")["clip"]
    data = tmp_path / "synth"  # exact segmentation maps for every view
    generate(SynthConfig(subjects=3, views=3, size=32, surface_resolution=32), data, progress=False)
    cfg = TrainConfig(out=str(tmp_path / "run"), stage="edit", steps=4, device="cpu", loss_name="pixel",
                      clip=str(clip), model=tiny_model_config(56), data=DataConfig(root=str(data), batch_size=2),
                      optim=OptimConfig(lr=1e-3, warmup_steps=1),
                      log=LogConfig(progress=False, tensorboard=False, val_every=4, val_samples=1),
                      checkpoint=CheckpointConfig(every=4), map_loss=MapLossConfig(label_weight=0.5, alpha_weight=0.5))
    torch.manual_seed(0)
    model = PercHead(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = Trainer(cfg, model=model).run()
    assert result.skipped_steps == 0 and result.last_loss == result.last_loss  # finite
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("decoder.") for k in changed) and any(k.startswith("heads.") for k in changed)
    assert not any(k.startswith("encoder.") for k in changed)  # the image encoder is not used in this stage
    assert (tmp_path / "run" / "val").is_dir()
    # the checkpoint holds the trained editing encoder, and names the run's CLIP nowhere but train_config.json
    net = EditNetwork.from_pretrained(result.checkpoint, clip=str(clip))
    assert torch.equal(net.encoder.fuse[1].weight, model.edit_encoder.fuse[1].weight)
    assert TrainConfig.from_dict(cfg.to_dict()).clip == str(clip)

    # load_stage_model restores PercHead + editing encoder; build_edit_network keeps that encoder
    resumed = load_stage_model(result.checkpoint, cfg)
    assert torch.equal(build_edit_network(resumed, cfg).encoder.fuse[1].weight, model.edit_encoder.fuse[1].weight)
    # resume into a *fresh* PercHead handed to the trainer (no editing encoder yet): the checkpoint's is attached
    cfg.steps, cfg.resume = 6, "auto"
    fresh = PercHead(cfg.model)
    again = Trainer(cfg, model=fresh).run()
    assert again.step == 6 and again.skipped_steps == 0
    assert not torch.equal(fresh.edit_encoder.fuse[1].weight, model.edit_encoder.fuse[1].weight)  # trained on
    final = EditNetwork.from_pretrained(again.checkpoint, clip=str(clip))
    assert torch.equal(final.encoder.fuse[1].weight, fresh.edit_encoder.fuse[1].weight)


def test_clip_option_errors(tmp_path):
    with pytest.raises(ValueError, match="edit stage only"):
        TrainConfig(stage="reconstruct", clip="openai/clip-vit-base-patch32")
    assert TrainConfig.from_dict({"stage": "edit"}).clip is None  # train_config.json of older runs
    cfg = TrainConfig(stage="edit", clip=str(tmp_path / "no_clip_here"))
    with pytest.raises(WeightsNotFoundError, match=r"does not exist.*--clip HUB_ID_OR_FOLDER"):
        build_edit_network(PercHead(tiny_model_config(56)), cfg)


def test_resume_with_a_clip_of_another_size_is_refused(tmp_path):
    small = save_tiny_models(tmp_path / "a")["clip"]  # 16-d projection
    from transformers import CLIPModel

    from perchead.losses.testing import tiny_clip_config, tiny_clip_tokenizer

    tok = tiny_clip_tokenizer()
    conf = tiny_clip_config(len(tok))
    conf.projection_dim = 24
    CLIPModel(conf).save_pretrained(tmp_path / "b")
    tok.save_pretrained(tmp_path / "b")
    model = PercHead(tiny_model_config(56))
    build_edit_network(model, TrainConfig(stage="edit", clip=str(small)))
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"16-d CLIP embeddings.*24-d.*--clip"):
        build_edit_network(load_stage_model(tmp_path / "ckpt"), TrainConfig(stage="edit", clip=str(tmp_path / "b")))
    # an exported editing checkpoint keeps no image encoder: not a starting point for the trainer
    EditNetwork.from_pretrained(tmp_path / "ckpt", clip=str(small)).save_pretrained(tmp_path / "exported")
    with pytest.raises(ValueError, match="exported editing checkpoint"):
        load_stage_model(tmp_path / "exported")
    # ... also when the trainer is handed one (its architecture note must not read the folder first)
    trainer = Trainer(TrainConfig(out=str(tmp_path / "run"), stage="edit", device="cpu", clip=str(small),
                                  init_from=str(tmp_path / "exported")))
    with pytest.raises(ValueError, match="exported editing checkpoint"):
        trainer._build_model(None)



def plane(n: int = 24, half: float = 0.07) -> Gaussians:
    """A batch of one: an n x n grid of flat, nearly opaque Gaussians in the z = 0 plane, facing the frontal
    camera."""
    t = torch.linspace(-half, half, n)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    means = torch.stack([xx, yy, torch.zeros_like(xx)], -1).reshape(1, -1, 3)
    k, s = means.shape[1], 2 * half / (n - 1)
    return Gaussians(means, torch.log(torch.tensor([0.6 * s, 0.6 * s, 0.05 * s])).expand(1, k, 3).clone(),
                     torch.tensor([1.0, 0, 0, 0]).expand(1, k, 4).clone(), torch.full((1, k), 3.0),
                     torch.zeros(1, k, 1, 3))


def test_map_loss_is_low_for_the_maps_the_head_draws_and_pulls_toward_others():
    """The edit stage's map terms: near zero when every target view's map and mask are what the Gaussians,
    labelled from the input map, draw; higher when a target's map is moved; gradients reach the Gaussians."""
    from perchead.edit.fidelity import render_labels
    from perchead.inference.pose import Pose, camera_K

    size = 32
    g = plane()
    vm, K = Pose(0.0, 0.0).viewmat, camera_K(size)
    drawn = render_labels(g[0], torch.ones(g.means.shape[1], 1), vm, K, size, backend="cpu")[1] > 0.5
    seg = torch.zeros(size, size, dtype=torch.long)
    seg[drawn] = SEG["skin"]
    seg[:, size // 2:][drawn[:, size // 2:]] = SEG["hair"]
    step = TrainStep(PercHead(tiny_model_config(56)), "edit", None, "cpu", False,
                     map_loss=MapLossConfig(label_weight=1.0, alpha_weight=1.0))
    viewmats, Ks = vm.expand(1, 2, 4, 4), K.expand(1, 2, 3, 3)
    masks = drawn.float().expand(1, 2, 1, size, size)
    same = step.map_terms(g, seg[None], viewmats, Ks, masks, seg.expand(1, 2, size, size))
    moved = torch.stack([seg, seg.roll(6, dims=1)])[None]
    g.means.requires_grad_(True)
    other = step.map_terms(g, seg[None], viewmats, Ks, masks, moved)
    # measured: 0.039 for both views, 0.334 for the moved map
    assert same.shape == (1, 2) and float(same.max()) < 0.1, same
    d = other.detach()
    assert float(d[0, 1]) > float(same[0, 1]) + 0.15 and torch.allclose(d[0, 0], same[0, 0]), (same, d)
    other.sum().backward()
    assert float(g.means.grad.abs().sum()) > 0


def test_map_loss_options_and_batches():
    assert not MapLossConfig().active and MapLossConfig(alpha_weight=0.5).active
    with pytest.raises(ValueError, match="edit stage only"):
        TrainConfig(stage="reconstruct", map_loss=MapLossConfig(label_weight=1.0))
    with pytest.raises(ValueError, match="supervise_input_view"):
        TrainConfig(stage="edit", map_loss=MapLossConfig(label_weight=1.0),
                    data=DataConfig(supervise_input_view=False))
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig(stage="edit", map_loss=MapLossConfig(alpha_weight=-1.0))
    # collate: the targets' maps at the render size, padded like the targets, ids kept
    segs = torch.randint(0, 19, (3, 16, 16))
    sample = {"images": torch.rand(3, 3, 16, 16), "masks": torch.rand(3, 1, 16, 16), "segmentation": segs,
              "Ks": torch.eye(3).expand(3, 3, 3), "viewmats": torch.eye(4).expand(3, 4, 4)}
    single = {**{k: v[:1] for k, v in sample.items()}}
    batch = collate([sample, single], 8, 8)
    assert batch.target_segmentation.shape == (2, 3, 8, 8) and batch.target_segmentation.dtype == torch.long
    assert torch.equal(batch.target_segmentation[0], segs[:, ::2, ::2])
    assert torch.equal(batch.input_segmentation[0], segs[0, ::2, ::2])
    assert torch.equal(batch.target_segmentation[1, 1], segs[0, ::2, ::2])  # padding repeats the first view


def test_edit_stage_keeps_the_colour_read_and_stores_what_it_trained(tmp_path, one_thread):
    clip = save_tiny_models(tmp_path / "models")["clip"]
    data = tmp_path / "synth"
    generate(SynthConfig(subjects=2, views=2, size=32, surface_resolution=32), data, progress=False)
    cfg = TrainConfig(out=str(tmp_path / "run"), stage="edit", steps=2, device="cpu", loss_name="pixel",
                      clip=str(clip), model=tiny_model_config(56, colour_read=True),
                      data=DataConfig(root=str(data), batch_size=1), optim=OptimConfig(lr=1e-3, warmup_steps=1),
                      log=LogConfig(progress=False, tensorboard=False, val_every=0),
                      checkpoint=CheckpointConfig(every=2))
    torch.manual_seed(0)
    model = PercHead(cfg.model)
    start = model.heads.out.weight.clone()
    result = Trainer(cfg, model=model).run()
    # The heads keep their colour read, now of the colours the map's tokens predict from the style: the
    # checkpoint holds the trained heads and the encoder's colour layer.
    net = EditNetwork.from_pretrained(result.checkpoint, clip=str(clip))
    assert net.config.colour_read and net.heads.colour_read is not None and net.encoder.colour is not None
    assert torch.equal(net.heads.out.weight, model.heads.out.weight)
    assert torch.equal(net.encoder.colour.weight, model.edit_encoder.colour.weight)
    assert not torch.equal(net.heads.out.weight, start)
    assert float(net.encoder.colour.weight.detach().abs().max()) > 0.0  # trained from its zero start
