"""The worker process: the only place the daemon reads checkpoints (and, for
model-aware checks, imports TensorFlow). Started as a fresh interpreter
(`python -m ckptwatch.worker`), never forked: TF and CUDA are not fork-safe.
"""
