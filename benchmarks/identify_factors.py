"""What makes the latent identify better than pixels at larger distances? (issue 15)

Runs `ct-vae experiment identify` (training.explore.experiments.run_identify, thesis 7.5
protocol) for a set of training variants on one workspace and prints one table: per
variant and distance, "n of N nearest to self" for KL directed, Euclidean between means,
pixel L2 and reconstruction L2, beside the training time.

    PYTHONPATH=. python benchmarks/identify_factors.py W.h5 --out REPORTS/ [--distances 2.5,5,10,20,35]
        [--variants base,short,long,J2,J32,sigma0.1,sigma0.001,augment]

Each variant's full report (CSV, SVG, report.json with settings and data hash) is in
REPORTS/<variant>/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "base": dict(epochs=200),
    "short": dict(epochs=50),
    "long": dict(epochs=600),
    "J2": dict(epochs=200, model={"latent_dim": 2}),
    "J32": dict(epochs=200, model={"latent_dim": 32}),
    "sigma0.1": dict(epochs=200, train={"recon_sigma2": 0.1}),
    "sigma0.001": dict(epochs=200, train={"recon_sigma2": 0.001}),
    "augment": dict(epochs=200, train={"augment_every": 20, "augment_count": 20}),
    "dropout0": dict(epochs=200, model={"dropout": 0.0}),
}
SHOWN = ("kl_directed", "euclidean_mu", "pixel_l2", "recon_l2")


def main() -> None:
    from training.explore.experiments import IdentifySettings, run_identify

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--distances", default="2.5,5,10,20,35")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    distances = tuple(float(v) for v in args.distances.split(","))
    lines = []
    for name in args.variants.split(","):
        v = VARIANTS[name]
        train = {"threads": args.threads, "seed": args.seed, **v.get("train", {})}
        s = IdentifySettings(epochs=v["epochs"], model=dict(v.get("model", {})), train=train,
                             distances_mm=distances)
        t0 = time.time()
        rep = run_identify(args.workspace, args.out / name, s)
        secs = time.time() - t0
        for r in rep["results"]:
            if not r["methods"]:
                continue
            cells = " | ".join(f"{r['methods'][m]['n_identified']}/{r['n']}" for m in SHOWN)
            lines.append(f"| {name} | {r['distance_mm']:g} | {cells} | {secs:.0f} |")
        print(f"{name}: done in {secs:.0f} s", flush=True)
        (args.out / "summary.md").parent.mkdir(parents=True, exist_ok=True)
        head = (f"workspace {args.workspace} (data hash {rep['data_hash']}), {len(rep['entries'])} entries\n\n"
                "| variant | distance (mm) | " + " | ".join(SHOWN) + " | seconds |\n|---|---|"
                + "---|" * len(SHOWN) + "---|\n")
        (args.out / "summary.md").write_text(head + "\n".join(lines) + "\n")
    print((args.out / "summary.md").read_text())
    print(json.dumps({"variants": args.variants, "distances": distances}))


if __name__ == "__main__":
    main()
