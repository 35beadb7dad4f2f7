"""The training engine: determinism, exact resume, callbacks, control, failures, early stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from training.vae.checkpoint import load_checkpoint, load_model
from training.config import ConfigError, ModelConfig, TrainConfig
from training.vae.trainer import Callback, Trainer, TrainingControl
from training.store.workspace import write_arrays_workspace

torch.set_num_threads(1)


def toy_arrays(n_patients=6, n_images=4, size=16, seed=0):
    """Blobs on a background; labels 1 (> 0.5) and 2 (> 0.7) from the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = {}, {}
    for p in range(n_patients):
        stack = []
        for _ in range(n_images):
            cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
            r2 = rng.uniform(4, 12) * size / 16
            stack.append(0.2 + 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r2) + 0.05 * rng.random((size, size)))
        im = np.clip(np.array(stack), 0, 1).astype(np.float32)
        images[f"P{p:02d}"] = im
        labels[f"P{p:02d}"] = ((im > 0.5).astype(np.uint8) + (im > 0.7).astype(np.uint8))
    return images, labels


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    images, labels = toy_arrays()
    path = tmp_path_factory.mktemp("ws") / "toy.h5"
    return write_arrays_workspace(path, images, labels, roi_names=("A", "B"), test_fraction=0.34)


MC = ModelConfig(input_size=16, n_blocks=2, filters=4, latent_dim=2, fc_units=16, n_classes=3, dropout=0.1)


def tc(**kw):
    base = dict(epochs=2, batch_size=4, threads=1, checkpoint_every=1, recon_every=1, n_recon_examples=2,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("start",))

    def on_batch_end(self, progress):
        self.events.append(("batch", progress))

    def on_epoch_end(self, epoch, train_terms, test_terms):
        self.events.append(("epoch", epoch, train_terms, test_terms))

    def on_reconstructions(self, epoch, inputs, recons):
        self.events.append(("recon", epoch, inputs, recons))

    def on_checkpoint(self, path, epoch):
        self.events.append(("checkpoint", path, epoch))

    def on_finished(self, summary):
        self.events.append(("finished", summary))

    def on_failed(self, message):
        self.events.append(("failed", message))

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_run_and_other_seed_differs(workspace):
    runs = []
    for seed in (3, 3, 4):
        t = Trainer(workspace, MC, tc(seed=seed))
        s = t.run()
        assert s.status == "finished", s.message
        runs.append((s.history, _weights(t.model)))
    (h1, w1), (h2, w2), (h3, _) = runs
    assert [e["train"] for e in h1] == [e["train"] for e in h2]
    assert [e["test"] for e in h1] == [e["test"] for e in h2]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert [e["train"] for e in h1] != [e["train"] for e in h3]


def test_resume_continues_the_same_loss_curve(workspace, tmp_path):
    cfg = tc(epochs=4, checkpoint_every=2, augment_every=2, augment_count=3)
    straight = Trainer(workspace, MC, cfg)
    s4 = straight.run()
    first = Trainer(workspace, MC, cfg.replace(epochs=2), out_dir=tmp_path)
    assert first.run().epochs_completed == 2
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.epoch == 2 and len(ck.history) == 2
    resumed = Trainer(workspace, train_config=cfg, out_dir=tmp_path, resume=tmp_path / "last.pt")
    s22 = resumed.run()
    assert s22.status == "finished" and s22.epochs_completed == 4
    for a, b in zip(s4.history, s22.history):
        for split in ("train", "test"):
            for k in a[split]:
                assert a[split][k] == pytest.approx(b[split][k], rel=1e-6, abs=1e-9)
    assert s22.history[-1]["augmented"] == 3
    w4, w22 = _weights(straight.model), _weights(resumed.model)
    for k in w4:
        torch.testing.assert_close(w4[k], w22[k], rtol=1e-5, atol=1e-6)
    assert load_checkpoint(tmp_path / "last.pt").epoch == 4


def test_callbacks_events_and_run_dir(workspace, tmp_path):
    rec = Recorder()
    s = Trainer(workspace, MC, tc(epochs=2, recon_every=2, checkpoint_every=1), out_dir=tmp_path,
                callbacks=[rec]).run()
    kinds = [e[0] for e in rec.events]
    assert kinds[0] == "start" and kinds[-1] == "finished"
    epochs = rec.of("epoch")
    assert [e[1] for e in epochs] == [1, 2]
    for _, _, train, test in epochs:
        assert set(train) == set(test) == {"total", "recon", "kl", "ce"}
        assert train["total"] == pytest.approx(train["recon"] + train["kl"] + train["ce"])
    batches = [e[1] for e in rec.of("batch")]
    n_train = 16  # 4 of 6 patients × 4 images
    assert batches[-1].batch == batches[-1].n_batches == n_train // 4
    assert batches[-1].epoch == 2 and batches[-1].eta_s == 0 and batches[0].eta_s > 0
    (_, epoch, inputs, recons), = rec.of("recon")
    assert epoch == 2
    for split in ("train", "test"):
        assert inputs[split].shape == recons[split].shape == (2, 4, 16, 16)
        assert recons[split].dtype == np.float32
        np.testing.assert_allclose(recons[split][:, 1:].sum(1), 1.0, rtol=1e-5)  # RT softmax
        assert ((recons[split][:, 0] > 0) & (recons[split][:, 0] < 1)).all()  # CT sigmoid
    ckpts = rec.of("checkpoint")
    assert [(p.name, e) for _, p, e in ckpts if p.name == "last.pt"] == [("last.pt", 1), ("last.pt", 2)]
    assert (tmp_path / "best.pt").exists() and (tmp_path / "history.json").exists()
    assert s.last_checkpoint == str(tmp_path / "last.pt")
    summary = rec.of("finished")[0][1]
    assert summary.train_images_per_s > 0 and summary.epochs_completed == 2


def test_load_model_gives_the_trained_network_in_eval_mode(workspace, tmp_path):
    t = Trainer(workspace, MC, tc(epochs=1), out_dir=tmp_path)
    t.run()
    model, ck = load_model(tmp_path / "last.pt")
    assert not model.training and ck.epoch == 1 and ck.preprocess_config.rois == ("A", "B")
    x = torch.rand(2, 4, 16, 16)
    t.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x)[0], t.model.encode(x)[0])


def test_stop_from_another_thread_keeps_last_complete_epoch(workspace, tmp_path):
    control = TrainingControl()

    class StopInSecondEpoch(Callback):
        def on_batch_end(self, p):
            if p.epoch == 2 and p.batch == 1:
                threading.Thread(target=control.stop).start()
                time.sleep(0.05)

    rec = Recorder()
    s = Trainer(workspace, MC, tc(epochs=5, checkpoint_every=10), out_dir=tmp_path,
                callbacks=[StopInSecondEpoch(), rec], control=control).run()
    assert s.status == "stopped" and s.epochs_completed == 1
    assert "stopped" in s.message
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1
    assert rec.of("finished") and not rec.of("failed")


def test_pause_blocks_between_batches_until_resumed(workspace):
    control = TrainingControl()
    seen = []

    class PauseOnce(Callback):
        def on_batch_end(self, p):
            seen.append(time.perf_counter())
            if len(seen) == 1:
                control.pause()
                threading.Timer(0.4, control.resume).start()

    s = Trainer(workspace, MC, tc(epochs=1), callbacks=[PauseOnce()], control=control).run()
    assert s.status == "finished"
    assert seen[1] - seen[0] >= 0.35
    assert not control.paused


def test_nan_stops_with_a_message_and_keeps_last_good_weights(workspace, tmp_path):
    holder = {}

    class Poison(Callback):
        def on_train_start(self, trainer):
            holder["t"] = trainer

        def on_epoch_end(self, epoch, tr, te):
            if epoch == 1:
                holder["good"] = _weights(holder["t"].model)
                with torch.no_grad():
                    holder["t"].model.ct_head[0].weight.fill_(float("nan"))

    rec = Recorder()
    s = Trainer(workspace, MC, tc(epochs=3, checkpoint_every=5), out_dir=tmp_path,
                callbacks=[Poison(), rec]).run()
    assert s.status == "failed"
    assert "epoch 2, batch 1 of 4" in s.message and "recon loss is nan" in s.message
    assert str(tmp_path / "last.pt") in s.message
    assert rec.of("failed")[0][1] == s.message and not rec.of("finished")
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.epoch == 1
    for k, v in holder["good"].items():
        assert torch.equal(ck.model_state[k], v)


def test_exploding_loss_stops_the_run(workspace):
    s = Trainer(workspace, MC, tc(max_loss=1.0)).run()
    assert s.status == "failed" and s.epochs_completed == 0
    assert "epoch 1, batch 1" in s.message and "exceeds max_loss" in s.message


def test_early_stopping_on_test_loss(workspace, monkeypatch, tmp_path):
    values = iter([5.0, 4.0, 4.5, 4.2, 4.1, 3.0])

    def fake_eval(self, epoch_index):
        v = next(values)
        return {"total": v, "recon": v, "kl": 0.0, "ce": 0.0}

    monkeypatch.setattr(Trainer, "_evaluate", fake_eval)
    s = Trainer(workspace, MC, tc(epochs=6, early_stopping_patience=2, checkpoint_every=10),
                out_dir=tmp_path).run()
    assert s.status == "early_stopped" and s.epochs_completed == 4
    assert s.best_epoch == 2 and s.best_test == 4.0
    assert load_checkpoint(tmp_path / "best.pt").epoch == 2
    assert load_checkpoint(tmp_path / "last.pt").epoch == 4


def test_settings_that_do_not_fit_are_refused(workspace, tmp_path):
    with pytest.raises(ConfigError, match="n_classes 0"):
        Trainer(workspace, MC.replace(n_classes=0), tc())
    with pytest.raises(ConfigError, match="input_size 32"):
        Trainer(workspace, MC.replace(input_size=32), tc())
    Trainer(workspace, MC, tc(epochs=1), out_dir=tmp_path).run()
    images, labels = toy_arrays(seed=1)
    other = write_arrays_workspace(tmp_path / "other.h5", images, labels, roi_names=("A", "B"))
    with pytest.raises(ConfigError, match="other data"):
        Trainer(other, train_config=tc(), resume=tmp_path / "last.pt")


def test_ct_only_workspace_trains(tmp_path):
    images, _ = toy_arrays(n_patients=3, n_images=2)
    ws = write_arrays_workspace(tmp_path / "ct.h5", images, test_fraction=0.34)
    s = Trainer(ws, MC.replace(n_classes=0), tc(epochs=1, batch_size=2)).run()
    assert s.status == "finished" and s.final_train["ce"] == 0.0


def test_reading_in_worker_processes_gives_the_same_run(workspace):
    cfg = tc(epochs=3, augment_every=2, augment_count=3)
    a = Trainer(workspace, MC, cfg).run()
    b = Trainer(workspace, MC, cfg, data_workers=2).run()
    assert b.status == "finished", b.message
    assert [h["train"] for h in a.history] == [h["train"] for h in b.history]
    assert b.history[-1]["augmented"] == 3


def test_a_nan_test_loss_stops_the_run_and_keeps_the_previous_epoch(workspace, monkeypatch, tmp_path):
    # finite training losses but weights that give NaN on the test set are not "good"
    values = iter([4.0, float("nan"), 3.0])

    def fake_eval(self, epoch_index):
        v = next(values)
        return {"total": v, "recon": v, "kl": 0.0, "ce": 0.0}

    monkeypatch.setattr(Trainer, "_evaluate", fake_eval)
    rec = Recorder()
    s = Trainer(workspace, MC, tc(epochs=3, checkpoint_every=10), out_dir=tmp_path, callbacks=[rec]).run()
    assert s.status == "failed" and s.epochs_completed == 1
    assert "after epoch 2: the test total loss is nan" in s.message
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1
    assert [e[1] for e in rec.of("epoch")] == [1]


def test_reconstruction_snapshots_kept_in_the_run_folder(workspace, tmp_path):
    """With an output folder each reconstruction goes to reconstructions/epoch_N.npz (what
    the callbacks saw, CT channel, float16); a fresh run there drops an earlier run's
    snapshots and a resumed one those after its checkpoint."""
    from training.vae import recon_history

    rec = Recorder()
    Trainer(workspace, MC, tc(epochs=3, recon_every=1, checkpoint_every=2), out_dir=tmp_path,
            callbacks=[rec]).run()
    snaps = recon_history.load_snapshots(tmp_path)
    assert [e for e, _ in snaps] == [1, 2, 3]
    for (_, epoch, inputs, recons), (e, arrays) in zip(rec.of("recon"), snaps):
        assert e == epoch
        for split in ("train", "test"):
            np.testing.assert_allclose(arrays[f"{split}_input"], inputs[split][:, 0], atol=1e-3)
            np.testing.assert_allclose(arrays[f"{split}_recon"], recons[split][:, 0], atol=1e-3)
    # a snapshot of an epoch after the last checkpoint (3): gone when the run resumes from it
    recon_history.save_snapshot(tmp_path, 5, *rec.of("recon")[-1][2:])
    assert load_checkpoint(tmp_path / "last.pt").epoch == 3
    Trainer(workspace, train_config=tc(epochs=3), out_dir=tmp_path, resume=tmp_path / "last.pt").run()
    assert recon_history.snapshot_epochs(tmp_path) == [1, 2, 3]
    # no callbacks at all (a script, `ct-vae train`): still written
    Trainer(workspace, MC, tc(epochs=1, recon_every=1), out_dir=tmp_path).run()
    assert recon_history.snapshot_epochs(tmp_path) == [1]
    (tmp_path / recon_history.FOLDER / "epoch_00009.npz").write_bytes(b"damaged")
    assert [e for e, _ in recon_history.load_snapshots(tmp_path)] == [1]


def test_reconstruction_snapshots_of_3d_volumes_are_middle_slices(tmp_path):
    from training.vae import recon_history

    vol = np.random.default_rng(0).random((2, 3, 5, 8, 8)).astype(np.float32)
    recon_history.save_snapshot(tmp_path, 4, {"train": vol}, {"train": vol[:, :, ::-1]})
    ((epoch, arrays),) = recon_history.load_snapshots(tmp_path)
    assert epoch == 4 and set(arrays) == {"train_input", "train_recon"}
    np.testing.assert_allclose(arrays["train_input"], vol[:, 0, 2], atol=1e-3)
    np.testing.assert_allclose(arrays["train_recon"], vol[:, 0, 2], atol=1e-3)  # middle of 5 reversed
