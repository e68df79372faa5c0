"""Benchmarks (see bench/README.md). A package so that `python -m bench.quality` runs."""
