"""Tensor kinds: what a stored value is, so policies can treat them differently.

Plain strings in a module of their own, with no imports: the policy schema (loaded by the
daemon's main process) and every reader share them.
"""

WEIGHT = "weight"  # a model variable
OPTIMIZER = "optimizer"  # optimizer slots (m, v, ...) and optimizer state (iterations, lr)
METRIC = "metric"  # Keras metric accumulators
COUNTER = "counter"  # save_counter, global_step: change by design, never drift-checked
META = "meta"  # non-numeric entries: the object graph, strings; never compared

KINDS = (WEIGHT, OPTIMIZER, METRIC, COUNTER, META)
