"""Layer 5, explore: the plain arrays the explorer's tabs show (no Qt).

Entry points: `latent` (cached model loading, patient codes, manifold helpers),
`similarity` (patient similarity tables), `volume` (slice stacks and volume pairs),
`experiments` (the thesis' chapter-7 experiments, `ct-vae experiment`), `query` and
`query_report` (the answer to "find similar patients" and its CSV/PNG/PDF report).
"""
