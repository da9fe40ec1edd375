"""Fitting, saving/loading, predictive sampling and the simulator hand-off."""
