"""`python -m ckptwatch.worker --device cpu|gpu:N`: verify jobs read from stdin.

The supervisor pins the device through the environment before starting us
(CUDA_VISIBLE_DEVICES, TF_FORCE_GPU_ALLOW_GROWTH); we check it exists, answer
`ready`, then loop: one job in, progress and one result out, heartbeats all
along. We exit when stdin closes or the daemon that started us is gone.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from ckptwatch.worker.protocol import (
    EXIT_DEVICE_MISSING,
    EXIT_MODEL_TIMEOUT,
    EXIT_TF_IMPORT,
    EXIT_USAGE,
    Heartbeat,
    Job,
    Message,
    Progress,
    ProtocolError,
    Ready,
    Result,
    decode_job,
    encode,
)


class Channel:
    """Writes protocol lines to the real stdout; everything else printed goes to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        data = encode(message)
        with self._lock:
            try:
                self._out.write(data)
            except (BrokenPipeError, OSError):
                os._exit(0)  # the daemon is gone


def device_present(device: str) -> bool:
    if device == "cpu":
        return True
    index = int(device.split(":", 1)[1])
    return os.path.exists(f"/dev/nvidia{index}") or os.path.isdir(f"/proc/driver/nvidia/gpus/{index}")


def _heartbeat(channel: Channel, interval: float, parent: int) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(0)  # orphaned: the daemon died without closing our stdin
        channel.send(Heartbeat())


def run_job(job: Job, channel: Channel, device: str) -> Result:
    """Verify one job the way `ckptwatch verify` does (one sequence), as a Result."""
    from ckptwatch.errors import CheckpointVanished, CkptwatchError, ModelChecksError, ModelTimeout
    from ckptwatch.verify.verification import verify_checkpoint

    def progress(tensor: str) -> None:
        channel.send(Progress(job.id, tensor))

    model_checks = None
    if job.request.model is not None:
        from ckptwatch.model.checks import add_model_checks

        model_checks = add_model_checks
    try:
        done = verify_checkpoint(job.request, progress, model_checks)
    except CheckpointVanished as e:
        return Result(job.id, "vanished", device, message=str(e))
    except ModelTimeout as e:
        channel.send(Result(job.id, "error", device, message=str(e), check=e.check, exiting=True))
        os._exit(EXIT_MODEL_TIMEOUT)
    except ModelChecksError as e:
        return Result(job.id, "error", device, message=f"model-aware checks: {e}", check=e.check)
    except CkptwatchError as e:
        return Result(job.id, "error", device, message=str(e))
    return Result(job.id, "ok", device, report=done.report.to_dict(), fingerprint=done.fingerprint)


def warm_up() -> None:
    """Import the engine and load the compiled kernels before saying `ready`, so a
    job starts reading at once."""
    import numpy as np

    import ckptwatch.formats.hdf5
    import ckptwatch.formats.keras_archive
    import ckptwatch.verify.engine  # noqa: F401 - imported now so the first job does not pay for it
    from ckptwatch.verify.drift import PairSums
    from ckptwatch.verify.stats import StatsAccumulator

    for dtype in (np.float32, np.float64):
        x = np.arange(4, dtype=dtype)
        StatsAccumulator().update(x)
        PairSums().update(x, x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckptwatch.worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--tensorflow", action="store_true", help="import TensorFlow now (model-aware checks)")
    try:
        args = parser.parse_args(argv)
        if args.device != "cpu" and not args.device.startswith("gpu:"):
            raise ValueError(args.device)
    except (SystemExit, ValueError):
        return EXIT_USAGE
    from ckptwatch.quiet import quiet_native_logs

    quiet_native_logs()  # TensorFlow's own log lines stay off the daemon's log (CKPTWATCH_VERBOSE=1 keeps them)
    if not device_present(args.device):
        print(f"ckptwatch worker: device {args.device} is missing", file=sys.stderr)
        return EXIT_DEVICE_MISSING
    warm_up()
    if args.tensorflow:
        from ckptwatch.model.runtime import TensorflowUnavailable, tensorflow

        try:
            tensorflow()
        except TensorflowUnavailable as e:
            print(f"ckptwatch worker: {e}", file=sys.stderr)
            return EXIT_TF_IMPORT
    channel = Channel()
    parent = os.getppid()
    threading.Thread(target=_heartbeat, args=(channel, args.heartbeat, parent), daemon=True).start()
    channel.send(Ready(os.getpid(), args.device))
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            job = decode_job(line)
        except ProtocolError as e:
            channel.send(Result(None, "error", args.device, message=f"bad job: {e}"))
            continue
        try:
            channel.send(run_job(job, channel, args.device))
        except Exception as e:  # one bad job must not take the worker down
            message = f"{type(e).__name__}: {e}"
            channel.send(Result(job.id, "error", args.device, message=message, check="integrity.worker"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
