"""The ``steptime`` command: wires data_prep, models, inference and diagnostics together."""
