"""The `ckptwatch` command line: parse, call the engine, format, map to exit codes.

Exit codes (verify): 0 pass or warn, 1 fail, 2 error (usage, missing path,
unreadable reference). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys

import click

from ckptwatch import __version__
from ckptwatch.errors import CkptwatchError, UsageError

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
ERROR_SCHEMA = "ckptwatch.error/v1"
_QUIET, _VERBOSE = "ckptwatch.quiet", "ckptwatch.verbose"  # click's ctx.meta keys (shared by the chain)


def _error_json(message: str, code: int) -> None:
    """With --json, an error (exit 2) is also a JSON object on stdout: a CI step that always
    parses the output gets one."""
    click.echo(json.dumps({"schema": ERROR_SCHEMA, "error": message, "exit": code}, indent=2))


class _Group(click.Group):
    """Turns our errors (and anything unexpected) into one line and exit 2 (or the error's own code)."""

    invoked_args: tuple[str, ...] = ()  # what main() was called with, to re-run in a child

    def main(self, args=None, *a, **kw):
        self.invoked_args = tuple(args) if args is not None else tuple(sys.argv[1:])
        return super().main(args, *a, **kw)

    @property
    def wants_json(self) -> bool:
        return "--json" in self.invoked_args

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CkptwatchError as e:
            if self.wants_json:
                _error_json(str(e), e.exit_code)
            click.echo(f"ckptwatch: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except click.ClickException as e:  # a usage error in the command's arguments: click shows it
            if self.wants_json:
                _error_json(e.format_message(), e.exit_code)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("ckptwatch: interrupted", err=True)
            ctx.exit(130)
        except Exception as e:
            if os.environ.get("CKPTWATCH_DEBUG"):
                raise
            message = f"internal error: {type(e).__name__}: {e}"
            if self.wants_json:
                _error_json(message, EXIT_ERROR)
            click.echo(f"ckptwatch: {message} (CKPTWATCH_DEBUG=1 shows the traceback)", err=True)
            ctx.exit(EXIT_ERROR)


def _remember(key: str):
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[key] = True

    return callback


def _verbosity(f):
    """-q/--quiet and -v/--verbose, on the group and on each command alike (`ckptwatch -q verify ...`
    or `ckptwatch verify -q ...`)."""
    f = click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_remember(_VERBOSE),
        help="More detail: the tensor being read and a summary line, and TensorFlow's and Keras' own log "
        "lines on stderr [CKPTWATCH_VERBOSE].",
    )(f)
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_remember(_QUIET),
        help="No progress bar, no notes on stderr: the result and errors only.",
    )(f)


def _level() -> int:
    """-1 quiet, 0 normal, 1 verbose (-q and -v together are a usage error)."""
    meta = click.get_current_context().meta
    if meta.get(_QUIET) and meta.get(_VERBOSE):
        raise UsageError("give -q (quiet) or -v (verbose), not both")
    return -1 if meta.get(_QUIET) else 1 if meta.get(_VERBOSE) else 0


def _progress():
    """In the reading child: the progress callback for the engine: announces each tensor to the
    isolating parent (for the message of a crash), and draws a progress bar on stderr when it is a
    terminal (not with -q)."""
    from ckptwatch.isolate import progress_writer
    from ckptwatch.termui import ProgressBar, is_tty

    announce = progress_writer()
    level = _level()
    if level < 0 or not is_tty(sys.stderr) or os.environ.get("TERM") == "dumb":
        return announce
    return ProgressBar(sys.stderr, verbose=level > 0, also=announce)


def _show(text: str) -> None:
    """Human output on stdout, verdicts and severities in colour on a terminal (not under NO_COLOR)."""
    from ckptwatch.termui import color_enabled, colorize

    click.echo(colorize(text) if color_enabled(sys.stdout) else text, color=color_enabled(sys.stdout))


def _note(text: str) -> None:
    """A note on stderr, which -q silences."""
    if _level() >= 0:
        click.echo(text, err=True)


def _emit_json(doc: dict) -> None:
    click.echo(json.dumps(doc, indent=2, allow_nan=False))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@_verbosity
@click.version_option(__version__, "--version", prog_name="ckptwatch", message="%(prog)s %(version)s")
def main() -> None:
    """Verify TensorFlow checkpoints: integrity, non-finite values, structure, drift."""


def _options(threads: int | None):
    from ckptwatch.verify.engine import Options

    options = Options(threads=threads) if threads else Options()
    options.progress = _progress()
    return options


def _isolated(
    path: str,
    as_json: bool,
    threads: int | None,
    timeout: float | None = None,
    report: bool = True,
) -> None:
    """Re-run this command in a child interpreter unless we are that child, under the time
    limit (--timeout, CKPTWATCH_TIMEOUT, 3600 s). `report`: the parent answers a time limit or
    a crash with a verify report (verify, inspect, fingerprint), else with one line (diff). The
    child keeps TensorFlow's and Keras' own log lines off stderr unless -v (CKPTWATCH_VERBOSE)."""
    from ckptwatch import isolate, quiet

    if _level() > 0:
        os.environ[quiet.VERBOSE_ENV] = "1"
    if isolate.in_child():
        quiet.quiet_native_logs()
    else:
        root = click.get_current_context().find_root().command
        assert isinstance(root, _Group)
        args = root.invoked_args
        limit = isolate.time_limit(timeout)
        sys.exit(isolate.run_in_child(list(args), path, as_json, threads or 2, limit, report))


_threads = click.option("--threads", type=click.IntRange(1, 64), default=None, help="Tensors read in parallel.")
_timeout = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Give up reading after this long: verdict error, exit 2 [CKPTWATCH_TIMEOUT, else 3600; 0: no limit].",
)


@main.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_threads
@_timeout
@_verbosity
def inspect(path: str, as_json: bool, threads: int | None, timeout: float | None) -> None:
    """List every tensor of PATH with dtype, shape, size and statistics.

    PATH may be a fingerprint: its stored statistics are listed (no tensor data is read)."""
    _isolated(path, as_json, threads, timeout)
    from ckptwatch.verify.engine import inspect_path
    from ckptwatch.verify.render import render_inspect

    report = inspect_path(path, _options(threads))
    if as_json:
        d = report.to_dict()
        _emit_json(
            {
                "schema": "ckptwatch.inspect/v1",
                "checkpoint": d["checkpoint"],
                "findings": d["findings"],
                "tensors": [
                    {k: t[k] for k in ("name", "display_name", "display", "kind", "dtype", "shape", "bytes", "stats")}
                    for t in d["tensors"]
                ],
            }
        )
    else:
        _show(render_inspect(report))
    sys.exit(EXIT_FAIL if report.verdict == "fail" else EXIT_OK)


@main.command()
@click.argument("path")
@click.option("--previous", metavar="REF", help="The previous checkpoint of the same run (or its fingerprint).")
@click.option("--golden", metavar="REF", help="A known-good reference checkpoint (or its fingerprint).")
@click.option("--profile", type=click.Choice(["training", "replica"]), default=None, help="Policy profile [training].")
@click.option(
    "--golden-mode",
    type=click.Choice(["target", "finetune"]),
    default=None,
    help="What --golden is to a training run: target (where it is going: the probe is compared with it only "
    "once the run's history shows it was reached) or finetune (where it started: compared from the first "
    "checkpoint, whole-checkpoint drift bounded) [target].",
)
@click.option("--policy", "policy_file", metavar="FILE.toml", help="Thresholds, excludes and per-tensor overrides.")
@click.option(
    "--include-optimizer", is_flag=True, default=None, help="Check optimizer state for drift and structure too."
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Tensors not to compare (repeatable).")
@click.option("--frozen", multiple=True, metavar="GLOB", help="Tensors expected not to change (repeatable).")
@click.option(
    "--model", metavar="MODULE:FUNCTION", help="Model factory: restore into it, check restore status and fidelity."
)
@click.option("--probe", metavar="FILE.npz", help="Probe batch (x, optional y): run the restored model on it.")
@click.option("--golden-outputs", metavar="FILE.npz", help="The golden model's outputs on the probe batch.")
@click.option("--smoke-step", is_flag=True, help="Also run one training step on the probe batch.")
@click.option("--write-outputs", metavar="FILE.npz", help="Save the candidate's probe outputs (future golden outputs).")
@click.option(
    "--model-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True, help="Seconds for model checks."
)
@click.option("--write-fingerprint", metavar="FILE", help="Also write the candidate's fingerprint (same single read).")
@click.option(
    "--history",
    metavar="PATH",
    help="The run's history to judge drift by: a history file (the daemon's <state_dir>/history/<watch>.npz, or "
    "--write-history's), or the run's directory, whose earlier checkpoints (or fingerprints) are replayed; "
    "it then also gives the default --previous.",
)
@click.option("--write-history", metavar="FILE", help="Write the history extended by PATH if it passes (pass or warn).")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (ckptwatch.report/v1).")
@_threads
@_timeout
@_verbosity
def verify(
    path: str,
    previous: str | None,
    golden: str | None,
    profile: str | None,
    golden_mode: str | None,
    policy_file: str | None,
    include_optimizer: bool | None,
    exclude: tuple[str, ...],
    frozen: tuple[str, ...],
    model: str | None,
    probe: str | None,
    golden_outputs: str | None,
    smoke_step: bool,
    write_outputs: str | None,
    model_timeout: float,
    write_fingerprint: str | None,
    history: str | None,
    write_history: str | None,
    as_json: bool,
    threads: int | None,
    timeout: float | None,
) -> None:
    """Verify the checkpoint at PATH; exit 0 pass/warn, 1 fail, 2 error.

    Without --history, drift vs previous is judged by conservative rules: only clear-cut
    damage fails (non-finite values, a reset, growth by orders of magnitude, structure), a
    large relative jump warns. With the run's history, each tensor's change is judged against
    its own past changes."""
    for option, value in (
        ("--write-fingerprint", write_fingerprint),
        ("--write-history", write_history),
        ("--write-outputs", write_outputs),
    ):
        if value == "-":
            raise UsageError(
                f"{option} -: stdout carries the report; name a file (`ckptwatch fingerprint PATH -o -` "
                "writes a fingerprint to stdout)"
            )
    _isolated(path, as_json, threads, timeout)
    from ckptwatch.config import load_policy
    from ckptwatch.policy import Policy
    from ckptwatch.verify.engine import DEFAULT_THREADS
    from ckptwatch.verify.render import render_verify
    from ckptwatch.verify.request import ModelSpec, VerifyRequest

    spec = None
    if model or probe or golden_outputs or smoke_step or write_outputs:
        if not probe and (golden_outputs or smoke_step or write_outputs):
            raise UsageError("--golden-outputs, --smoke-step and --write-outputs need --probe")
        for option, value in (("--probe", probe), ("--golden-outputs", golden_outputs)):
            if value and value.endswith(".npz") and not os.path.isfile(value):
                raise UsageError(f"{option} {value}: no such file")
        spec = ModelSpec(model, probe, golden_outputs, smoke_step, timeout=model_timeout, outputs_out=write_outputs)
    policy = load_policy(policy_file) if policy_file else Policy()
    updates: dict = {}
    if profile:
        updates["profile"] = profile
    if golden_mode:
        updates["golden_mode"] = golden_mode
    if include_optimizer:
        updates["include_optimizer"] = True
    if exclude:
        updates["exclude"] = [*policy.exclude, *exclude]
    if frozen:
        updates["frozen"] = [*policy.frozen, *frozen]
    request = VerifyRequest(
        path,
        previous,
        golden=golden,
        policy=policy.model_copy(update=updates),
        model=spec,
        fingerprint_out=write_fingerprint,
        history=history,
        history_out=write_history,
        threads=threads or DEFAULT_THREADS,
    )
    done = _verify(request)
    if done.not_fingerprinted:
        click.echo(f"ckptwatch: {write_fingerprint}: {done.not_fingerprinted}", err=True)
    if as_json:
        _emit_json(done.report.to_dict())
    else:
        _show(render_verify(done.report))
    sys.exit(EXIT_FAIL if done.report.verdict == "fail" else EXIT_OK)


def _verify(request):
    """verify_checkpoint as the CLI runs it: progress to the isolating parent, model checks in
    this process, and an exit right away when they overrun (their thread cannot be stopped)."""
    from ckptwatch.errors import ModelTimeout
    from ckptwatch.isolate import announce_phase
    from ckptwatch.verify.verification import verify_checkpoint

    model_checks = None
    if request.model is not None:
        from ckptwatch.model.checks import add_model_checks

        def model_checks(*args) -> None:  # the phase, for the message of a time limit run out
            announce_phase("running the model checks")
            add_model_checks(*args)

    try:
        return verify_checkpoint(request, _progress(), model_checks)
    except ModelTimeout as e:
        root = click.get_current_context().find_root().command
        if isinstance(root, _Group) and root.wants_json:
            _error_json(str(e), EXIT_ERROR)
            sys.stdout.flush()
        click.echo(f"ckptwatch: error: {e}", err=True)
        sys.stderr.flush()
        os._exit(EXIT_ERROR)


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--top", type=click.IntRange(1), default=None, help="Only the N tensors that drifted most.")
@click.option(
    "--include-optimizer", is_flag=True, help="Count optimizer state in the overall drift too (as verify's flag)."
)
@click.option("--json", "as_json", is_flag=True, help="ckptwatch.diff/v1 JSON.")
@_threads
@_timeout
@_verbosity
def diff(
    a: str, b: str, top: int | None, include_optimizer: bool, as_json: bool, threads: int | None, timeout: float | None
) -> None:
    """Per-tensor drift of checkpoint A against B, worst first; exit 1 when A or B is corrupt.

    The overall figures are those of `verify A --previous B`: weights only, unless
    --include-optimizer (optimizer state and its iteration counter)."""
    _isolated(a, as_json, threads, timeout, report=False)
    from ckptwatch.verify.diff import diff_paths
    from ckptwatch.verify.render import render_diff

    result = diff_paths(a, b, top, _options(threads), include_optimizer=include_optimizer)
    if as_json:
        _emit_json(result)
    else:
        _show(render_diff(result))
    sys.exit(EXIT_FAIL if result["corrupt"] else EXIT_OK)


@main.command()
@click.argument("path")
@click.option("-o", "--output", required=True, metavar="FILE", help="Where to write it (.gz compresses; - is stdout).")
@_threads
@_timeout
@_verbosity
def fingerprint(path: str, output: str, threads: int | None, timeout: float | None) -> None:
    """Write a compact fingerprint of PATH usable as --previous/--golden.

    With `-o -` the fingerprint goes to stdout (and the note that says what was written to
    stderr), e.g. `ckptwatch fingerprint run/ckpt-5 -o - | gzip > ckpt-5.fp.gz`."""
    _isolated(path, False, threads, timeout)
    import tempfile

    from ckptwatch.verify.engine import DEFAULT_THREADS
    from ckptwatch.verify.render import human_bytes
    from ckptwatch.verify.request import VerifyRequest

    with tempfile.TemporaryDirectory(prefix="ckptwatch-fp-") as scratch:
        target = os.path.join(scratch, "fingerprint") if output == "-" else output
        request = VerifyRequest(
            path, fingerprint_out=target, fingerprint_gate="verdict", threads=threads or DEFAULT_THREADS
        )
        try:
            done = _verify(request)
        except OSError as e:
            raise UsageError(f"{output}: {e.strerror}") from None
        if done.fingerprint is None:
            raise CkptwatchError(f"{path}: {done.not_fingerprinted or 'not fingerprinted: it holds no tensor'}")
        size = os.path.getsize(target)
        if output == "-":
            import shutil

            sys.stdout.flush()
            with open(target, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    total = done.report.checkpoint.get("bytes") or 0
    ratio = f" ({100 * size / total:.2f}% of the checkpoint)" if total else ""
    line = f"wrote {'stdout' if output == '-' else output}: {done.report.checkpoint.get('tensors')} tensors, "
    line += f"{human_bytes(size)}{ratio}"
    if output == "-":
        _note(line)
    elif _level() >= 0:
        click.echo(line)


@main.command()
@click.option("--serve", is_flag=True, help="Keep the daemon and its status page up until Ctrl-C.")
@click.option("--cli", "cli_walkthrough", is_flag=True, help="Show the one-shot `ckptwatch verify` instead.")
def demo(serve: bool, cli_walkthrough: bool) -> None:
    """Watch a small training run with the real daemon; a corrupt and a NaN checkpoint get caught."""
    from ckptwatch.demo import run_daemon_demo, run_demo

    sys.exit(run_demo() if cli_walkthrough else run_daemon_demo(serve=serve))


@main.command()
@click.option("--config", "config_path", required=True, metavar="FILE", help="TOML configuration.")
@click.option("--listen", metavar="HOST:PORT", help="Override [daemon] listen.")
@click.option("--state-dir", metavar="DIR", help="Override [daemon] state_dir.")
@click.option("--log-format", type=click.Choice(["json", "console", "auto"]), help="Override [daemon] log_format.")
@click.option(
    "--web.config.file",
    "web_config_file",
    metavar="FILE",
    help="TLS and basic auth for the HTTP endpoints: an exporter-toolkit web config (YAML) [daemon] web_config_file.",
)
def watch(
    config_path: str, listen: str | None, state_dir: str | None, log_format: str | None, web_config_file: str | None
) -> None:
    """Run the daemon: watch the configured directories and verify each new checkpoint."""
    from ckptwatch.config import override_daemon
    from ckptwatch.daemon.app import run_daemon

    pairs = (("listen", listen), ("state_dir", state_dir), ("log_format", log_format))
    updates = {k: v for k, v in (*pairs, ("web_config_file", web_config_file)) if v}
    sys.exit(run_daemon(config_path, (lambda c: override_daemon(c, updates)) if updates else None))


def _operator() -> str:
    """Who runs this: $SUDO_USER (an operator behind sudo), else the login user."""
    import getpass

    for who in (lambda: os.environ.get("SUDO_USER"), os.getlogin, getpass.getuser):
        try:
            name = who()
        except (OSError, KeyError):
            continue
        if name:
            return name
    return "unknown"


def _state_dir_of(watch_name: str, config_path: str | None, state_dir: str | None) -> str:
    """The daemon's state directory for `accept` / `retire`: the config's (which must have the
    watch), else --state-dir, else $CKPTWATCH_STATE_DIR, else the default."""
    from ckptwatch.config import DaemonConfig, load_config

    if config_path and state_dir:
        raise UsageError("give --config or --state-dir, not both")
    if config_path:
        config = load_config(config_path)
        names = [w.name for w in config.watches]
        if watch_name not in names:
            raise UsageError(f"unknown watch {watch_name!r}: {config_path} has {', '.join(map(repr, names))}")
        return config.daemon.state_dir
    return state_dir or os.environ.get("CKPTWATCH_STATE_DIR") or DaemonConfig().state_dir


@main.command()
@click.argument("watch_name", metavar="WATCH")
@click.argument("checkpoint", required=False)
@click.option("--reason", required=True, metavar="TEXT", help="Why this is the new baseline (recorded, shown).")
@click.option("--config", "config_path", metavar="FILE", help="The daemon's config: its state_dir and watches.")
@click.option("--state-dir", metavar="DIR", help="The daemon's state directory [$CKPTWATCH_STATE_DIR or the default].")
@click.option("--by", metavar="NAME", help="Who accepts it [$SUDO_USER, else the login user].")
def accept(
    watch_name: str, checkpoint: str | None, reason: str, config_path: str | None, state_dir: str | None, by: str | None
) -> None:
    """Make CHECKPOINT (default: the newest verified one) WATCH's new baseline.

    After an intended change (a restart, a new learning-rate regime) the run's checkpoints fail
    against the last one that passed; this tells the daemon to compare the next ones with
    CHECKPOINT instead, and to publish it. It is recorded in the daemon's state with who, when and
    why; the running daemon applies it within its poll interval. CHECKPOINT is a path or a name
    (`ckpt-9`) of a checkpoint the daemon verified and that passed integrity.
    """
    import sqlite3

    from ckptwatch.daemon.state import open_existing

    if not " ".join(reason.split()):
        raise UsageError("--reason is empty: say why this checkpoint is the new baseline")
    state_dir = _state_dir_of(watch_name, config_path, state_dir)
    who = (by or "").strip() or _operator()
    state = open_existing(state_dir)
    try:
        done = state.accept(watch_name, checkpoint, reason, who)
    except sqlite3.Error as e:
        raise CkptwatchError(f"cannot record the acceptance in {state_dir}: {e}") from None
    finally:
        state.close()
    good = done.checkpoint
    step = f" (step {good.step})" if good.step is not None else ""
    click.echo(
        f"accepted {good.path}{step} as the baseline of watch {watch_name} (by {who}); "
        "the daemon applies it within its poll interval"
    )


@main.command()
@click.argument("watch_name", metavar="WATCH")
@click.option("--reason", metavar="TEXT", help="Why the run is finished (recorded, logged by the daemon).")
@click.option("--undo", is_flag=True, help="Watch it again (forget the retirement).")
@click.option("--config", "config_path", metavar="FILE", help="The daemon's config: its state_dir and watches.")
@click.option("--state-dir", metavar="DIR", help="The daemon's state directory [$CKPTWATCH_STATE_DIR or the default].")
@click.option("--by", metavar="NAME", help="Who retires it [$SUDO_USER, else the login user].")
def retire(
    watch_name: str, reason: str | None, undo: bool, config_path: str | None, state_dir: str | None, by: str | None
) -> None:
    """Retire WATCH: a finished run that the daemon stops watching and alerting on.

    Its series leave /metrics (but `ckptwatch_watch_retired{watch} 1`), so its alerts clear and
    none fires when the run stops saving; its reports, baseline and publish_dir stay. Recorded in
    the daemon's state like `accept`; the running daemon applies it within its poll interval.
    `--undo` watches it again. The config key `retired = true` on the watch does the same.
    """
    import sqlite3

    from ckptwatch.daemon.state import open_existing

    if not undo and not " ".join((reason or "").split()):
        raise UsageError("--reason is required: say why the run is finished")
    state_dir = _state_dir_of(watch_name, config_path, state_dir)
    who = (by or "").strip() or _operator()
    state = open_existing(state_dir)
    try:
        if undo:
            was = state.unretire(watch_name)
        else:
            state.retire(watch_name, who, " ".join((reason or "").split()))
    except sqlite3.Error as e:
        raise CkptwatchError(f"cannot record the retirement in {state_dir}: {e}") from None
    finally:
        state.close()
    if undo:
        click.echo(
            f"watch {watch_name} is watched again; the daemon applies it within its poll interval"
            if was
            else f"watch {watch_name} was not retired by command (a `retired = true` in the config stays)"
        )
    else:
        click.echo(
            f"retired watch {watch_name} (by {who}); the daemon stops watching it within its poll interval, "
            "its history stays"
        )


@main.command("check-config")
@click.argument("config_path", metavar="FILE")
@_verbosity
def check_config(config_path: str) -> None:
    """Validate a daemon configuration file (the same checks as at start-up, its web config included);
    list every problem.

    A watch whose path is not a directory it can watch now (missing, a file, unreadable) is valid
    (the daemon waits for a directory that does not exist yet) but is named on stderr (not with
    -q): the daemon will not arm it, and says so in its log, `ckptwatch_watch_armed` and /readyz."""
    from ckptwatch.config import describe, load_config
    from ckptwatch.daemon.events import unarmed_reason
    from ckptwatch.daemon.webconfig import load_web_config
    from ckptwatch.errors import ConfigInvalid

    try:
        config = load_config(config_path)
    except ConfigInvalid as e:
        if len(e.problems) == 1:
            raise
        click.echo(f"ckptwatch: error: {e.source}: {len(e.problems)} problems", err=True)
        for problem in e.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(e.exit_code)
    web = load_web_config(config.daemon.web_config_file) if config.daemon.web_config_file else None  # UsageError
    if _level() >= 0:  # -q: the exit status says it
        if web is not None:
            auth = f", basic auth ({len(web.users)} users)" if web.users else ""
            click.echo(f"{web.path}: ok: {'TLS' if web.tls else 'plain HTTP'}{auth}")
        click.echo(f"{config_path}: ok: {describe(config)}")
    for w in config.watches:
        if w.retired or os.path.isdir(w.path) or _level() < 0:  # -q: errors only
            continue
        reason, detail = unarmed_reason(w.path)
        click.echo(f"{config_path}: warning: watch {w.name} would not be armed now: {reason}: {detail}", err=True)


SHELLS = ("bash", "zsh", "fish")


@main.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    bash:  eval "$(ckptwatch completion bash)"            (in ~/.bashrc)
    zsh:   eval "$(ckptwatch completion zsh)"             (in ~/.zshrc)
    fish:  ckptwatch completion fish > ~/.config/fish/completions/ckptwatch.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    ctx = click.get_current_context()
    script = cls(ctx.find_root().command, {}, "ckptwatch", "_CKPTWATCH_COMPLETE").source()
    click.echo(script)
