"""Synthetic truth: a vLLM scheduler twin and latency oracle that write real-format traces."""
