"""Layer 4, latent analysis: what a trained model says about patients.

Entry points: `encode` (encode a workspace, patient posteriors, manifold, generation),
`similarity` (KL matrix, identification), `sampling` (prior and aggregate posterior
draws, interpolation, density), `export` (generated images/volumes as PNG, .npy, DICOM),
`query` (a new patient's posterior ranked against the cohort's).
"""
