"""Speed and quality benchmarks, each run from the repository root as ``python -m benchmarks.NAME``.

``benchmarks.harness`` starts real servers, for these benchmarks and for the end-to-end tests.
"""
