"""A client for a real `python -m ckptwatch.worker --device cpu`, spoken to over its pipes with the
daemon's protocol (ckptwatch.worker.protocol): the same process, messages and verification
sequence the daemon uses. Copied in spirit from tests/integration/test_one_sequence.py."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from bench.quality.runs import child_env
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.worker.protocol import Job, Ready, Result, decode_message, encode


class Worker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckptwatch.worker", "--device", "cpu", "--heartbeat", "30"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        t0 = time.perf_counter()
        msg = self._next()
        if not isinstance(msg, Ready):
            raise RuntimeError(f"the worker did not start: {msg}")
        self.start_seconds = time.perf_counter() - t0

    def _next(self):
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return None
        return decode_message(line)

    def verify(self, request: VerifyRequest) -> Result:
        """One job; a worker that died on it is restarted and the job reported as an error
        (the daemon would retry it, then give up with an error report)."""
        assert self.proc is not None and self.proc.stdin is not None
        job_id = uuid.uuid4().hex[:12]
        self.proc.stdin.write(encode(Job(job_id, request)))
        self.proc.stdin.flush()
        while True:
            msg = self._next()
            if msg is None:
                code = self.proc.wait()
                self.restarts += 1
                self.start()
                return Result(job_id, "error", message=f"the worker exited ({code}) while verifying it")
            if isinstance(msg, Result):
                if msg.exiting:
                    self.close()
                    self.start()
                return msg
            # Progress and Heartbeat messages: keep reading

    def close(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
