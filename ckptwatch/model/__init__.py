"""Model-aware checks: restore the checkpoint into the model the job uses and run it.

    spec.py          ModelSpec, probe and golden-output files (numpy only)
    compare.py       the functional comparison, pure arithmetic
    safety.py        what in a .keras / SavedModel file would run code (refused)
    safety_graph.py  SavedModel safe mode: every op of its graphs and function library on an allow-list
    pure_ops.py      that allow-list (pure computation), and the ops allowed only in their place
    runtime.py       TensorFlow import and device set-up
    restore/         restore status and fidelity (object-graph matching, bundles, Keras files)
    checks.py        check_model(): all of it for one checkpoint; add_model_checks() merges into a Report

Everything but spec.py, compare.py and pure_ops.py imports TensorFlow (safety*.py only its
protobuf classes): only the worker and the CLI's child interpreter import this package's TF parts.
"""
