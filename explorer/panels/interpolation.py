"""Interpolation tab (SPEC F19, thesis 4.5): decode the path between two codes live.

Endpoints: a patient's µ (its aggregate posterior, training.explore.latent.encode_patients,
"mixture") or a random draw from the prior N(0, σz² I) (training.latent.sampling.sample_prior
with the seed field; the two ends use draws 0 and 1 of that seed). The path is linear or
spherical (training.latent.sampling.lerp/slerp via training.explore.latent.code_at). The slider
decodes on the GUI thread while one decode takes under SYNC_LIMIT_MS (a 128² 2-D decode
takes a few ms), otherwise through the latest-wins worker; at either end of the slider
the image is exactly the decode of that endpoint's µ (the patient's reconstruction from
its mean code). The filmstrip shows `steps` evenly spaced codes
(training.latent.encode.interpolation).
"""

from __future__ import annotations

import time

import numpy as np

from explorer.qt import Qt, QtWidgets
from explorer.widgets.latent_canvas import CTImageView, LatentPanel, TileView, fill_patient_combo, labelled_row
from explorer.widgets.latest_worker import LatestWorker

RANDOM = "random prior draw"
SLIDER_STEPS = 1000
SYNC_LIMIT_MS = 30.0


class InterpolationPanel(LatentPanel):
    title = "Interpolation"
    tooltip = "Decode the straight or spherical path between two patients or prior draws"

    def __init__(self, state, parent=None) -> None:
        super().__init__(state, parent)
        self.src = QtWidgets.QComboBox()
        self.dst = QtWidgets.QComboBox()
        for c in (self.src, self.dst):
            c.addItem(RANDOM)
            c.setMinimumContentsLength(12)
        self.src.setToolTip("Start: a patient's µ or a draw from the prior")
        self.dst.setToolTip("End: a patient's µ or a draw from the prior")
        self.seed = QtWidgets.QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed of the random prior draws (start = draw 0, end = draw 1)")
        self.method = QtWidgets.QComboBox()
        self.method.addItems(["linear", "spherical"])
        self.steps = QtWidgets.QSpinBox()
        self.steps.setRange(2, 32)
        self.steps.setValue(8)
        self.steps.setToolTip("Images in the filmstrip")
        self.slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setToolTip("Position along the path: t = 0 (start) … 1 (end)")
        self.t_label = QtWidgets.QLabel("t = 0.000")
        self.t_label.setFixedWidth(260)  # a changing text must not re-lay out the panel

        self.image = CTImageView("Decoded at t")
        self.film = TileView("Filmstrip")
        self.export = self.export_button(self.image, "interpolation-image", table=self.image.table)
        self.add_generated_exports(self.export, self._generated_current)
        self.film_export = self.export_button(self.film, "interpolation-filmstrip", table=self.film_table)
        self.add_generated_exports(self.film_export, self._generated_film)

        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(labelled_row("from:", self.src, "to:", self.dst, "seed:", self.seed, "path:", self.method,
                                   "filmstrip steps:", self.steps, None))
        lay.addLayout(labelled_row("t:", self.slider, self.t_label, self.export))
        split = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.image)
        fw = QtWidgets.QWidget()
        fl = QtWidgets.QVBoxLayout(fw)
        fl.setContentsMargins(0, 0, 0, 0)
        fl.addWidget(self.film, 1)
        fl.addLayout(labelled_row(None, self.film_export))
        split.addWidget(fw)
        split.setSizes([420, 200])
        lay.addWidget(split, 1)
        lay.addWidget(self.status)

        self.endpoints = None  # dict from compute: lm, z0, z1, names
        self.decode_ms: list[float] = []
        self.slider_worker = LatestWorker(self, name="interpolation-slider")
        self.slider_worker.resultReady.connect(lambda rid, r: self._show_decoded(*r))
        for c in (self.src, self.dst, self.method):
            c.currentIndexChanged.connect(self.refresh)
        self.seed.valueChanged.connect(self.refresh)
        self.steps.valueChanged.connect(self.refresh)
        self.slider.valueChanged.connect(self._slider_moved)
        self.current_code: np.ndarray | None = None
        self.current_image: np.ndarray | None = None
        self.current_labels: np.ndarray | None = None

    # -- work --------------------------------------------------------------------------
    def request(self) -> dict | None:
        req = self.base_request()
        if req is None:
            return None
        req.update(src=self.src.currentText(), dst=self.dst.currentText(), seed=self.seed.value(),
                   method=self.method.currentText(), steps=self.steps.value(),
                   first=self.endpoints is None)  # first time: first and last patient
        return req

    @staticmethod
    def compute(req: dict) -> dict:
        from training.latent import encode as latent
        from training.explore import latent as latent_views
        from training.latent import sampling

        lm = latent_views.load_latent_model(req["checkpoint"])
        wl = LatentPanel.encode_optional(lm, req["workspace"])
        names = wl.names if wl is not None else []
        src, dst = req["src"], req["dst"]
        if src == RANDOM and dst == RANDOM and names and req.get("first", False):
            src, dst = names[0], names[-1]
        draws = sampling.sample_prior(2, lm.latent_dim, lm.prior_sigma2, req["seed"])

        def code(name: str, k: int) -> np.ndarray:
            if name != RANDOM and wl is not None and name in names:
                return wl.patient_mu(name)
            return draws[k]

        z0, z1 = code(src, 0), code(dst, 1)
        lm.decoder.decode(z0)  # warm up here, not in the first slider move on the GUI thread
        t0 = time.perf_counter()
        lm.decoder.decode(z1)  # timed warm: whether the first slider move may decode on the GUI thread
        decode_ms = (time.perf_counter() - t0) * 1000.0
        film = latent.interpolation(lm.model, z0, z1, req["steps"], req["method"], decoder=lm.decoder)
        ct = latent_views.display_slice(film.images, lm.spatial_dims)
        lab = latent_views.display_slice(film.labels, lm.spatial_dims)
        shown = latent_views.display_rgb(ct, lab, lm.n_classes) if lab is not None else ct
        return {"lm": lm, "z0": z0, "z1": z1, "names": names, "film": film, "film_shown": shown,
                "decode_ms": decode_ms,
                "src": src if (src == RANDOM or src in names) else RANDOM,
                "dst": dst if (dst == RANDOM or dst in names) else RANDOM, "method": req["method"]}

    # -- display -----------------------------------------------------------------------
    def show_result(self, r: dict) -> None:
        self.endpoints = r
        fill_patient_combo(self.src, r["names"], [RANDOM])
        fill_patient_combo(self.dst, r["names"], [RANDOM])
        for combo, name in ((self.src, r["src"]), (self.dst, r["dst"])):
            combo.blockSignals(True)
            combo.setCurrentText(name)
            combo.blockSignals(False)
        steps = len(r["film"].t)
        caps = [f"t={t:.2f}" for t in r["film"].t]
        self.film.set_tiles(r["film_shown"], columns=steps, captions=caps)
        a = "µ " + r["src"] if r["src"] != RANDOM else f"prior draw 0 (seed {self.seed.value()})"
        b = "µ " + r["dst"] if r["dst"] != RANDOM else f"prior draw 1 (seed {self.seed.value()})"
        self.film.plot.setTitle(f"{r['method'].capitalize()} path from {a} to {b}: {steps} steps")
        self.path_text = f"{a} → {b}"
        # a slow model (a 3-D volume) is decoded off the GUI thread from the first move on
        self.decode_ms = [r["decode_ms"]] if "decode_ms" in r else []
        self._slider_moved(self.slider.value())
        kind = "CT + RT" + self.legend(r["lm"]) if r["lm"].n_classes else "CT only"
        self.set_status(f"{kind} model, epoch {r['lm'].epoch} · |z0| = {np.linalg.norm(r['z0']):.3f}, "
                        f"|z1| = {np.linalg.norm(r['z1']):.3f} · filmstrip in {self.last_ms:.0f} ms")

    def t(self) -> float:
        return self.slider.value() / SLIDER_STEPS

    def _slider_moved(self, value: int) -> None:
        r = self.endpoints
        if r is None:
            return
        from training.explore.latent import code_at

        t = value / SLIDER_STEPS
        z = code_at(r["z0"], r["z1"], t, r["method"])
        slow = self.decode_ms and np.median(self.decode_ms[-5:]) > SYNC_LIMIT_MS
        if slow:
            self.slider_worker.submit(self._decode, r["lm"], z, t)
        else:
            self._show_decoded(*self._decode(r["lm"], z, t))

    def _decode(self, lm, z, t):
        from training.explore import latent as latent_views

        t0 = time.perf_counter()
        out = lm.decoder.decode(z)
        ms = (time.perf_counter() - t0) * 1000.0
        ct = latent_views.display_slice(out.ct[0], lm.spatial_dims)
        lab = None if out.labels is None else latent_views.display_slice(out.labels[0], lm.spatial_dims)
        shown = latent_views.display_rgb(ct, lab, lm.n_classes) if lab is not None else ct
        return z, t, out.ct[0], None if out.labels is None else out.labels[0], shown, ms

    def _show_decoded(self, z, t, ct, labels, shown, ms) -> None:
        self.decode_ms.append(ms)
        del self.decode_ms[:-50]  # the sync/async choice only looks at the last few
        self.current_code, self.current_image, self.current_labels = z, ct, labels
        self.image.set_image(shown)
        title = f"Decoded on the {self.endpoints['method']} path {self.path_text}"
        if self.image.plot.titleLabel.text != title:  # a new title re-lays out the plot: only when it changes
            self.image.set_title(title)
        mode = "worker thread" if self.decode_ms and np.median(self.decode_ms[-5:]) > SYNC_LIMIT_MS else "GUI thread"
        self.t_label.setText(f"t = {t:.3f} · decode {ms:.1f} ms ({mode})")

    # -- exports -------------------------------------------------------------------------
    def film_table(self):
        r = self.endpoints
        if r is None:
            return (["t"], [])
        film = r["film"]
        j = film.codes.shape[1]
        return (["step", "t"] + [f"z{k}" for k in range(j)],
                [[i, float(t), *film.codes[i].tolist()] for i, t in enumerate(film.t)])

    def _generated_current(self):
        if self.current_image is None:
            return None
        lab = None if self.current_labels is None else self.current_labels[None]
        return self.current_image[None], lab, f"interpolation_t{self.t():.3f}"

    def _generated_film(self):
        r = self.endpoints
        if r is None:
            return None
        return r["film"].images, r["film"].labels, "interpolation"

    def shutdown(self) -> None:
        self.slider_worker.shutdown()
        super().shutdown()


PANEL = InterpolationPanel
