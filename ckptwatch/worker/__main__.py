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

from ckptwatch.worker.protocol import EXIT_DEVICE_MISSING, EXIT_TF_IMPORT, EXIT_USAGE, decode, encode

MODEL_TIMEOUT_EXIT = 70  # after a model check overran: its thread cannot be stopped, so the process goes


class Channel:
    """Writes protocol lines to the real stdout; everything else printed goes to stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
        self._lock = threading.Lock()

    def send(self, message: dict) -> None:
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
        channel.send({"type": "heartbeat"})


def run_job(job: dict, channel: Channel, device: str) -> dict:
    from ckptwatch.errors import CheckpointNotFound, CkptwatchError
    from ckptwatch.formats import checkpoint_exists
    from ckptwatch.formats.fingerprint import write_fingerprint
    from ckptwatch.policy import Policy
    from ckptwatch.verify.engine import Options, verify_paths

    job_id, candidate = job["id"], job["candidate"]
    options = Options(threads=int(job.get("threads") or 2), sketch=bool(job.get("fingerprint_out")))
    options.progress = lambda tensor: channel.send({"type": "progress", "id": job_id, "tensor": tensor})
    result = {"type": "result", "id": job_id, "device": device, "report": None, "fingerprint": None, "message": ""}
    policy = Policy.model_validate(job.get("policy") or {})
    previous, fallback = job.get("previous"), job.get("previous_fingerprint")

    def previous_gone() -> bool:  # CheckpointManager deleted it after the job was handed out
        return bool(previous and fallback and previous != fallback and not checkpoint_exists(previous))

    try:
        try:
            report, prints = verify_paths(candidate, previous, job.get("golden"), policy, options)
        except CkptwatchError:
            if not previous_gone():
                raise
            report, prints = verify_paths(candidate, fallback, job.get("golden"), policy, options)
        else:
            touched_previous = any(
                f.reference == "previous" and f.check.startswith("integrity.") for f in report.findings
            )
            if touched_previous and previous_gone():  # deleted while we read it: compare with its fingerprint
                report, prints = verify_paths(candidate, fallback, job.get("golden"), policy, options)
    except CheckpointNotFound as e:
        vanished = not checkpoint_exists(candidate)
        return {**result, "status": "vanished" if vanished else "error", "message": str(e)}
    except CkptwatchError as e:
        return {**result, "status": "error", "message": str(e)}
    if report.verdict == "fail" and not checkpoint_exists(candidate):
        return {**result, "status": "vanished", "message": "deleted while being read"}
    if job.get("model"):
        from ckptwatch.model.checks import ModelTimeout, add_model_checks
        from ckptwatch.model.spec import ModelSpec

        spec = ModelSpec.from_dict(job["model"])
        assert spec is not None
        try:
            add_model_checks(report, candidate, job.get("golden"), spec, policy)
        except ModelTimeout as e:
            timeout = {"status": "error", "check": "functional.timeout", "message": str(e), "exiting": True}
            channel.send({**result, **timeout})
            os._exit(MODEL_TIMEOUT_EXIT)
        except CheckpointNotFound as e:
            if not checkpoint_exists(candidate):
                return {**result, "status": "vanished", "message": str(e)}
            return {**result, "status": "error", "message": str(e)}
        except CkptwatchError as e:
            return {**result, "status": "error", "check": "restore.error", "message": f"model-aware checks: {e}"}
    doc = report.to_dict()
    integrity_ok = not any(f["severity"] == "fail" and f["check"].startswith("integrity.") for f in doc["findings"])
    if job.get("fingerprint_out") and prints and integrity_ok:
        write_fingerprint(job["fingerprint_out"], report.checkpoint, prints)
        result["fingerprint"] = job["fingerprint_out"]
    return {**result, "status": "ok", "report": doc}


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
    channel.send({"type": "ready", "pid": os.getpid(), "device": args.device})
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            job = decode(line)
        except ValueError as e:
            channel.send({"type": "result", "id": None, "status": "error", "message": f"bad job: {e}"})
            continue
        try:
            channel.send(run_job(job, channel, args.device))
        except Exception as e:  # one bad job must not take the worker down
            failed = {"status": "error", "check": "integrity.worker", "message": f"{type(e).__name__}: {e}"}
            channel.send({"type": "result", "id": job.get("id"), **failed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
