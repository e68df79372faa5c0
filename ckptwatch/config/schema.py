"""The config file's schema: one pydantic model per section, validated strictly.

    Config          [daemon], [worker] and the [[watch]] tables
    DaemonConfig    [daemon]: listen address, state_dir, logging, timings, limits
    WorkerConfig    [worker]: devices (one worker each), threads, heartbeats, restarts
    Watch           [[watch]]: a directory, its golden, profile, globs, policy and model
    WatchPolicy     [watch.policy]: the keys of ckptwatch.policy.Policy except `profile`
    ModelConfig     [watch.model]: model-aware checks
    parse_listen    "HOST:PORT" / "[V6]:PORT" -> (host, port): the one listen-address parser

Validators raise one-line reasons; relative paths resolve against the config file's
directory (passed as `context={"base_dir": ...}`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ckptwatch.config.messages import quoted
from ckptwatch.policy import Policy

__all__ = [
    "Config",
    "DaemonConfig",
    "ModelConfig",
    "Watch",
    "WatchPolicy",
    "WorkerConfig",
    "parse_listen",
]

# -- validators shared by the daemon's sections -----------------------------------------------


def _fail(reason: str) -> PydanticCustomError:
    return PydanticCustomError("ckptwatch", "{reason}", {"reason": reason})


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """`~` expanded; a relative path is relative to the config file's directory."""
    if not value.strip():
        raise _fail("must not be empty")
    if "\x00" in value:
        raise _fail("must not contain a NUL character")
    path = os.path.expanduser(value)
    if path.startswith("~"):
        raise _fail(f"cannot expand {quoted(path.split(os.sep, 1)[0])}: no such user")
    if not os.path.isabs(path):
        base = (info.context or {}).get("base_dir") or os.getcwd()
        path = os.path.join(base, path)
    return os.path.normpath(path)


def _npz(value: str) -> str:
    if not value.endswith(".npz"):
        raise _fail(f"must be a .npz file (numpy.savez), got {quoted(os.path.basename(value))}")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); IPv6 in brackets: `[::1]:9847`. Raises ValueError."""
    m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", value)
    if m:
        host, port = m.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{quoted(host)} in brackets is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"{quoted(value)} is not HOST:PORT (e.g. 127.0.0.1:9847)")
        if ":" in host or "[" in host or "]" in host:
            raise ValueError(f"{quoted(value)}: an IPv6 address goes in brackets, e.g. [::1]:9847")
        if not host:
            raise ValueError(f"{quoted(value)} has no HOST: use 0.0.0.0 for every interface, or 127.0.0.1")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{quoted(host)} is not an IPv4 address") from None
        elif not re.fullmatch(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?", host):
            raise ValueError(f"{quoted(host)} is not a host name or an IP address")
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f"{quoted(port)} is not a port (0-65535)")
    return host, int(port)


def _check_listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as e:
        raise _fail(str(e)) from None
    return value


def _check_device(value: str) -> str:
    if value == "cpu":
        return value
    m = re.fullmatch(r"gpu:([0-9]+)", value)
    if not m:
        raise _fail(f'{quoted(value)} is not a device: use "cpu" or "gpu:N"')
    return f"gpu:{int(m.group(1))}"


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise _fail(f"{quoted(value)}: use only letters, digits, '_', '.' and '-' (it is a metric label)")
    return value


def _check_glob(value: str) -> str:
    if not value:
        raise _fail("an empty glob matches nothing")
    if "/" in value or os.sep in value:
        raise _fail(f'{quoted(value)}: globs match checkpoint names (e.g. "ckpt-*"), not paths')
    return value


def _check_factory(value: str) -> str:
    module, sep, attr = value.partition(":")
    ok = sep and all(p.isidentifier() for p in module.split(".")) and all(p.isidentifier() for p in attr.split("."))
    if not ok:
        raise _fail(f'{quoted(value)} is not "module:function" (e.g. "mypkg.models:build")')
    return value


def _octal(value: Any) -> Any:
    """A file mode: an integer (TOML 0o644) or an octal string ("0644", "644", "0o644"), 0..0o777."""
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise _fail(f'{quoted(value)} is not an octal file mode (e.g. "0644")')
        value = int(text, 8)
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 0o777:
        raise _fail(f"{value:#o} is not a file mode (0 to 0o777)")
    return value


def _empty_none(value: Any) -> Any:
    return None if value == "" else value


Lower = BeforeValidator(_lower)
PathStr = Annotated[str, AfterValidator(_resolve_path)]
NpzPath = Annotated[str, AfterValidator(_resolve_path), AfterValidator(_npz)]
Device = Annotated[str, Lower, AfterValidator(_check_device)]
Glob = Annotated[str, AfterValidator(_check_glob)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# -- the daemon's config ----------------------------------------------------------------------


class DaemonConfig(_Section):
    listen: Annotated[str, AfterValidator(_check_listen)] = Field(
        "127.0.0.1:9847", description="HOST:PORT of /metrics and the other endpoints; IPv6 as [::1]:9847"
    )
    state_dir: PathStr = Field("/var/lib/ckptwatch", description="SQLite state; never inside a watched directory")
    log_format: Annotated[Literal["auto", "json", "console"], Lower] = Field(
        "auto", description="auto: json when stdout is not a TTY"
    )
    log_level: Annotated[Literal["debug", "info", "warning", "error", "critical"], Lower] = "info"
    observer: Annotated[Literal["auto", "inotify", "polling"], Lower] = Field(
        "auto", description="auto: inotify where the platform has it, else polling"
    )
    poll_interval: float = Field(
        1.0, gt=0, description="seconds: polling observer period, and how often every watch directory is rescanned"
    )
    settle_seconds: float = Field(
        2.0, ge=0, description="seconds an HDF5/.keras file must stay unchanged after close to count as complete"
    )
    top_k_tensors: int = Field(10, ge=0, le=100, description="per-tensor drift metrics for the K worst tensors")
    queue_limit: int = Field(8, ge=1, description="per watch; older pending checkpoints are skipped as coalesced")
    hold_files: bool = Field(
        True,
        description="hold a checkpoint's files open from its commit to its verdict, so that one deleted "
        "meanwhile (CheckpointManager max_to_keep) is still verified",
    )
    job_timeout: float = Field(900.0, gt=0, description="seconds one verification may take before its worker is killed")
    max_attempts: int = Field(3, ge=1, description="tries per checkpoint when its worker dies")
    reports_kept: int = Field(10000, ge=1, description="reports kept in the SQLite state (oldest pruned)")
    state_backlog: int = Field(
        100,
        ge=1,
        description="per watch: records (reports, skips) kept in memory while the state cannot be written; "
        "the oldest beyond are dropped (and counted as lost)",
    )
    state_retry_max: float = Field(
        10.0, gt=0, description="seconds: longest wait between retries while the state cannot be written"
    )
    liveness_timeout: float = Field(
        30.0, gt=0, description="seconds without a turn of the main loop before /livez answers 503"
    )
    web_config_file: Annotated[PathStr | None, BeforeValidator(_empty_none)] = Field(
        None,
        description="exporter-toolkit web config (YAML): TLS (tls_server_config) and basic auth "
        "(basic_auth_users, bcrypt hashes) for every endpoint; also --web.config.file",
    )
    drain_seconds: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="on SIGTERM: seconds the verifications in flight may take to finish (and be recorded) "
        "before they are aborted; fit it in the pod's terminationGracePeriodSeconds / TimeoutStopSec "
        "(leave ~5 s for the rest of the shutdown); 0 aborts at once",
    )
    termination_log: Annotated[PathStr | None, BeforeValidator(_empty_none)] = Field(
        "/dev/termination-log",
        description="where the final summary is written on exit when the file exists (Kubernetes' "
        "terminationMessagePath); empty or unset: nowhere",
    )

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class WorkerConfig(_Section):
    devices: list[Device] = Field(
        default_factory=lambda: ["cpu"], min_length=1, description='one worker each: "cpu" or "gpu:N"; no duplicates'
    )
    threads: int = Field(2, ge=1, le=256, description="tensors read in parallel per worker")
    memory_limit_mb: int | None = Field(None, gt=0, description="GPU memory cap for TF in model-aware checks")
    heartbeat_interval: float = Field(2.0, gt=0, description="seconds between a worker's heartbeats")
    heartbeat_timeout: float = Field(
        30.0, gt=0, validate_default=True, description="seconds without a heartbeat before a worker is restarted"
    )
    restart_backoff: float = Field(1.0, gt=0, description="seconds before the first restart; doubles each time")
    restart_backoff_max: float = Field(60.0, gt=0, validate_default=True)

    @field_validator("heartbeat_timeout")
    @classmethod
    def _timeout_after_interval(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and value <= interval:
            raise _fail(f"must be greater than heartbeat_interval ({interval:g})")
        return value

    @field_validator("restart_backoff_max")
    @classmethod
    def _max_after_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("restart_backoff")
        if initial is not None and value < initial:
            raise _fail(f"must be at least restart_backoff ({initial:g})")
        return value


class ModelConfig(_Section):
    """`[watch.model]`: model-aware checks (restore status, functional probe)."""

    factory: Annotated[str, AfterValidator(_check_factory)] | None = Field(
        None,
        description='"module:function" returning a Keras model, a tf.Module, or a dict like the job\'s '
        "tf.train.Checkpoint(**objects); not needed for .keras files, full-model .h5 files and SavedModels "
        "(loaded in safe mode)",
    )
    probe: NpzPath | None = Field(None, validate_default=True, description="arrays x (and optional y)")
    smoke_step: bool = Field(False, description="also run one training step on the probe batch")
    golden_outputs: NpzPath | None = Field(
        None, validate_default=True, description="outputs of the golden model on the probe batch"
    )

    python_path: list[PathStr] = Field(default_factory=list, description="directories searched for the factory")
    timeout: float = Field(300.0, gt=0, description="seconds the model-aware checks of one checkpoint may take")

    @field_validator("probe")
    @classmethod
    def _factory_or_probe(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("factory") is None and "factory" in info.data:
            raise _fail(
                "give a factory, a probe, or both (a .keras file, a full-model .h5 or a SavedModel needs no factory)"
            )
        return value

    def spec(self) -> dict:
        """What the worker gets (ckptwatch.model.spec.ModelSpec as a dict)."""
        return self.model_dump()

    @field_validator("golden_outputs")
    @classmethod
    def _needs_probe(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "probe" in info.data and info.data["probe"] is None:
            raise _fail("needs probe (the batch these outputs answer)")
        return value


# `[watch.policy]`: every key of Policy except `profile`, which is set on the watch. A schema of
# its own (not a Policy subclass), so that it cannot be handed to the verifier by mistake: the
# verifier gets `Watch.policy_model()`, the full Policy with the watch's profile.
WatchPolicy = create_model(  # type: ignore[call-overload]  # fields built at run time: no overload fits
    "WatchPolicy",
    __config__=ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False),
    **{name: (f.annotation, f) for name, f in Policy.model_fields.items() if name != "profile"},
)


class Watch(_Section):
    name: Annotated[str, AfterValidator(_check_name)] = Field(description="unique; the `watch` metric label")
    path: PathStr = Field(description="the directory a training job writes checkpoints to (read only)")
    profile: Annotated[Literal["training", "replica"], Lower] = "training"
    golden: PathStr | None = Field(None, validate_default=True, description="checkpoint or fingerprint file")
    publish_dir: PathStr | None = Field(None, description="where `checkpoint` names the newest passing checkpoint")
    publish_mode: Annotated[int, BeforeValidator(_octal)] = Field(
        0o644,
        description='file mode of publish_dir/checkpoint (octal: 0o644 or "0644"); readable by the trainer '
        "or server that follows it, which runs as another user",
    )
    include: list[Glob] = Field(default_factory=lambda: ["*"], min_length=1, description="globs on checkpoint names")
    exclude: list[Glob] = Field(default_factory=list, description="globs on checkpoint names")
    policy: WatchPolicy | None = None
    model: ModelConfig | None = None
    retired: bool = Field(
        False,
        description="a finished run: not watched, no alerts, its history kept (also `ckptwatch retire WATCH`)",
    )
    stall_intervals: float = Field(
        3.0,
        gt=1,
        description="CkptwatchRunStoppedSaving fires when no checkpoint arrived for this many of the run's own "
        'save intervals (exported as ckptwatch_policy_threshold{threshold="stall_intervals"})',
    )

    @field_validator("golden")
    @classmethod
    def _replica_needs_golden(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("profile") == "replica":
            raise _fail('required with profile = "replica" (every value is compared to golden)')
        return value

    def policy_model(self) -> Policy:
        """The full Policy of this watch: its policy table (or the defaults) with its profile."""
        values = self.policy.model_dump() if self.policy else {}
        return Policy.model_validate({**values, "profile": self.profile})

    def wants(self, checkpoint: str) -> bool:
        """Whether the include/exclude globs select this checkpoint. Globs match its name: the
        prefix's base name for a TF bundle (`ckpt-3`), the file name for `.h5` / `.keras`, the
        directory name for a SavedModel (`3` for `export/3`)."""
        name = os.path.basename(checkpoint.rstrip(os.sep))
        return any(fnmatch.fnmatchcase(name, g) for g in self.include) and not any(
            fnmatch.fnmatchcase(name, g) for g in self.exclude
        )


class Config(_Section):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False, populate_by_name=True)

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    watches: list[Watch] = Field(alias="watch", min_length=1)

    _source: str = PrivateAttr("")
    _overridden: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """Absolute path of the config file."""
        return self._source

    @property
    def overridden(self) -> dict[str, str]:
        """Key path -> the variable or flag that set it (`{"daemon.listen": "CKPTWATCH_LISTEN"}`)."""
        return dict(self._overridden)

    def watch(self, name: str) -> Watch:
        for w in self.watches:
            if w.name == name:
                return w
        raise KeyError(f"no watch named {name!r}")
