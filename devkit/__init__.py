"""Development scaffolding for tests, the demo and the benchmarks; never installed.

Real servers and release repositories on loopback, a scripted fake agent, process helpers.
Product packages never import this package (tests/common/test_imports.py checks it).
"""
