"""Headless core of ct-vae-explorer: DICOM ingestion, the VAE, training and latent analysis.

Nothing in this package imports Qt (tests/test_architecture.py enforces it), so every
piece runs from a terminal, a notebook or a cluster.
"""

__version__ = "0.1.0"
