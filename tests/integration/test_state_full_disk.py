"""A state directory on a disk that fills up is reported as `full` (ckptwatch_state_errors_total
{kind="full"}, the runbook's first branch), not as a generic I/O error, and the daemon's records
are kept in memory meanwhile and written back once there is room.

A real full filesystem: a 512 KiB tmpfs mounted in a new mount namespace (SQLite sees ENOSPC and
says SQLITE_FULL). tests/unit/test_durable_state.py covers the other failures with RLIMIT_FSIZE,
which SQLite can only report as "disk I/O error" (EFBIG)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.tools import skip_unless_namespaces

FILL = """
import json, os, sys
from ckptwatch.daemon.durable import DurableState

class Clock:
    now = 1000.0
    def __call__(self):
        return self.now

clock = Clock()
state_dir = sys.argv[1]
kinds = []
state = DurableState(state_dir, on_error=kinds.append, clock=clock)
big = {"verdict": "pass", "findings": [{"message": "x" * 4000}] * 8}
written = 0
for i in range(400):  # ~32 KB a record: the disk is full long before
    state.record_report("run", f"/run/ckpt-{i}", f"k{i}", i, big)
    if not state.writable():
        break
    written += 1
kept_while_full = state.kept
os.remove(os.path.join(state_dir, "filler"))  # room again: what was kept in memory is written back
for _ in range(20):
    clock.now += 60
    state.tick()
    if state.writable():
        break
print(json.dumps({"kinds": kinds, "written": written, "kept_while_full": kept_while_full,
                  "writable_after": state.writable(), "kept_after": state.kept}))
state.close()
"""


def test_a_state_disk_that_fills_up_is_reported_full_and_written_back_after(tmp_path):
    state_dir = Path(tempfile.mkdtemp(prefix="ckptwatch-full-"))
    try:
        skip_unless_namespaces(
            ["unshare", "--mount", "sh", "-c"], f"mount -t tmpfs -o size=64k tmpfs {state_dir}", "mount a tmpfs"
        )
        repo = str(Path(__file__).resolve().parents[2])
        # a filler that leaves ~280 KiB: the database and its journal run out of room within a few records
        inner = (
            f"mount -t tmpfs -o size=512k tmpfs {state_dir} && "
            f"head -c 240000 /dev/zero > {state_dir}/filler && "
            f'exec "$0" -c "$1" {state_dir}'
        )
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c", inner, sys.executable, FILL],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": repo},
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["kinds"] and seen["kinds"][0] == "full", seen
        assert "io" not in seen["kinds"], seen
        assert seen["written"] >= 1 and seen["kept_while_full"] >= 1, seen
        assert seen["writable_after"] and seen["kept_after"] == 0, seen
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
