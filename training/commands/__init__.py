"""Subcommands of `ct-vae`; one module each, discovered by training.cli."""
