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
    parse_listen(value) -> (host, port)        the one listen-address parser (the daemon's HTTP server uses it)

Precedence: CLI flags > CKPTWATCH_* environment variables > the file > defaults;
every value is validated the same way whatever its origin, and an error in an
override names the variable or flag it came from.

    schema.py    the sections (DaemonConfig, WorkerConfig, Watch, ModelConfig, Config) and their validators
    messages.py  pydantic's validation errors -> one line
    loading.py   TOML, environment and flag overrides, cross-section checks, summaries

This package is imported by the daemon's main process, which must stay small: it
must not import numpy, TensorFlow, numba. The `Policy` schema it validates lives in
`ckptwatch.policy`; `ckptwatch.verify.rules` holds the logic that evaluates it.
"""

from ckptwatch.config.loading import (
    ENV_OVERRIDES,
    changes,
    describe,
    load_config,
    load_policy,
    override_daemon,
    read_toml,
    validate,
)
from ckptwatch.config.messages import describe_validation_error
from ckptwatch.config.schema import (
    Config,
    DaemonConfig,
    ModelConfig,
    Watch,
    WatchPolicy,
    WorkerConfig,
    parse_listen,
)
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
