"""Configuration files -> validated objects, with errors that name the key.

pydantic does the validation; every error becomes ONE line naming the file, the
key path (list items by index, dotted: `watch.1.name`) and the reason:

    ckptwatch.toml: watch.0.policy.max_jump: Input should be greater than or equal to 0
    ckptwatch.toml: worker.devices.0 (from CKPTWATCH_DEVICES): "tpu:0" is not a device: use "cpu" or "gpu:N"

    load_config(path, env=None) -> Config      the daemon's TOML file (+ CKPTWATCH_* environment)
    override_daemon(config, updates) -> Config  command-line flags of `ckptwatch watch` on top
    describe(config) -> str                    one-line summary for `check-config`
    changes(old, new) -> list[str]             what a reload changes, as key paths
    load_policy(path) -> Policy                a policy file for `verify --policy`

Precedence: CLI flags > CKPTWATCH_* environment variables > the file > defaults;
every value is validated the same way whatever its origin, and an error in an
override names the variable or flag it came from.

This module is imported by the daemon's main process, which must stay small: it
must not import numpy, TensorFlow, numba. The `Policy` schema it validates lives in
`ckptwatch.policy`; `ckptwatch.verify.rules` holds the logic that evaluates it.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ckptwatch.errors import UsageError
from ckptwatch.policy import Override, Policy

__all__ = [
    "ENV_OVERRIDES",
    "Config",
    "DaemonConfig",
    "ModelConfig",
    "Override",
    "Policy",
    "Watch",
    "WatchPolicy",
    "WorkerConfig",
    "changes",
    "describe",
    "describe_validation_error",
    "load_config",
    "load_policy",
    "override_daemon",
    "parse_listen",
    "read_toml",
    "validate",
]

# -- validators shared by the daemon's sections -----------------------------------------------


def _fail(reason: str) -> PydanticCustomError:
    return PydanticCustomError("ckptwatch", "{reason}", {"reason": reason})


def _quoted(value: object) -> str:
    text = str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
        raise _fail(f"cannot expand {_quoted(path.split(os.sep, 1)[0])}: no such user")
    if not os.path.isabs(path):
        base = (info.context or {}).get("base_dir") or os.getcwd()
        path = os.path.join(base, path)
    return os.path.normpath(path)


def _npz(value: str) -> str:
    if not value.endswith(".npz"):
        raise _fail(f"must be a .npz file (numpy.savez), got {_quoted(os.path.basename(value))}")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); IPv6 in brackets: `[::1]:9847`. Raises ValueError."""
    m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", value)
    if m:
        host, port = m.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_quoted(host)} in brackets is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"{_quoted(value)} is not HOST:PORT (e.g. 127.0.0.1:9847)")
        if ":" in host or "[" in host or "]" in host:
            raise ValueError(f"{_quoted(value)}: an IPv6 address goes in brackets, e.g. [::1]:9847")
        if not host:
            raise ValueError(f"{_quoted(value)} has no HOST: use 0.0.0.0 for every interface, or 127.0.0.1")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{_quoted(host)} is not an IPv4 address") from None
        elif not re.fullmatch(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?", host):
            raise ValueError(f"{_quoted(host)} is not a host name or an IP address")
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f"{_quoted(port)} is not a port (0-65535)")
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
        raise _fail(f'{_quoted(value)} is not a device: use "cpu" or "gpu:N"')
    return f"gpu:{int(m.group(1))}"


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise _fail(f"{_quoted(value)}: use only letters, digits, '_', '.' and '-' (it is a metric label)")
    return value


def _check_glob(value: str) -> str:
    if not value:
        raise _fail("an empty glob matches nothing")
    if "/" in value or os.sep in value:
        raise _fail(f'{_quoted(value)}: globs match checkpoint names (e.g. "ckpt-*"), not paths')
    return value


def _check_factory(value: str) -> str:
    module, sep, attr = value.partition(":")
    ok = sep and all(p.isidentifier() for p in module.split(".")) and all(p.isidentifier() for p in attr.split("."))
    if not ok:
        raise _fail(f'{_quoted(value)} is not "module:function" (e.g. "mypkg.models:build")')
    return value


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
    job_timeout: float = Field(900.0, gt=0, description="seconds one verification may take before its worker is killed")
    max_attempts: int = Field(3, ge=1, description="tries per checkpoint when its worker dies")
    reports_kept: int = Field(10000, ge=1, description="reports kept in the SQLite state (oldest pruned)")

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
WatchPolicy = create_model(
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
    include: list[Glob] = Field(default_factory=lambda: ["*"], min_length=1, description="globs on checkpoint names")
    exclude: list[Glob] = Field(default_factory=list, description="globs on checkpoint names")
    policy: WatchPolicy | None = None  # type: ignore[valid-type]
    model: ModelConfig | None = None

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


# -- overrides --------------------------------------------------------------------------------

ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CKPTWATCH_LISTEN": ("daemon", "listen"),
    "CKPTWATCH_STATE_DIR": ("daemon", "state_dir"),
    "CKPTWATCH_LOG_FORMAT": ("daemon", "log_format"),
    "CKPTWATCH_LOG_LEVEL": ("daemon", "log_level"),
    "CKPTWATCH_OBSERVER": ("daemon", "observer"),
    "CKPTWATCH_DEVICES": ("worker", "devices"),  # comma-separated: "gpu:0,gpu:1"
}
_PATH_KEYS = {("daemon", "state_dir")}  # relative values from the environment or a flag: to the working directory


def _apply(data: dict, key: tuple[str, str], value: str, label: str, notes: dict[tuple, str]) -> None:
    section, field = key
    if not isinstance(data.get(section, {}), dict):
        return  # the file's own error (`daemon = 3`) is reported
    if key == ("worker", "devices"):
        parsed: object = [d.strip() for d in value.split(",")]
    elif key in _PATH_KEYS:
        parsed = os.path.abspath(os.path.expanduser(value))
    else:
        parsed = value
    data[section] = {**data.get(section, {}), field: parsed}
    notes[key] = label


# -- errors -----------------------------------------------------------------------------------

_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (dict, "table"), (list, "array"))


def _got(value: object) -> str:
    kind = next((n for t, n in _TOML_TYPES if isinstance(value, t)), type(value).__name__)
    if isinstance(value, str):
        return f"{kind} {_quoted(value)}"
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{kind} {value!r}"
    return kind


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else None
        else:
            return tp


def _keys_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys a table at `loc` accepts (for "did you mean"), or []."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or n): f for n, f in tp.model_fields.items()}
            tp = fields[part].annotation if part in fields else None
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _reason(e: dict, model: type[BaseModel] | None) -> str:
    kind, loc = e["type"], tuple(e["loc"])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _keys_at(model, loc[:-1]), n=1)
        if len(loc) == 4 and loc[0] == "watch" and loc[2:] == ("policy", "profile"):
            return "set profile on the watch itself ([[watch]] profile = ...), not in its policy table"
        return "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    if loc == ("watch",) and kind in ("missing", "too_short"):
        return "at least one [[watch]] table is required"
    if loc == ("watch",) and kind == "list_type" and isinstance(e.get("input"), dict):
        return "write [[watch]] (an array of tables), not [watch]"
    if kind in ("model_type", "dict_type"):
        return f"must be a table (got {_got(e.get('input'))})"
    if kind == "list_type":
        return f"must be an array (got {_got(e.get('input'))})"
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short" and (e.get("ctx") or {}).get("min_length") == 1:
        return "must not be empty"
    msg = e["msg"]
    if kind.endswith("_type") or kind.endswith("_parsing") or kind in ("literal_error", "finite_number"):
        msg += f" (got {_got(e.get('input'))})"
    return msg


def _loc_text(loc: tuple, prefix: str = "") -> str:
    return ".".join(str(p) for p in (prefix, *loc) if p != "") or "(top level)"


def _one_line(source: str, problems: list[tuple[tuple, str]], prefix: str = "", notes: Mapping | None = None) -> str:
    lines = []
    for loc, reason in problems:
        where = _loc_text(loc, prefix)
        origin = next((label for key, label in (notes or {}).items() if tuple(loc[: len(key)]) == key), None)
        if origin:
            where += f" (from {origin})"
        lines.append(f"{where}: {reason}")
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return " ".join(f"{source}: {lines[0]}{more}".split())  # one line, whatever a value held


def describe_validation_error(
    error: ValidationError,
    source: str,
    prefix: str = "",
    model: type[BaseModel] | None = None,
    notes: Mapping[tuple, str] | None = None,
) -> str:
    """One line: `SOURCE: key.path: reason (and N more)`. `model` (the validated class) lets
    an unknown key suggest a close known one; `notes` maps key paths to where a value came
    from (`{("daemon", "listen"): "CKPTWATCH_LISTEN"}`)."""
    problems = [(tuple(e["loc"]), _reason(e, model)) for e in error.errors()]
    return _one_line(source, problems, prefix, notes)


# -- files ------------------------------------------------------------------------------------


def read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a TOML file") from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: invalid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        m = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(e), re.S)
        if m:
            raise UsageError(f"{path}: line {m[2]}, column {m[3]}: invalid TOML: {m[1]}") from None
        raise UsageError(" ".join(f"{path}: invalid TOML: {e}".split())) from None


def validate(model: type[BaseModel], data: dict, source: str, prefix: str = "", **kwargs):
    """model.model_validate(data, **kwargs), errors as one UsageError line."""
    try:
        return model.model_validate(data, **kwargs)
    except ValidationError as e:
        raise UsageError(describe_validation_error(e, source, prefix, model)) from None


def load_policy(path: str) -> Policy:
    """A policy file: the keys of `Policy` at top level (or under [policy])."""
    data = read_toml(path)
    if set(data) == {"policy"}:
        return validate(Policy, data["policy"], path, "policy", strict=True)
    return validate(Policy, data, path, strict=True)


def _inside(child: str, parent: str) -> bool:
    """`child` is `parent` or below it (symbolic links resolved where they exist)."""
    c, p = os.path.realpath(child), os.path.realpath(parent)
    return c == p or c.startswith(p.rstrip(os.sep) + os.sep)


def _cross_checks(config: Config) -> list[tuple[tuple, str]]:
    """Rules that span sections or watches, in file order."""
    problems: list[tuple[tuple, str]] = []
    seen: dict[str, int] = {}
    for i, device in enumerate(config.worker.devices):
        if device in seen:
            problems.append(
                (
                    ("worker", "devices", i),
                    f"duplicate device {_quoted(device)} (one worker per device; worker.threads sets parallelism)",
                )
            )
        seen.setdefault(device, i)
    for i, w in enumerate(config.watches):
        if _inside(config.daemon.state_dir, w.path):
            problems.insert(
                0,
                (
                    ("daemon", "state_dir"),
                    f"{config.daemon.state_dir} is inside watch.{i}.path ({w.path}): "
                    "the daemon never writes into a watched directory",
                ),
            )
            break
    names: dict[str, int] = {}
    publish: dict[str, int] = {}
    for i, w in enumerate(config.watches):
        if w.name in names:
            problems.append(
                (("watch", i, "name"), f"duplicate name {_quoted(w.name)} (also watch.{names[w.name]}.name)")
            )
        names.setdefault(w.name, i)
        if w.publish_dir is None:
            continue
        for j, other in enumerate(config.watches):
            where = "its own path" if j == i else f"watch.{j}.path"
            if _inside(w.publish_dir, other.path):
                relation = "is" if _inside(other.path, w.publish_dir) else "is inside"
                problems.append(
                    (
                        ("watch", i, "publish_dir"),
                        f"{w.publish_dir} {relation} {where} ({other.path}): "
                        "the daemon never writes into a watched directory",
                    )
                )
                break
            if _inside(other.path, w.publish_dir):
                problems.append((("watch", i, "publish_dir"), f"{w.publish_dir} contains {where} ({other.path})"))
                break
        key = os.path.realpath(w.publish_dir)
        if key in publish:
            problems.append((("watch", i, "publish_dir"), f"same directory as watch.{publish[key]}.publish_dir"))
        publish.setdefault(key, i)
    return problems


def _validate_config(data: dict, source: str, base_dir: str, notes: dict[tuple, str]) -> Config:
    try:
        config = Config.model_validate(data, strict=True, context={"base_dir": base_dir})
    except ValidationError as e:
        raise UsageError(describe_validation_error(e, source, model=Config, notes=notes)) from None
    problems = _cross_checks(config)
    if problems:
        raise UsageError(_one_line(source, problems, notes=notes))
    return config


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """The daemon's config: the TOML file at `path`, then the CKPTWATCH_* variables of `env`
    (os.environ when None; an empty value counts as unset). Relative paths in the file are
    relative to its directory. Raises UsageError with one line `FILE: key.path: reason`."""
    data = read_toml(path)
    source = os.path.abspath(path)
    notes: dict[tuple, str] = {}
    for var, key in ENV_OVERRIDES.items():
        value = (os.environ if env is None else env).get(var)
        if value:
            _apply(data, key, value, var, notes)
    config = _validate_config(data, path, os.path.dirname(source), notes)
    config._source = source
    config._overridden = {".".join(key): label for key, label in notes.items()}
    return config


def override_daemon(config: Config, updates: Mapping[str, str | None]) -> Config:
    """`config` with `[daemon]` keys replaced by command-line values (`{"listen": "0.0.0.0:9847"}`
    from `--listen`; None values ignored), validated like the file, cross-checks included. They
    win over the file and the environment. Raises UsageError naming the flag:
    `FILE: daemon.listen (from --listen): reason`."""
    unknown = set(updates) - set(DaemonConfig.model_fields)
    if unknown:
        raise ValueError(f"override_daemon: not [daemon] keys: {', '.join(sorted(unknown))}")
    data = config.model_dump(by_alias=True)
    notes = {tuple(k.split(".")): label for k, label in config.overridden.items()}
    for key, value in updates.items():
        if value is not None:
            _apply(data, ("daemon", key), value, f"--{key.replace('_', '-')}", notes)
    new = _validate_config(data, config.source or "(config)", os.getcwd(), notes)
    new._source = config.source
    new._overridden = {".".join(key): label for key, label in notes.items()}
    return new


# -- summaries --------------------------------------------------------------------------------


def describe(config: Config) -> str:
    """One line for `check-config`: what the daemon would run."""
    n = len(config.watches)
    line = (
        f"{n} watch{'es' if n != 1 else ''} ({', '.join(w.name for w in config.watches)}), "
        f"devices [{', '.join(config.worker.devices)}], listen {config.daemon.listen}, "
        f"state_dir {config.daemon.state_dir}"
    )
    if config.overridden:
        line += f"; overridden by {', '.join(sorted(set(config.overridden.values())))}"
    return line


def changes(old: Config, new: Config) -> list[str]:
    """What a reload changes, as key paths: `daemon.listen`, `worker.devices`,
    `watch "a" added`, `watch "b" removed`, `watch "c".golden`."""
    out: list[str] = []
    for section in ("daemon", "worker"):
        before, after = getattr(old, section).model_dump(), getattr(new, section).model_dump()
        out += [f"{section}.{k}" for k in before if before[k] != after[k]]
    before_w = {w.name: w.model_dump() for w in old.watches}
    after_w = {w.name: w.model_dump() for w in new.watches}
    for name, w in after_w.items():
        if name not in before_w:
            out.append(f"watch {_quoted(name)} added")
        else:
            out += [f"watch {_quoted(name)}.{k}" for k in w if w[k] != before_w[name][k]]
    out += [f"watch {_quoted(name)} removed" for name in before_w if name not in after_w]
    return out
