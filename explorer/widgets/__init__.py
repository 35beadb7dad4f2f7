"""Reusable widgets of the explorer (no computing: they show arrays they are given)."""
