"""The pipe protocol between the daemon and a worker: one JSON object per line, each a
typed message, encoded and decoded here and nowhere else.

    daemon -> worker (stdin)    Job        {"type": "job", "id", "request": VerifyRequest}
    worker -> daemon (stdout)   Ready      {"type": "ready", "pid", "device"}
                                Heartbeat  {"type": "heartbeat"}
                                Progress   {"type": "progress", "id", "tensor"}: about to read it
                                Result     {"type": "result", "id", "device", "status", "report",
                                            "fingerprint", "message", "check", "exiting"}

A Result's status: `ok` (report holds a ckptwatch.report/v1 document, fingerprint the file
written or null), `vanished` (the candidate was deleted while being verified: a skip, not a
verdict), `error` (it could not be verified: message says why, check names the finding the
daemon's error report gets). `exiting`: the worker leaves right after it (a model check overran
its timeout), so the daemon must not hand it another job.

The exit codes in RESERVED_EXITS stop restarts: the same start would fail the same way. Any
other exit (70 after a model check overran its timeout) is restarted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ckptwatch.verify.request import VerifyRequest

EXIT_TF_IMPORT = 3
EXIT_DEVICE_MISSING = 4
EXIT_USAGE = 5
EXIT_MODEL_TIMEOUT = 70  # after a model check overran: its thread cannot be stopped, so the process goes
RESERVED_EXITS = {
    EXIT_TF_IMPORT: "TensorFlow could not be imported",
    EXIT_DEVICE_MISSING: "the configured device is missing",
    EXIT_USAGE: "bad worker arguments",
}

Status = Literal["ok", "vanished", "error"]


class ProtocolError(ValueError):
    """A line that is not a message of this protocol."""


@dataclass(frozen=True)
class Job:
    id: str
    request: VerifyRequest


@dataclass(frozen=True)
class Ready:
    pid: int
    device: str


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class Progress:
    id: str
    tensor: str


@dataclass(frozen=True)
class Result:
    id: str | None
    status: Status
    device: str = ""
    report: dict[str, Any] | None = None
    fingerprint: str | None = None
    message: str = ""
    check: str | None = None
    exiting: bool = False


Message = Ready | Heartbeat | Progress | Result
_TYPES: dict[str, type] = {"job": Job, "ready": Ready, "heartbeat": Heartbeat, "progress": Progress, "result": Result}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode(message: Job | Message) -> bytes:
    if isinstance(message, Job):
        body: dict[str, Any] = {"id": message.id, "request": message.request.to_dict()}
    else:
        body = asdict(message)
    doc = {"type": _NAMES[type(message)], **body}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _object(line: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("not a JSON object")
    return doc


def decode_job(line: bytes) -> Job:
    doc = _object(line)
    if doc.get("type") != "job" or not isinstance(doc.get("id"), str):
        raise ProtocolError("not a job")
    try:
        return Job(doc["id"], VerifyRequest.from_dict(doc.get("request")))
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"bad request: {e}") from None


_FIELD_TYPES: dict[type, dict[str, tuple[type, ...]]] = {
    Ready: {"pid": (int,), "device": (str,)},
    Heartbeat: {},
    Progress: {"id": (str,), "tensor": (str,)},
    Result: {
        "id": (str, type(None)),
        "status": (str,),
        "device": (str,),
        "report": (dict, type(None)),
        "fingerprint": (str, type(None)),
        "message": (str,),
        "check": (str, type(None)),
        "exiting": (bool,),
    },
}


def decode_message(line: bytes) -> Message:
    """A worker's line as a message; ProtocolError for anything else."""
    doc = _object(line)
    cls = _TYPES.get(str(doc.pop("type", "")))
    if cls is None or cls is Job:
        raise ProtocolError("unknown message type")
    expected = _FIELD_TYPES[cls]
    for name, value in doc.items():
        if name not in expected or not isinstance(value, expected[name]):
            raise ProtocolError(f"{_NAMES[cls]}: bad field {name!r}")
    if cls is Result and doc.get("status") not in ("ok", "vanished", "error"):
        raise ProtocolError(f"result: bad status {doc.get('status')!r}")
    try:
        message: Message = cls(**doc)
        return message
    except TypeError as e:  # a required field is missing
        raise ProtocolError(f"{_NAMES[cls]}: {e}") from None
