"""The review's study as a resumable grid of cells (``configs/benchmark.py``): ``grid`` expands a
preset into cells, ``driver`` runs them (sharing pre-trainings), ``figures`` draws the review's
figures and tables. (``ssl4eo_jax.bench`` is something else: speed benchmarks.)"""
