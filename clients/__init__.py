"""Triton clients: classify files, batch offline scoring."""
