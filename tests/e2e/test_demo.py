"""`make demo` runs `ckptwatch demo`: the real daemon on an embedded Keras run, with a
bit-flipped step 4 and NaN weights at step 6. The newcomer's first command must keep working."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_demo_catches_the_flipped_bit_and_the_nan_and_exits_0(run_cli):
    r = run_cli("demo", timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    verdicts = dict(re.findall(r"^(\d+)\s+(PASS|WARN|FAIL)\s", r.stdout, flags=re.MULTILINE))
    assert verdicts == {"1": "PASS", "2": "PASS", "3": "PASS", "4": "FAIL", "5": "PASS", "6": "FAIL", "7": "PASS"}, (
        r.stdout[-2000:]
    )
    assert re.search(r"^4\s+FAIL\s+integrity\.checksum:", r.stdout, flags=re.MULTILINE)
    assert re.search(r"^6\s+FAIL\s+nonfinite:", r.stdout, flags=re.MULTILINE)
    assert 'ckptwatch_verifications_total{verdict="fail",watch="demo-run"} 2.0' in r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_cli_walkthrough_shows_each_fault_with_its_verdict_and_exit_code(run_cli):
    r = run_cli("demo", "--cli", timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    rows = dict(re.findall(r"^(\S.*?)\s{2,}(PASS|WARN|FAIL)\s+\d\s", r.stdout, flags=re.MULTILINE))
    assert rows == {
        "healthy training step": "PASS",
        "bit flip in a kernel": "FAIL",
        "NaN after divergence": "FAIL",
        "restarted from scratch": "FAIL",
        "duplicate save": "FAIL",
        "copy vs golden (replica)": "PASS",
    }, r.stdout[-3000:]
    assert re.search(r"^bit flip in a kernel\s+FAIL\s+1\s+integrity\.checksum ", r.stdout, flags=re.MULTILINE)
    assert "Traceback" not in r.stderr
