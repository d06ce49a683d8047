"""Thin Hydra entry points (console scripts); each calls a plain library function."""
