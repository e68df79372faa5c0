"""Exceptions raised by ckptwatch.

    CkptwatchError                 base; str() is one line meant for the user
    ├── UsageError                 bad arguments or options          -> exit 2
    │   └── ConfigInvalid          a config or policy file with problems: every one of them
    │                              (`problems`), in one line as str(), one per line in check-config
    ├── CheckpointNotFound         a path that holds no checkpoint    -> exit 2
    │   └── CheckpointVanished     it was there, and was deleted while being verified
    │                              (CheckpointManager's max_to_keep): the daemon skips it
    ├── TryAgainLater              the daemon cannot start *now*      -> exit 75 (EX_TEMPFAIL)
    │   │                          (its listen address is in use): a service manager restarts it
    │   └── StateUnavailable       its state_dir cannot be created or is not a directory
    ├── DaemonFailed               the daemon stopped on a bug         -> exit 70 (EX_SOFTWARE):
    │                              restarted, unlike a config error
    ├── ModelChecksError           model-aware checks could not run (a factory that
    │   │                          does not import, an unreadable probe file)
    │   ├── ModelTimeout           they ran past their time limit; the process that ran
    │   │                          them must exit (a thread cannot be stopped)
    │   └── ModelUnsupported       the model needs what the verifier's environment lacks (an op
    │                              from a custom op library, the tf-keras package): the file may
    │                              be intact, so verdict `error` naming what to install, never `fail`
    ├── UnsupportedFormat          a checkpoint in a format ckptwatch does not read (TF's V1
    │                              format): the tool's limit, never a verdict on the file
    └── CheckpointUnreadable       a checkpoint we cannot open at all
        └── (formats.base.IntegrityError lives next to the readers: it is a
            *verdict* about the candidate, not an error of the tool)

The CLI maps every CkptwatchError to one line on stderr and its `exit_code` (2
unless said otherwise); a broken candidate is never an error but a `fail` verdict
with findings.
"""


class CkptwatchError(Exception):
    """Base class: the message is one line, shown to the user as is."""

    exit_code = 2


class TryAgainLater(CkptwatchError):
    """A condition that may clear by itself (an address in use): systemd's
    RestartPreventExitStatus=2 stops restarts for config errors, not for this."""

    exit_code = 75


class StateUnavailable(TryAgainLater):
    """The state directory cannot be created (a mount not there yet, a path taken by a file):
    named with the config key, the path and the reason; a restart may find it fixed."""


class DaemonFailed(CkptwatchError):
    """The running daemon stopped on an unexpected error (a bug): exit 70, which systemd's
    Restart=on-failure and Kubernetes restart (exit 2 is kept for config errors)."""

    exit_code = 70


class UsageError(CkptwatchError):
    """Arguments or options that cannot work together."""


class ConfigInvalid(UsageError):
    """A configuration (or policy) file that does not validate: `source` and each problem
    (`key.path: reason`); str() names them all on one line, separated by "; "."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, list(problems)
        super().__init__(" ".join(f"{source}: {'; '.join(self.problems)}".split()))


class CheckpointNotFound(CkptwatchError):
    """The path does not exist or holds nothing we recognise as a checkpoint."""


class CheckpointUnreadable(CkptwatchError):
    """A reference could not be opened (for a candidate this becomes a finding)."""


class UnsupportedFormat(CkptwatchError):
    """A real checkpoint in a format ckptwatch cannot read (TensorFlow's V1 format): exit 2."""


class CheckpointVanished(CheckpointNotFound):
    """The candidate was deleted while it was being verified: nobody's fault, no verdict."""


class ModelChecksError(CkptwatchError):
    """The model-aware checks could not run; `check` is the finding a daemon report gets."""

    check = "restore.error"


class ModelUnsupported(ModelChecksError):
    """The model needs something this environment does not have (a custom op, a package)."""

    check = "restore.unsupported"


class ModelTimeout(ModelChecksError):
    """The model-aware checks ran past their time limit."""

    check = "functional.timeout"
