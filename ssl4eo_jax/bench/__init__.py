"""Benchmarks (commands, not tests): ``python -m ssl4eo_jax.bench --what=augment|pipeline|step|e2e``.

Each prints a table of images/s with the machine it ran on and writes the same figures as JSON.
"""
