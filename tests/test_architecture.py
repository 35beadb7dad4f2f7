"""The headless core never imports Qt (DESIGN.md: 'training/ never imports Qt')."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6", "explorer")


def test_training_sources_import_no_qt():
    offenders = []
    for path in (ROOT / "training").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_importing_every_training_module_loads_no_qt():
    code = (
        "import importlib, pkgutil, sys, training\n"
        "for m in pkgutil.walk_packages(training.__path__, 'training.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in %r]\n"
        "assert not bad, bad\n" % (FORBIDDEN,)
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_help_works_for_every_subcommand():
    from training.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, subparser in sub.choices.items():
        assert subparser.format_help(), name


# The layers of training/, left to right; each may import only those to its left, plus
# the shared top-level modules. `commands` (the CLI) sits on top of all of them.
LAYERS = ("dicom", "store", "vae", "latent", "explore", "commands")
TOP_LEVEL = {"config", "atomic", "images", "__init__"}


def _training_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every `training.*` import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            # `from training.latent import encode` imports training.latent.encode
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return [(line, m) for line, m in found if m.split(".")[0] == "training"]


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _layer_violations(root: Path) -> list[str]:
    offenders = []
    for path in sorted((root / "training").rglob("*.py")):
        own = _layer_of(".".join(path.relative_to(root).with_suffix("").parts))
        if own is None:
            if path.stem in ("cli", "__main__"):  # the entry point loads the commands
                continue
            allowed = set()  # a top-level helper imports no layer
        else:
            allowed = set(LAYERS[: LAYERS.index(own) + 1])
        for line, module in _training_imports(path, root):
            parts = module.split(".")
            if len(parts) < 2 or parts[1] in TOP_LEVEL or parts[1] == "__version__":
                continue
            if _layer_of(module) not in allowed:
                offenders.append(f"{path.relative_to(root)}:{line} imports {module}")
    return offenders


def test_each_layer_imports_only_layers_to_its_left():
    offenders = _layer_violations(ROOT)
    assert not offenders, "\n".join(offenders)


def test_training_has_the_five_layer_packages_and_flat_helpers_only():
    flat = {p.stem for p in (ROOT / "training").glob("*.py")}
    assert flat == {"__init__", "__main__", "atomic", "cli", "config", "images"}, flat
    for layer in LAYERS:
        init = ROOT / "training" / layer / "__init__.py"
        assert init.exists(), layer
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{layer} says what it is"


def test_layer_rule_catches_upward_and_relative_imports(tmp_path):
    pkg = tmp_path / "training" / "dicom"
    pkg.mkdir(parents=True)
    (pkg / "ok.py").write_text("from training.config import ModelConfig\nfrom training.dicom import geometry\n")
    (pkg / "bad.py").write_text("from training.vae.model import VAE\n")
    (pkg / "rel.py").write_text("from ..store import workspace\n")
    (tmp_path / "training" / "atomic.py").write_text("import training.latent.encode\n")
    found = _layer_violations(tmp_path)
    assert found == [
        "training/atomic.py:1 imports training.latent.encode",
        "training/dicom/bad.py:1 imports training.vae.model.VAE",
        "training/dicom/rel.py:1 imports training.store.workspace",
    ], found


def test_explorer_sits_on_top_of_training():
    # training never imports explorer: test_training_sources_import_no_qt (FORBIDDEN)
    uses = [p for p in (ROOT / "explorer").rglob("*.py") if "from training" in p.read_text(encoding="utf-8")]
    assert uses, "explorer drives the core"
