"""Entry point of `ct-vae-explorer`."""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ct-vae-explorer",
        description="Drop CT scans (DICOM + RTSTRUCT), train a VAE on them and explore what it learned.",
    )
    parser.add_argument("workspace", nargs="?", help="workspace file (.h5) to open")
    parser.add_argument("--demo", action="store_true", help="open (or build) the demo workspace and model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from PySide6.QtWidgets import QApplication, QMainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ct-vae-explorer")
    window = QMainWindow()
    window.setWindowTitle("ct-vae-explorer")
    window.resize(1280, 800)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
