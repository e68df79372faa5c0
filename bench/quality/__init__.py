"""The verdict-quality benchmark: `make bench-quality` (or `python -m bench.quality`).

How good are ckptwatch's verdicts on real training? Healthy runs are trained for real
(TensorFlow/Keras, small synthetic data, CPU), faults are injected into copies of their
checkpoints, and every checkpoint is verified through a real worker process
(`python -m ckptwatch.worker`) the way the daemon drives it: step by step, against the
watch's baseline ("previous"), with or without a golden.

    training.py   the healthy runs (models, optimizers, schedules, save plans)
    runs.py       the run registry, the cache under bench/out/quality/, ground truth of tensors
    faults.py     fault injection into copies: what each fault damages and which check should say so
    worker.py     a client for `python -m ckptwatch.worker` (the daemon's pipe protocol)
    evaluate.py   checkpoint-by-checkpoint verification with a baseline rule, scoring
    report.py     the confusion matrix, rates, the table and results.json

Training and fault generation run once in child processes (TensorFlow) and are cached under
bench/out/quality/<version>/; a re-run only re-verifies, so a change to the rules is
re-measured in about a minute.
"""
