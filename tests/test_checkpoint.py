"""Checkpoints: round trip, atomic writes, and loading that never runs code from the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from training.vae.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from training.config import ModelConfig, PreprocessConfig, TrainConfig

torch.set_num_threads(1)


def _save(path, **over):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    kw = dict(
        model_config=ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=2),
        train_config=TrainConfig(epochs=3, batch_size=4),
        preprocess_config=PreprocessConfig(crop=16, rois=("GTV",)),
        model_state=net.state_dict(),
        optimizer_state=opt.state_dict(),
        epoch=2,
        history=[{"epoch": 0, "train": {"loss": 1.5}, "test": {"loss": 2.0}}],
        data_hash="abc123",
        roi_names=("GTV",),
        rng_state={"torch": torch.get_rng_state()},
        trainer_state={"best_test": 1.25, "aug_images": torch.zeros(2, 4, 4)},
    )
    kw.update(over)
    save_checkpoint(path, **kw)
    return net, opt, kw


def test_round_trip_keeps_everything(tmp_path):
    net, opt, kw = _save(tmp_path / "last.pt")
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.model_config == kw["model_config"]
    assert ck.train_config == kw["train_config"]
    assert ck.preprocess_config == kw["preprocess_config"]
    assert ck.epoch == 2 and ck.data_hash == "abc123" and ck.roi_names == ("GTV",)
    assert ck.history == kw["history"]
    for k, v in net.state_dict().items():
        assert torch.equal(ck.model_state[k], v)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer_state)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(ck.rng_state["torch"], kw["rng_state"]["torch"])
    assert ck.trainer_state["best_test"] == 1.25
    assert ck.path == tmp_path / "last.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_refuses_pickled_code_and_never_runs_it(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt"
    payload = {"format": "ct-vae-checkpoint", "version": 1, "model_state": {}, "x": _WritesMarker(marker)}
    torch.save(payload, evil)  # a torch-format file carrying a pickled object
    with pytest.raises(CheckpointError, match="refused") as info:
        load_checkpoint(evil)
    assert str(evil) in str(info.value)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(payload))  # a plain pickle file
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()
    # unpickling the same bytes unsafely would have run it: the test is meaningful
    pickle.loads(raw.read_bytes())
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_mapped_loading_reads_the_same_and_refuses_the_same(tmp_path):
    """mmap=True (a look at the metadata when a workspace opens) maps the tensors instead
    of reading them, and is as strict: weights only, one clear message per bad file."""
    net, _, kw = _save(tmp_path / "last.pt")
    ck = load_checkpoint(tmp_path / "last.pt", mmap=True)
    assert (ck.data_hash, ck.epoch, ck.model_config, ck.history) == ("abc123", 2, kw["model_config"], kw["history"])
    for k, v in net.state_dict().items():
        assert torch.equal(ck.model_state[k], v)
    marker = tmp_path / "marker.txt"
    torch.save({"format": "ct-vae-checkpoint", "version": 1, "x": _WritesMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt", mmap=True)
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt", mmap=True)


def test_bad_files_give_one_clear_message(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format marker"):
        load_checkpoint(tmp_path / "other.pt")
    _save(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    _save(target)
    before = target.read_bytes()

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("field, value", [
    ("filters", 0), ("filters", "8"), ("latent_dim", 2.5), ("n_blocks", True), ("dropout", "0.1"),
])
def test_settings_of_the_wrong_type_or_range_are_a_checkpoint_error(tmp_path, field, value):
    # JSON edited (or written by something else): load_model must name the file, not raise
    # a TypeError or ConfigError from deep inside the network's constructor.
    import json

    from training.vae.checkpoint import load_model

    from training.vae.model import VAE

    mc = ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=2)
    path = tmp_path / "edited.pt"
    _save(path, model_config=mc, model_state=VAE(mc).state_dict())
    load_model(path)  # as written it loads
    raw = torch.load(path, weights_only=True)
    cfg = json.loads(raw["model_config"])
    cfg[field] = value
    raw["model_config"] = json.dumps(cfg)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="edited.pt"):
        load_model(path)


def test_train_and_preprocess_settings_types_are_checked(tmp_path):
    import json

    path = tmp_path / "edited.pt"
    _save(path)
    raw = torch.load(path, weights_only=True)
    tc = json.loads(raw["train_config"])
    tc["epochs"] = 2.5
    raw["train_config"] = json.dumps(tc)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="epochs"):
        load_checkpoint(path)
    raw["train_config"] = json.dumps({**tc, "epochs": 3})
    pre = json.loads(raw["preprocess_config"])
    raw["preprocess_config"] = json.dumps({**pre, "rois": "GTV"})  # a string, not a list of names
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="rois"):
        load_checkpoint(path)
