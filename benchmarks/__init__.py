"""Benchmarks: each prints a table; run by hand as root (benchmarks/<name>)."""
