"""The GPU code path's options, exercised where the CPU allows (issue 15): bf16 autocast
and channels_last are TrainConfig options; autocast is a no-op on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import ConfigError, ModelConfig, TrainConfig
from training.vae.losses import loss_per_image
from training.vae.model import VAE
from training.vae.trainer import Trainer, _ElboStep, autocast_context

torch.set_num_threads(1)


def test_autocast_is_validated():
    with pytest.raises(ConfigError, match="autocast"):
        TrainConfig(autocast="fp8").validate()
    assert TrainConfig.from_dict({"autocast": "bf16"}).autocast == "bf16"


def test_bf16_forward_and_loss_are_finite_with_gradients():
    mc = ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=3, fc_units=16, n_classes=3)
    torch.manual_seed(0)
    model = VAE(mc)
    step = _ElboStep(model)
    x = torch.rand(4, 4, 16, 16)
    x[:, 1:] = torch.nn.functional.one_hot(torch.randint(0, 3, (4, 16, 16)), 3).permute(0, 3, 1, 2).float()
    labels = x[:, 1:].argmax(1)
    eps = torch.randn(4, 3)
    with autocast_context(torch.device("cpu"), "bf16", allow_cpu=True):
        out = step(x, eps)
    assert out.ct.dtype == torch.bfloat16  # the path really ran in bf16
    t = loss_per_image(out, x[:, :1], labels, TrainConfig())
    assert t.total.dtype == torch.float32 and torch.isfinite(t.total).all()
    t.total.mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # the float32 forward agrees to bf16 precision
    model.eval()
    ref = loss_per_image(step(x, eps), x[:, :1], labels, TrainConfig()).total
    model.train()
    assert autocast_context(torch.device("cpu"), "bf16").__class__.__name__ == "nullcontext"
    assert ref.shape == t.total.shape


@pytest.mark.parametrize("channels_last", [False, True])
def test_autocast_option_is_ignored_on_cpu(tmp_path, channels_last):
    from tests.test_trainer import MC, toy_arrays
    from training.store.workspace import write_arrays_workspace

    images, labels = toy_arrays()
    ws = write_arrays_workspace(tmp_path / "toy.h5", images, labels, roi_names=("A", "B"), test_fraction=0.34)
    runs = []
    for mode in ("none", "bf16"):
        tc = TrainConfig(epochs=1, batch_size=4, threads=1, device="cpu", autocast=mode,
                         channels_last=channels_last, metrics_images=0)
        runs.append(Trainer(ws, MC, tc).run().history[0]["train"]["total"])
    assert runs[0] == runs[1]
    assert np.isfinite(runs[0])
