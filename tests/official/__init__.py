"""PyTorch re-implementations of the official SSL training steps, for the step-equivalence tests.

Each module mirrors one official repository's training logic (named in its docstring, file and
function) in plain PyTorch; ``harness`` runs our JAX ``train.update_step`` on the same weights and
fixed views so that the two can be compared after a few optimizer steps.
"""
