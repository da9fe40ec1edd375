"""Convergence checks, metrics, figures and the evaluation report."""
