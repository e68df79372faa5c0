"""`ckptwatch demo`: the daemon watching a training run, with no configuration.

run_daemon_demo(serve=False)   (`ckptwatch demo`, what `make demo` runs) daemon_demo.py:
    a tiny Keras model trains and saves with CheckpointManager into a temp dir (child
    process) while the real daemon (real worker process, real HTTP server) watches it;
    one checkpoint is corrupted on disk and one holds NaN weights; a verdict table and
    the metrics URL are printed.
run_demo()                     (`ckptwatch demo --cli`) cli_demo.py: the same faults and
    more, through the one-shot `ckptwatch verify`, showing verdicts and exit codes.

checkpoints.py                 writes the checkpoints with TensorFlow, in a child process
                               (`python -m ckptwatch.demo.checkpoints`): this process stays TF-free.
"""

from ckptwatch.demo.cli_demo import run_demo
from ckptwatch.demo.daemon_demo import run_daemon_demo

__all__ = ["run_daemon_demo", "run_demo"]
