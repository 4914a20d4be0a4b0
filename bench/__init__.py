"""Benchmark of the CRS CDS services: latency, scaling and memory (`python -m bench`)."""
