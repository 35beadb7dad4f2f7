"""Refresh the screenshots in docs/ from the demo (phantom cohort, small model).

    Xvfb :16 -screen 0 1600x1000x24 &
    DISPLAY=:16 CT_VAE_EXPLORER_DATA_DIR=/tmp/shots python docs/screenshots.py [OUT_DIR]

Uses its own user data folder (CT_VAE_EXPLORER_DATA_DIR) so the real one is untouched;
a second run reuses the demo's cohort and workspace and retrains the model from scratch
(the Train screenshot shows a run under way). Each shot is the whole window (1320 × 820).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
TABS = {"Manifold": "panel-manifold", "Interpolation": "panel-interpolation", "Samples": "panel-samples",
        "Density": "panel-density", "Volume": "panel-volume", "Similarity": "panel-similarity"}


def wait(app, seconds: float, until=None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until and until()):
        app.processEvents()
        time.sleep(0.02)


def shot(app, window, name: str) -> None:
    wait(app, 0.3)
    path = OUT / f"screenshot-{name}.png"
    window.grab().save(str(path))
    print("wrote", path)


def main() -> int:
    if "CT_VAE_EXPLORER_DATA_DIR" not in os.environ:
        print("set CT_VAE_EXPLORER_DATA_DIR to a scratch folder", file=sys.stderr)
        return 2
    from explorer import demo
    from explorer.app import create_app
    from explorer.main_window import MainWindow
    from explorer.settings import AppSettings
    from explorer.state import AppState

    shutil.rmtree(demo.demo_run_dir(), ignore_errors=True)  # train again: a run under way
    app = create_app()
    w = MainWindow(AppState(AppSettings()), restore=False)
    w.setProperty("quiet", True)
    w.resize(1320, 820)
    w.show()
    demo.start_demo(w)
    trainer = w.panel("Train")
    wait(app, 600, lambda: trainer.plot.points("train", "total") >= 8)
    shot(app, w, "train")
    wait(app, 900, lambda: not trainer.is_training())
    w.state.select_patient(w.patient_list.pseudonyms()[0])
    w.tabs.setCurrentWidget(w.panel("Data"))
    wait(app, 20, lambda: w.panel("Data").preview_count > 0)
    shot(app, w, "data")
    for title, name in TABS.items():
        panel = w.panel(title)
        if panel is None:
            continue
        w.tabs.setCurrentWidget(panel)
        wait(app, 15)
        shot(app, w, name)
    similarity = w.panel("Similarity")
    if similarity is not None and hasattr(similarity, "views"):
        w.tabs.setCurrentWidget(similarity)
        similarity.views.setCurrentIndex(1)  # the heat map
        wait(app, 5)
        shot(app, w, "panel-similarity-heatmap")
        similarity.views.setCurrentIndex(0)
    manifold = w.panel("Manifold")
    mode = getattr(manifold, "layout_mode", None)
    if mode is not None and mode.findData("quantile") >= 0:
        w.tabs.setCurrentWidget(manifold)
        mode.setCurrentIndex(mode.findData("quantile"))
        wait(app, 15)
        shot(app, w, "panel-manifold-tiled")
    w.tabs.setCurrentWidget(w.panel("Data"))
    w.drop_overlay.show_for(2)
    shot(app, w, "drop")
    w.drop_overlay.hide()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
