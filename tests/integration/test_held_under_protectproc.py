"""Held files still reach the worker under the shipped systemd unit's hardening.

The unit runs the daemon as an unprivileged (dynamic) user with `ProtectProc=invisible`, i.e.
/proc mounted with hidepid=invisible. A worker reopens a deleted candidate through
`/proc/<daemon pid>/fd/<n>` (ckptwatch.daemon.holding); that must keep working for a child of
the same user, or a checkpoint CheckpointManager deletes while queued is skipped as vanished
again. Reproduced without systemd: a new mount and PID namespace whose /proc is remounted
hidepid=invisible, the holder and its child running as `nobody` (with CAP_DAC_READ_SEARCH only
so that `nobody` can read this checkout and its interpreter under /root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.tools import skip_unless_namespaces

NOBODY = 65534
NEW_NAMESPACES = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c"]

HOLDER = """
import json, os, subprocess, sys
from ckptwatch.daemon.discovery import find_candidates
from ckptwatch.daemon.holding import Holder

run = sys.argv[1]
(c,) = find_candidates("run", run)
held = Holder().hold(c)
assert held is not None, "not held"
for name in held.fds:
    os.unlink(os.path.join(run, name))  # CheckpointManager(max_to_keep) deletes it
with open("/proc/self/mounts") as f:
    proc_options = [line.split()[3] for line in f if line.split()[1] == "/proc"]
child = subprocess.run(
    [sys.executable, "-c", sys.argv[2], c.path, json.dumps(held.stand_ins())],
    capture_output=True, text=True, timeout=120,
)
print(json.dumps({"uid": os.getuid(), "proc": proc_options, "stand_ins": held.stand_ins(),
                  "rc": child.returncode, "out": child.stdout, "err": child.stderr[-2000:]}))
"""

WORKER = """
import json, sys
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.verify.verification import verify_checkpoint

report = verify_checkpoint(VerifyRequest(sys.argv[1], held=json.loads(sys.argv[2]), discovered=True)).report
print(json.dumps({"verdict": report.verdict, "tensors": report.checkpoint["tensors"]}))
"""


def test_a_deleted_candidate_is_read_through_held_files_with_proc_hidepid_invisible(tf):
    skip_unless_namespaces(
        NEW_NAMESPACES, "mount -o remount,hidepid=invisible /proc", "remount /proc hidepid=invisible", ("setpriv",)
    )
    root = Path(tempfile.mkdtemp(prefix="ckptwatch-protectproc-", dir="/tmp"))
    try:
        run = root / "run"
        run.mkdir()
        v = tf.Variable(tf.random.stateless_normal([64, 32], seed=[3, 0]))
        tf.train.Checkpoint(v=v).write(str(run / "ckpt-1"))
        for p in (root, run, *run.iterdir()):
            os.chown(p, NOBODY, NOBODY)
        repo = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": repo, "HOME": str(root), "NUMBA_CACHE_DIR": str(root / "numba")}
        inner = " ".join(
            [
                "mount -o remount,hidepid=invisible /proc &&",
                f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups",
                "--inh-caps=-all,+dac_read_search --ambient-caps=-all,+dac_read_search",
                '"$0" -c "$1" "$2" "$3"',
            ]
        )
        done = subprocess.run(
            [*NEW_NAMESPACES, inner, sys.executable, HOLDER, str(run), WORKER],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(root),
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["uid"] == NOBODY
        assert any("hidepid=invisible" in o or "hidepid=2" in o for o in seen["proc"]), seen["proc"]
        assert all(p and p.startswith("/proc/") for p in seen["stand_ins"].values()), seen["stand_ins"]
        assert not list(run.iterdir()), "the candidate's files were to be deleted before the worker read them"
        assert seen["rc"] == 0, seen["err"]
        result = json.loads(seen["out"].strip().splitlines()[-1])
        assert result["verdict"] == "pass" and result["tensors"] >= 1, result
    finally:
        shutil.rmtree(root, ignore_errors=True)
