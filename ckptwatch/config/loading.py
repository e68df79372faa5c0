"""Loading the config: TOML file -> CKPTWATCH_* environment -> command-line flags -> Config.

    load_config(path, env=None) -> Config      the daemon's TOML file (+ CKPTWATCH_* environment)
    override_daemon(config, updates) -> Config  command-line flags of `ckptwatch watch` on top
    load_policy(path) -> Policy                a policy file for `verify --policy`
    read_toml(path) -> dict                    errors as one UsageError line naming the line
    validate(model, data, source) -> model     errors as one UsageError line naming the key
    describe(config) -> str                    one-line summary for `check-config`
    changes(old, new) -> list[str]             what a reload changes, as key paths

Rules that span sections or watches (duplicate devices and names, state_dir or publish_dir
inside a watched directory) are checked after the schema, and reported the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]  # the same API under its PyPI name

from pydantic import BaseModel, ValidationError

from ckptwatch.config.messages import describe_validation_error, invalid, quoted
from ckptwatch.config.schema import Config, DaemonConfig
from ckptwatch.errors import UsageError
from ckptwatch.formats.files import NotRegularFile, open_regular
from ckptwatch.policy import Policy

__all__ = [
    "ENV_OVERRIDES",
    "changes",
    "describe",
    "load_config",
    "load_policy",
    "override_daemon",
    "read_toml",
    "validate",
]

# -- overrides --------------------------------------------------------------------------------

ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CKPTWATCH_LISTEN": ("daemon", "listen"),
    "CKPTWATCH_STATE_DIR": ("daemon", "state_dir"),
    "CKPTWATCH_LOG_FORMAT": ("daemon", "log_format"),
    "CKPTWATCH_LOG_LEVEL": ("daemon", "log_level"),
    "CKPTWATCH_OBSERVER": ("daemon", "observer"),
    "CKPTWATCH_DEVICES": ("worker", "devices"),  # comma-separated: "gpu:0,gpu:1"
    "CKPTWATCH_WEB_CONFIG_FILE": ("daemon", "web_config_file"),
}
# relative values from the environment or a flag: to the working directory
_PATH_KEYS = {("daemon", "state_dir"), ("daemon", "web_config_file")}
_FLAGS = {"web_config_file": "--web.config.file"}  # exporter-toolkit's spelling; else --key-with-dashes


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


# -- files ------------------------------------------------------------------------------------


MAX_TOML_BYTES = 16 << 20  # a config or policy file is a few KB


def read_toml(path: str) -> dict:
    """The TOML file at `path` as a dict. Only a regular file is read (a FIFO, socket or device
    is refused, never opened for reading: it would block), at most MAX_TOML_BYTES; nesting too
    deep for the parser is an error like any other. Every problem is one UsageError line."""
    try:
        with open_regular(path) as f:
            data = f.read(MAX_TOML_BYTES + 1)
        if len(data) > MAX_TOML_BYTES:
            raise UsageError(f"{path}: larger than {MAX_TOML_BYTES >> 20} MiB, not a config file")
        return tomllib.loads(data.decode("utf-8"))
    except NotRegularFile as e:
        raise UsageError(f"{path}: is {e.what}, not a TOML file") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: invalid TOML: not UTF-8 text") from None
    except RecursionError:
        raise UsageError(f"{path}: invalid TOML: values nested too deeply") from None
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
        raise describe_validation_error(e, source, prefix, model) from None


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
                    f"duplicate device {quoted(device)} (one worker per device; worker.threads sets parallelism)",
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
                (("watch", i, "name"), f"duplicate name {quoted(w.name)} (also watch.{names[w.name]}.name)")
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
        raise describe_validation_error(e, source, model=Config, notes=notes) from None
    problems = _cross_checks(config)
    if problems:
        raise invalid(source, problems, notes=notes)
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
            _apply(data, ("daemon", key), value, _FLAGS.get(key, f"--{key.replace('_', '-')}"), notes)
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
            out.append(f"watch {quoted(name)} added")
        else:
            out += [f"watch {quoted(name)}.{k}" for k in w if w[k] != before_w[name][k]]
    out += [f"watch {quoted(name)} removed" for name in before_w if name not in after_w]
    return out
