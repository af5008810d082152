"""`perchead train --stage edit` runs the editing network through the real trainer and its checkpoints load."""

import pytest
import torch

from perchead.data.synth import SynthConfig, generate
from perchead.edit import EditNetwork
from perchead.edit.training import build_edit_network, load_stage_model
from perchead.losses.testing import save_tiny_models
from perchead.model import PercHead
from perchead.train import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig, Trainer
from perchead.train.testing import tiny_model_config


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_edit_stage_trains_encoder_and_decoder_not_the_image_encoder(tmp_path, monkeypatch, one_thread):
    clip = save_tiny_models(tmp_path / "models")["clip"]
    monkeypatch.setenv("PERCHEAD_CLIP", str(clip))
    data = tmp_path / "synth"  # exact segmentation maps for every view
    generate(SynthConfig(subjects=3, views=3, size=32, surface_resolution=32), data, progress=False)
    cfg = TrainConfig(out=str(tmp_path / "run"), stage="edit", steps=4, device="cpu", loss_name="pixel",
                      model=tiny_model_config(56), data=DataConfig(root=str(data), batch_size=2),
                      optim=OptimConfig(lr=1e-3, warmup_steps=1),
                      log=LogConfig(progress=False, tensorboard=False, val_every=4, val_samples=1),
                      checkpoint=CheckpointConfig(every=4))
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
    # the checkpoint holds the trained editing encoder
    net = EditNetwork.from_pretrained(result.checkpoint, clip=str(clip))
    assert torch.equal(net.encoder.fuse[1].weight, model.edit_encoder.fuse[1].weight)

    # resume: load_stage_model keeps the trained editing encoder, and the trainer continues from step 4
    resumed = load_stage_model(result.checkpoint)
    assert torch.equal(build_edit_network(resumed, cfg).encoder.fuse[1].weight, model.edit_encoder.fuse[1].weight)
    cfg.steps, cfg.resume = 6, "auto"
    again = Trainer(cfg, model=load_stage_model(result.checkpoint)).run()
    assert again.step == 6 and again.skipped_steps == 0
