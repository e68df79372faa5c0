"""What to verify, as plain data: built by the CLI from its options and by the daemon from
its config, carried to a worker over the pipe (ckptwatch.worker.protocol), and run by
`ckptwatch.verify.verification.verify_checkpoint`.

No numpy and no TensorFlow here: the daemon's main process builds requests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ckptwatch.policy import Policy

DEFAULT_THREADS = 2
DEFAULT_MODEL_TIMEOUT = 300.0


@dataclass(frozen=True)
class ModelSpec:
    """Model-aware checks to run: the factory, the probe batch, stored golden outputs."""

    factory: str | None = None  # "module:function"; None: the checkpoint carries its model (.keras, SavedModel)
    probe: str | None = None  # .npz with x (and y), or "module:function" returning them
    golden_outputs: str | None = None  # .npz of the golden model's outputs on the probe batch
    smoke_step: bool = False
    python_path: tuple[str, ...] = ()  # searched first for the factory's module
    timeout: float = DEFAULT_MODEL_TIMEOUT
    outputs_out: str | None = None  # CLI only (the daemon never writes): save the candidate's probe outputs

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "python_path": list(self.python_path)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelSpec | None:
        if not data:
            return None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["python_path"] = tuple(values.get("python_path") or ())
        return cls(**values)


@dataclass(frozen=True)
class VerifyRequest:
    """One verification: the candidate, its references, the policy, and what to produce."""

    candidate: str
    previous: str | None = None
    # Stands in for `previous` when CheckpointManager (max_to_keep) deletes it before or
    # while it is read: the daemon keeps a fingerprint of every checkpoint it verified.
    previous_fingerprint: str | None = None
    golden: str | None = None
    # False (the daemon): a golden that is not there (not mounted yet) is a warning and the
    # candidate is verified without it. True (the CLI): it is an error, exit 2.
    golden_required: bool = True
    policy: Policy = field(default_factory=Policy)
    model: ModelSpec | None = None
    # Where to write the candidate's fingerprint. Only a checkpoint that passed its integrity
    # checks is fingerprinted ("integrity"); `ckptwatch fingerprint` asks for a passing verdict.
    # The run's history of per-tensor change (ckptwatch.verify.history) to judge drift against: a
    # history file, or (CLI) a directory of the run's earlier checkpoints or fingerprints.
    history: str | None = None
    # True (the CLI): a history that cannot be read is an error. False (the daemon): a warning,
    # and the candidate is judged without it.
    history_required: bool = True
    # Where to write the history extended by this checkpoint, if it passes (pass or warn) and had
    # a previous: the daemon adopts it as the watch's history (ckptwatch.daemon.history).
    history_out: str | None = None
    fingerprint_out: str | None = None
    fingerprint_gate: Literal["integrity", "verdict"] = "integrity"
    # True (the daemon): the candidate was found complete, so a candidate that is gone now was
    # deleted (a skip, not a verdict) even if parts of it remain. False (the CLI): only one that
    # was there when the verification started and is gone at its end counts as deleted.
    discovered: bool = False
    threads: int = DEFAULT_THREADS
    # (the daemon) The candidate's files, held open by the daemon since its commit was seen: each
    # name (relative to the candidate's directory) -> a path that reopens the held file
    # ("/proc/<daemon pid>/fd/<n>"), or None where it is not held. The candidate is read through
    # them (ckptwatch.formats.held.stand_in), so CheckpointManager deleting it does not matter.
    held: dict[str, str | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("policy", "model")},
            "policy": self.policy.model_dump(),
            "model": self.model.to_dict() if self.model else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> VerifyRequest:
        """The inverse of to_dict; raises ValueError (or pydantic's, a ValueError) on bad data."""
        if not isinstance(data, dict) or not isinstance(data.get("candidate"), str):
            raise ValueError("a request needs a candidate path")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown request fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        values["policy"] = Policy.model_validate(data.get("policy") or {})
        values["model"] = ModelSpec.from_dict(data.get("model"))
        held = data.get("held")
        if held is not None and not (
            isinstance(held, dict)
            and all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in held.items())
        ):
            raise ValueError("held: a mapping of file names to paths (or null)")
        return cls(**values)
