"""Benchmarks: each bench_*.py has run() -> rows; figures are ratios against the raw library in the same run."""
