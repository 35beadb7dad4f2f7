"""Layer 5, explore: the plain arrays the explorer's tabs show (no Qt).

Entry points: `latent` (cached model loading, patient codes, manifold helpers),
`similarity` (patient similarity tables), `volume` (slice stacks and volume pairs).
"""
