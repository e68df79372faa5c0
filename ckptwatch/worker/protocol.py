"""The pipe protocol between the daemon and a worker: one JSON object per line.

daemon -> worker (stdin):   {"id", "candidate", "previous", "previous_fingerprint", "golden",
                             "policy", "fingerprint_out", "threads", "model": {...} | null}
worker -> daemon (stdout):  {"type": "ready", "pid", "device"}
                            {"type": "heartbeat"}
                            {"type": "progress", "id", "tensor"}
                            {"type": "result", "id", "status": "ok" | "vanished" | "error",
                             "report": {...} | null, "fingerprint": path | null, "message": str,
                             "check": the finding's check id for an error (optional),
                             "exiting": true when the worker exits right after it (optional)}
The exit codes in RESERVED_EXITS stop restarts: the same start would fail the same
way. Any other exit (70 after a model check overran its timeout) is restarted.
"""

from __future__ import annotations

import json

EXIT_TF_IMPORT = 3
EXIT_DEVICE_MISSING = 4
EXIT_USAGE = 5
RESERVED_EXITS = {
    EXIT_TF_IMPORT: "TensorFlow could not be imported",
    EXIT_DEVICE_MISSING: "the configured device is missing",
    EXIT_USAGE: "bad worker arguments",
}


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode(line: bytes) -> dict:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message
