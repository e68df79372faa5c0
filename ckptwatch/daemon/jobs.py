"""What the workers are given, from the config and the state: `worker_settings(config)`, how
the supervisor runs them, and `verify_request(config, state, candidate)`, what a worker verifies
for a candidate: its previous (the watch's baseline: the last checkpoint that passed, or one an
operator accepted; its fingerprint once it is gone), golden, policy and model checks.
"""

from __future__ import annotations

import os

from ckptwatch.config import Config
from ckptwatch.daemon import discovery
from ckptwatch.daemon import history as run_history
from ckptwatch.daemon.durable import DurableState
from ckptwatch.daemon.model import Candidate
from ckptwatch.daemon.state import GoodCheckpoint
from ckptwatch.daemon.supervisor import WorkerSettings
from ckptwatch.formats.layout import checkpoint_exists
from ckptwatch.verify.request import ModelSpec, VerifyRequest


def worker_settings(config: Config) -> WorkerSettings:
    w, d = config.worker, config.daemon
    return WorkerSettings(
        heartbeat_interval=w.heartbeat_interval,
        heartbeat_timeout=w.heartbeat_timeout,
        job_timeout=d.job_timeout,
        restart_backoff=w.restart_backoff,
        restart_backoff_max=w.restart_backoff_max,
        memory_limit_mb=w.memory_limit_mb,
        tensorflow=any(watch.model is not None for watch in config.watches),
        tmp_dir=os.path.join(d.state_dir, "tmp"),
    )


def still_holds(good: GoodCheckpoint) -> bool:
    """Whether `good.path` still holds the bytes that were verified (not a newer save to the same path)."""
    return discovery.current_key(good.path) == good.key


def _history_out(state_dir: str, watch: str, key: str) -> str | None:
    """Where the worker writes the run's history extended by this candidate; None when its folder
    cannot be made (a full or read-only state dir: judged without extending the history)."""
    try:
        return run_history.next_path(state_dir, watch, key)
    except OSError:
        return None


def verify_request(config: Config, state: DurableState, c: Candidate) -> VerifyRequest:
    w = config.watch(c.watch)
    good = state.last_good(c.watch)
    previous = fallback = None
    if good and good.key != c.key:
        fallback = good.fingerprint if checkpoint_exists(good.fingerprint) else None
        previous = good.path if still_holds(good) else fallback
    return VerifyRequest(
        c.path,
        previous,
        previous_fingerprint=fallback,  # if CheckpointManager deletes `previous` before the worker reads it
        golden=w.golden,
        golden_required=False,  # not mounted (yet): verified without it, with a warning
        policy=w.policy_model(),
        model=ModelSpec.from_dict(w.model.spec()) if w.model else None,
        # the run's history ends at `good`: judge against it, and extend it if this one passes
        history=run_history.for_request(state.dir, c.watch, good.key if good and previous else None),
        history_required=False,  # unreadable: judged without it, with a warning (a new one starts)
        history_out=_history_out(state.dir, c.watch, c.key),
        fingerprint_out=state.fingerprint_path(c.watch, c.path),
        threads=config.worker.threads,
        discovered=True,
    )
