"""Traces → one step dataset: parse OTLP traces, derive targets, make splits."""
