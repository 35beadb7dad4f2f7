"""Shared fixtures.

Real DICOM data comes from ../shared/data through CT_VAE_TEST_DATA (set by .ci/run).
Where the variable is set, a missing file fails the test; where it is unset (a user's
checkout), tests that need it skip with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The pseudonym key of this test session (training/store/pseudonym_key.py): never the
# user's own key in ~/.config; subprocesses inherit it.
if "CT_VAE_KEY_FILE" not in os.environ:
    import tempfile

    os.environ["CT_VAE_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="ct-vae-key-"), "pseudonym.key")


def _data_root() -> Path | None:
    value = os.environ.get("CT_VAE_TEST_DATA")
    return Path(value) if value else None


@pytest.fixture
def test_data():
    """Return a function: test_data("dicom/lung1-001/image") -> Path (skips or fails)."""

    def get(relative: str) -> Path:
        root = _data_root()
        if root is None:
            pytest.skip("CT_VAE_TEST_DATA is not set: real DICOM data is not available here")
        path = root / relative
        if not path.exists():
            pytest.fail(f"CT_VAE_TEST_DATA is set but {path} is missing")
        return path

    return get
