"""Keep the log lines of TensorFlow, absl, oneDNN, CUDA stubs and Keras off the user's stderr.

    quiet_native_logs()   in a process about to import TensorFlow (the CLI's reading child,
                          a daemon worker), before it does

TensorFlow 2.21 writes its start-up lines through absl *before* absl is initialised ("All log
messages before absl::InitializeLog() is called are written to STDERR", oneDNN, cudart,
cpu_feature_guard): TF_CPP_MIN_LOG_LEVEL does not stop them. So, besides the environment
variables and Python's loggers and warnings, file descriptor 2 itself is pointed at /dev/null,
and Python's `sys.stderr` keeps the real one: ckptwatch's own lines (errors, `not fingerprinted`)
still reach the user, native code's do not. Findings are the channel for what matters; with
CKPTWATCH_VERBOSE=1 (`ckptwatch verify --verbose`) nothing is silenced.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "CKPTWATCH_VERBOSE"
_done = False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


def quiet_native_logs() -> None:
    """Silence TensorFlow's and Keras' own output in this process (once), unless verbose."""
    global _done
    if _done or verbose():
        return
    _done = True
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for name in ("tensorflow", "absl", "keras", "tf_keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.simplefilter("ignore")  # deprecation and structure warnings of TF/Keras; ours are findings
    _stderr_to_devnull()


def _stderr_to_devnull() -> None:
    try:
        sys.stderr.flush()
        real = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, AttributeError, ValueError):
        return  # no stderr to protect
    os.dup2(null, 2)
    os.close(null)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = open(real, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=True)  # noqa: SIM115
