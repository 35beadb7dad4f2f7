"""Layer 2, the store: the HDF5 workspace and how DICOM data gets into it.

Entry points: `workspace.Workspace` (open, read batches, patients), `ingest.ingest` and
`ingest.rederive` (scan → load → rasterise → preprocess → commit), `preprocess`
(windowing, crop, resize), `pseudonym`. Imports only `training.dicom` and the top level.
"""
