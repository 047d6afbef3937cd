"""Benchmarks: each bench_<name>.py prints one JSON line per figure; `python -m bench` runs them."""
