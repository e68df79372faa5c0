"""Model-aware checks: restore the checkpoint into the model the job uses and run it.

    spec.py      ModelSpec, probe and golden-output files (numpy only)
    compare.py   the functional comparison, pure arithmetic
    safety.py    what in a .keras / SavedModel file would run code (refused)
    runtime.py   TensorFlow import and device set-up
    restore/     restore status and fidelity (object-graph matching, bundles, Keras files)
    checks.py    check_model(): all of it for one checkpoint; add_model_checks() merges into a Report

Everything but spec.py and compare.py imports TensorFlow: only the worker and the
CLI's child interpreter import this package's TF parts.
"""
