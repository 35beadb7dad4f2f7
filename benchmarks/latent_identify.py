"""The identification experiment of thesis 7.5 on a phantom cohort and on the real series.

Protocol (thesis 7.5): a small VAE is trained on slice a of every patient only; then
slice a and slice b of every patient are encoded and, for each patient, all patients'
slice a are ranked by KL(q_b,i ‖ q_a,j). Reported: how many patients have their own
slice nearest, the mean KL for same and different patients, and who was confused.

    python benchmarks/latent_identify.py --cohort phantom --patients 24 --out /tmp/id_phantom
    python benchmarks/latent_identify.py --cohort real --data /work/shared/data --out /tmp/id_real

The model is tiny (64×64 input, 16 filters, J = 12, no dropout) and trained for a fixed
number of full-batch Adam steps; a checkpoint and the workspace are written to --out so
`ct-vae identify OUT/model.pt OUT/ws.h5 --slice-a A --slice-b B` reproduces the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from training.vae.checkpoint import save_checkpoint
from training.config import ModelConfig, PreprocessConfig, TrainConfig
from training.vae.losses import vae_loss
from training.vae.model import VAE, assemble_input
from training.store.preprocess import center_crop, preprocess_volume
from training.store.workspace import Workspace, write_arrays_workspace

SIZE = 64


def phantom_cohort(n: int, slices: int, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    from training.dicom.phantom import phantom_patient

    out = {}
    for i in range(n):
        ph = phantom_patient(i, seed=7, slices=slices, size=128)
        imgs, _ = preprocess_volume(ph.hu, None, ph.geometry.positions, cfg)
        out[f"PAT-{i + 1:04d}"] = imgs
    return out


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU (z, y, x) sorted along the slice normal and positions (mm), with pydicom only."""
    import pydicom

    slices = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p)
        except Exception:
            continue
        if getattr(ds, "Modality", "") != "CT" or "PixelData" not in ds:
            continue
        iop = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        pos = float(np.array(ds.ImagePositionPatient, float) @ normal)
        hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        slices.append((pos, hu))
    slices.sort(key=lambda s: s[0])
    shape = slices[0][1].shape
    slices = [s for s in slices if s[1].shape == shape]
    return np.stack([s[1] for s in slices]), np.array([s[0] for s in slices])


def real_cohort(data: Path, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    folders = [
        "dicom/lung1-001/image",
        "dicom/sts/STS_001/CT/image",
        "dicom/sts/STS_002/CT/image",
        "dicom/sts/STS_003/CT/image",
        "dicom/head-ct-gantry-tilt",
        "dicom/rtstruct-edge/tests/oriented_data",
    ]
    out = {}
    for i, f in enumerate(folders):
        hu, pos = read_series(data / f)
        edge = max(hu.shape[1:])
        hu = center_crop(hu, edge)  # pad to a square with air before resizing
        imgs, _ = preprocess_volume(hu, None, pos, cfg)
        out[f"PAT-{i + 1:04d}"] = imgs
        print(f"  {f}: {hu.shape[0]} slices → {imgs.shape}")
    return out


def train_tiny(images: np.ndarray, steps: int, seed: int = 0, device: str = "cpu", lr: float = 1e-3) -> tuple[VAE, ModelConfig, TrainConfig]:
    torch.manual_seed(seed)
    mc = ModelConfig(input_size=SIZE, filters=16, n_blocks=4, latent_dim=12, fc_units=128, dropout=0.0)
    tc = TrainConfig(epochs=steps, batch_size=len(images), lr=lr, seed=seed)
    model = VAE(mc).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    x_ct = torch.from_numpy(images).to(device)
    x = assemble_input(x_ct, None, 0).contiguous(memory_format=torch.channels_last)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = vae_loss(model(x), x_ct, None, tc)
        loss.total.backward()
        opt.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.total.item():.1f} (recon {loss.recon.item():.1f}, KL {loss.kl.item():.1f})")
    print(f"  trained {steps} steps on {len(images)} images in {time.perf_counter() - t0:.0f} s")
    return model.cpu().eval(), mc, tc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", choices=("phantom", "real"), required=True)
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--slice-a", type=int, default=None, help="default: phantom 0, real the middle slice")
    ap.add_argument("--gap", type=int, default=2, help="slice b = slice a + gap")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-on", choices=("a", "all"), default="a",
                    help="a: slice a of every patient only (thesis 7.5); all: every slice")
    ap.add_argument("--device", default="cpu", help="training device; encoding runs on the CPU")
    ap.add_argument("--workspace", type=Path, default=None, help="reuse a workspace written by an earlier run")
    ap.add_argument("--prepare-only", action="store_true", help="write OUT/ws.h5 and stop")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from training.latent import similarity
    from training.commands.identify import run_identification

    cfg = PreprocessConfig(crop=None, size=SIZE)
    if args.workspace is not None:
        ws_path = args.workspace
    else:
        cohort = phantom_cohort(args.patients, 8, cfg) if args.cohort == "phantom" else real_cohort(args.data, cfg)
        ws_path = write_arrays_workspace(args.out / "ws.h5", cohort, preprocess=cfg, test_fraction=0.0)
        if args.prepare_only:
            return
    with Workspace.open(ws_path) as ws:
        a_of = {}
        for i, p in enumerate(ws.patients):
            a_of[i] = args.slice_a if args.slice_a is not None else (0 if args.cohort == "phantom" else (p.n_images - args.gap) // 2)
        rows_a = np.array([(i, a) for i, a in a_of.items()])
        train_rows = rows_a if args.train_on == "a" else ws.index()
        model, mc, tc = train_tiny(ws.read_images(train_rows), args.steps, device=args.device, lr=args.lr)
        save_checkpoint(args.out / "model.pt", model_config=mc, train_config=tc, preprocess_config=cfg,
                        model_state=model.state_dict(), optimizer_state=None, epoch=args.steps, history=[],
                        data_hash=ws.data_hash)
        if args.slice_a is not None or args.cohort == "phantom":
            a = a_of[0]
            res = run_identification(model, ws, a, a + args.gap)
            res_s = run_identification(model, ws, a, a + args.gap, symmetric=True)
        else:  # per-patient middle slices: encode rows directly
            from training.latent import encode as latent

            rows_b = rows_a + np.array([0, args.gap])
            ea = latent.encode_workspace(model, ws, rows=rows_a)
            eb = latent.encode_workspace(model, ws, rows=rows_b)
            names = [p.pseudonym for p in ws.patients]
            res = similarity.identify(ea.mu, ea.logvar, eb.mu, eb.logvar, names)
            res_s = similarity.identify(ea.mu, ea.logvar, eb.mu, eb.logvar, names, symmetric=True)
    print(f"\n{args.cohort} cohort, {res.n_patients} patients, slice a → slice a + {args.gap}, "
          f"trained on {'slice a' if args.train_on == 'a' else 'all slices'}, {args.steps} steps on {args.device}")
    print(res.summary())
    print("symmetric: " + res_s.summary().splitlines()[0])
    print(res_s.summary().splitlines()[1])


if __name__ == "__main__":
    main()
