"""Basis functions, baselines and the hierarchical PyMC step-time model."""
