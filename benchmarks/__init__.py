"""Benchmarks: model speed, preprocessing speed, the perf_analyzer suite and its report."""
