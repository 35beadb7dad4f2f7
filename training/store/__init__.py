"""Layer 2, the store: the HDF5 workspace and how DICOM data gets into it.

Entry points: `workspace.Workspace` (open, read batches, patients), `ingest.ingest` and
`ingest.rederive` (discover → scan → load → rasterise → preprocess → commit), `preprocess`
(windowing, crop, resize), `scale` and `resample` (physical scale: mm spacing, field of
view, z grid), `discover` (every file of a drop accounted for), `pseudonym` and
`pseudonym_key` (scrubbing; the per-user key kept out of the workspace), `lock` (one
writer, stale locks recognised), `roles` (queries vs cohort), `units` (series vs
patients in counts). Imports only `training.dicom` and the top level.
"""
