"""The Qt application of ct-vae-explorer. Shows and drives training/; computes nothing
a script would also want (that belongs in training/)."""
