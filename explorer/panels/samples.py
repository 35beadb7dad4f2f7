"""Samples tab (SPEC F20, thesis 4.5): a grid of images decoded from random codes.

Codes come from the prior N(0, σz² I) (training.latent.sampling.sample_prior) or from the
aggregate posterior p̃(z) = (1/N) Σ_n q(z|x_n) over every encoded image of the workspace
(training.latent.sampling.sample_aggregate_posterior, thesis Algorithm 2), through
training.latent.encode.generate. The same seed gives the same images; "Draw again" moves to the
next seed (so every grid shown can be reproduced from the seed field).
"""

from __future__ import annotations

import math

from explorer.qt import QtWidgets
from explorer.widgets.latent_canvas import LatentPanel, TileView, labelled_row

SOURCES = {"prior N(0, σz² I)": "prior", "aggregate posterior p̃(z)": "aggregate"}


class SamplesPanel(LatentPanel):
    title = "Samples"
    tooltip = "Images decoded from draws of the prior or of the aggregate posterior"

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.source = QtWidgets.QComboBox()
        self.source.addItems(list(SOURCES))
        self.source.setToolTip("Where the codes are drawn from")
        self.count = QtWidgets.QSpinBox()
        self.count.setRange(1, 256)
        self.count.setValue(16)
        self.count.setToolTip("Number of images")
        self.seed = QtWidgets.QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed: the same seed draws the same codes")
        self.again = QtWidgets.QPushButton("Draw again")
        self.again.setToolTip("Next seed")
        self.grid = TileView("Samples")
        self.grid.tileClicked.connect(self._tile_clicked)
        self.export = self.export_button(self.grid, "samples", table=self.table)
        self.add_generated_exports(self.export, self._generated)

        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(labelled_row("draw from:", self.source, "images:", self.count, "seed:", self.seed,
                                   self.again, None, self.export))
        lay.addWidget(self.grid, 1)
        lay.addWidget(self.status)
        self.source.currentIndexChanged.connect(self.refresh)
        self.count.valueChanged.connect(self.refresh)
        self.seed.valueChanged.connect(self.refresh)
        self.again.clicked.connect(self.draw_again)
        self.result = None

    def draw_again(self) -> None:
        self.seed.setValue(self.seed.value() + 1)  # valueChanged refreshes

    def request(self) -> dict | None:
        req = self.base_request()
        if req is None:
            return None
        req.update(source=SOURCES[self.source.currentText()], n=self.count.value(), seed=self.seed.value())
        return req

    @staticmethod
    def compute(req: dict) -> dict:
        from training.latent import encode as latent
        from training.explore import latent as latent_views

        lm = latent_views.load_latent_model(req["checkpoint"])
        post = None
        if req["source"] == "aggregate":
            if not req["workspace"]:
                raise ValueError("the aggregate posterior needs encoded images: open a workspace with data")
            wl = latent_views.encode_patients(lm, req["workspace"])
            post = (wl.encoded.mu, wl.encoded.logvar)
        s = latent.generate(lm.model, req["n"], req["source"], req["seed"], lm.prior_sigma2,
                            posteriors=post, decoder=lm.decoder)
        ct = latent_views.display_slice(s.images, lm.spatial_dims)
        lab = latent_views.display_slice(s.labels, lm.spatial_dims)
        shown = latent_views.display_rgb(ct, lab, lm.n_classes) if lab is not None else ct
        return {"lm": lm, "samples": s, "shown": shown}

    def show_result(self, r: dict) -> None:
        self.result = r
        s = r["samples"]
        n = len(s.codes)
        self.grid.set_tiles(r["shown"], columns=math.ceil(math.sqrt(n)), captions=[str(i) for i in range(n)])
        src = "the prior N(0, σz² I)" if s.source == "prior" else "the aggregate posterior p̃(z)"
        self.grid.plot.setTitle(f"{n} draws from {src}, seed {s.seed} — epoch {r['lm'].epoch}")
        kind = "CT + RT" + self.legend(r["lm"]) if r["lm"].n_classes else "CT only"
        self.set_status(f"{kind} model · drawn and decoded in {self.last_ms:.0f} ms · click an image for its code")

    def _tile_clicked(self, i: int) -> None:
        if self.result is None:
            return
        z = self.result["samples"].codes[i]
        self.set_status(f"image {i}: z = (" + ", ".join(f"{v:.3f}" for v in z) + ")")

    def table(self):
        if self.result is None:
            return (["sample"], [])
        s = self.result["samples"]
        return (["sample", "source", "seed"] + [f"z{k}" for k in range(s.codes.shape[1])],
                [[i, s.source, s.seed, *c.tolist()] for i, c in enumerate(s.codes)])

    def _generated(self):
        if self.result is None:
            return None
        s = self.result["samples"]
        return s.images, s.labels, f"samples_{s.source}_seed{s.seed}"


PANEL = SamplesPanel
