"""Entry point of `ct-vae-explorer`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

SWITCH_INTERVAL_S = 0.001


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ct-vae-explorer",
        description="Drop CT scans (DICOM + RTSTRUCT), train a VAE on them and explore what it learned. "
                    "Without arguments the last workspace is reopened (or an empty one started).",
        epilog="Files live under the user data folder (platformdirs user_data_dir('ct-vae-explorer'); "
               "override with CT_VAE_EXPLORER_DATA_DIR).",
    )
    parser.add_argument("workspace", nargs="?", help="workspace file (.h5) to open or create")
    parser.add_argument("--demo", action="store_true",
                        help="build (or reuse) a phantom demo workspace and train a small model on it")
    return parser.parse_args(argv)


def create_app():
    """The QApplication (high-DPI scaling is on by default in Qt 6; keep fractional factors)."""
    from explorer.qt import Qt, QtGui, QtWidgets

    app = QtWidgets.QApplication.instance()
    if app is None:
        QtGui.QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
            Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QtWidgets.QApplication(sys.argv[:1])
    # Workers (ingest, training) run Python on other threads: the GUI thread waits up to
    # one switch interval for the interpreter lock each time it needs it, so keep that
    # short (5 ms by default) to keep the event loop on time.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app.setApplicationName("ct-vae-explorer")
    app.setApplicationDisplayName("CT VAE Explorer")
    app.setOrganizationName("ct-vae-explorer")
    from explorer.main_window import app_icon

    app.setWindowIcon(app_icon())
    return app


def build_window(args: argparse.Namespace):
    """Create the main window for parsed arguments (used by main() and the tests)."""
    from explorer.main_window import MainWindow
    from explorer.settings import AppSettings, default_workspace_path
    from explorer.state import AppState

    state = AppState(AppSettings())
    window = MainWindow(state)
    if args.demo:
        from explorer import demo

        window.show()
        demo.start_demo(window)
    elif args.workspace:
        window.open_workspace(Path(args.workspace).expanduser().resolve())
    else:
        last = state.settings.last_workspace
        window.open_workspace(last if last and last.exists() else default_workspace_path())
    return window


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app()
    window = build_window(args)
    window.show()
    _close_on_signals(window)
    _start_ingest_workers_server()
    warm_imports()
    return app.exec()


# What the first ingest imports (pydicom and its codecs, scipy.ndimage, h5py, the core's
# DICOM and store modules: ~370 modules, ~1 s on the 2-core box). Imported inside the
# ingest's worker thread they held the interpreter lock in C-extension initialisers and
# froze the window for 250–700 ms at the start of the first drop (benchmarks/README.md, GUI).
WARM_MODULES = ("pydicom", "scipy.ndimage", "h5py", "training.dicom", "training.dicom.rtstruct",
                "training.store.discover", "training.store.ingest", "training.store.preprocess")


def warm_imports(modules=WARM_MODULES):
    """Import `modules` on a background thread right after start-up, while the user has
    not dropped anything yet; the started thread (daemon)."""
    import importlib
    import threading

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # only a head start: the ingest imports what it needs itself
                logging.getLogger(__name__).debug("warm import of %s failed", name, exc_info=True)

    thread = threading.Thread(target=run, name="warm-imports", daemon=True)
    thread.start()
    return thread


def _start_ingest_workers_server() -> None:
    """The first drop of a session would otherwise wait ~0.5 s for the ingest pool's
    forkserver (the app has threads, so workers are not forked from it directly)."""
    from explorer.qt import QTimer

    def start():
        try:
            from training.store.ingest import start_worker_server

            start_worker_server()
        except Exception:  # only a head start: the ingest starts the server itself
            logging.getLogger(__name__).debug("worker server not started early", exc_info=True)

    QTimer.singleShot(0, start)


def _close_on_signals(window) -> None:
    """Ctrl+C / SIGTERM close the window like its close button (training stops at a checkpoint).

    Python runs signal handlers only between bytecodes, so a timer wakes the interpreter.
    """
    import signal

    from explorer.qt import QTimer

    def close(*_):
        QTimer.singleShot(0, window.close)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, close)
    timer = QTimer(window)
    timer.timeout.connect(lambda: None)
    timer.start(250)


if __name__ == "__main__":
    sys.exit(main())
