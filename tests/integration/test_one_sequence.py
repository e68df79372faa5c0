"""`ckptwatch verify` and a daemon worker run one verification sequence: the same request
gives the same report through both, and the fingerprint gate is the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ckptwatch.verify.request import VerifyRequest
from ckptwatch.worker.protocol import Job, Progress, Ready, Result, decode_message, encode
from tests.tools import flip_bits

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """A real `python -m ckptwatch.worker --device cpu`, spoken to over its pipes."""

    def __init__(self) -> None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckptwatch.worker", "--device", "cpu", "--heartbeat", "30"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert isinstance(self._next(), Ready)
        self.progress: list[str] = []

    def _next(self):
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the worker exited ({self.proc.poll()})"
        return decode_message(line)

    def verify(self, request: VerifyRequest) -> Result:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode(Job("job-1", request)))
        self.proc.stdin.flush()
        while True:
            msg = self._next()
            if isinstance(msg, Progress):
                self.progress.append(msg.tensor)
            elif isinstance(msg, Result):
                return msg

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def worker():
    w = WorkerProcess()
    yield w
    w.close()


def comparable(report: dict) -> dict:
    """A report without what differs between two runs of the same request (seconds, when)."""
    return {k: v for k, v in report.items() if k not in ("timings", "created")}


def test_same_request_same_report_through_cli_and_worker(run_cli, worker, keras_run) -> None:
    request = VerifyRequest(keras_run.candidate, keras_run.previous, golden=keras_run.untrained)
    result = worker.verify(request)
    cli = run_cli(
        "verify", keras_run.candidate, "--previous", keras_run.previous, "--golden", keras_run.untrained, "--json"
    )
    assert result.status == "ok" and cli.returncode in (0, 1), cli.stderr
    assert result.report is not None
    assert comparable(result.report) == comparable(cli.json())
    assert result.report["references"] == {"previous": keras_run.previous, "golden": keras_run.untrained}
    assert worker.progress, "the worker announces each tensor before reading it"


def test_same_failing_report_and_no_fingerprint_for_a_corrupt_checkpoint(
    run_cli, worker, keras_run, copy_ckpt, tmp_path: Path
) -> None:
    prefix = copy_ckpt(keras_run.candidate, tmp_path / "corrupt")
    flip_bits(prefix + ".data-00000-of-00001", 200, 0x10)
    worker_fp, cli_fp = tmp_path / "worker.fp.json", tmp_path / "cli.fp.json"
    result = worker.verify(VerifyRequest(prefix, keras_run.previous, fingerprint_out=str(worker_fp)))
    cli = run_cli("verify", prefix, "--previous", keras_run.previous, "--write-fingerprint", cli_fp, "--json")
    assert result.status == "ok" and result.report is not None and cli.returncode == 1
    assert comparable(result.report) == comparable(cli.json())
    assert any(f["check"] == "integrity.checksum" for f in result.report["findings"])
    # the fingerprint gate: a checkpoint that failed integrity is never fingerprinted, by either
    assert result.fingerprint is None and not worker_fp.exists()
    assert not cli_fp.exists() and "not fingerprinted" in cli.stderr and "integrity.checksum" in cli.stderr


def test_a_passing_candidate_is_fingerprinted_the_same_way(run_cli, worker, keras_run, tmp_path: Path) -> None:
    worker_fp, cli_fp = tmp_path / "worker.fp.json", tmp_path / "cli.fp.json"
    result = worker.verify(VerifyRequest(keras_run.candidate, fingerprint_out=str(worker_fp)))
    cli = run_cli("verify", keras_run.candidate, "--write-fingerprint", cli_fp)
    assert result.fingerprint == str(worker_fp) and cli.returncode == 0, cli.stderr
    assert worker_fp.read_bytes() == cli_fp.read_bytes()


def test_deleted_previous_falls_back_to_its_fingerprint(run_cli, worker, keras_run, copy_ckpt, tmp_path: Path) -> None:
    previous = copy_ckpt(keras_run.previous, tmp_path / "run")
    fingerprint = tmp_path / "previous.fp.json"
    assert run_cli("fingerprint", previous, "-o", fingerprint).returncode == 0
    shutil.rmtree(tmp_path / "run")  # CheckpointManager(max_to_keep) deleted it after the job was sent
    result = worker.verify(VerifyRequest(keras_run.candidate, previous, previous_fingerprint=str(fingerprint)))
    assert result.status == "ok" and result.report is not None
    assert result.report["references"]["previous"] == str(fingerprint)
    assert result.report["drift"]["previous"] is not None


def test_missing_optional_golden_is_a_warning_missing_required_golden_an_error(worker, keras_run, tmp_path) -> None:
    absent = str(tmp_path / "not-mounted" / "ckpt-9")
    optional = worker.verify(VerifyRequest(keras_run.candidate, golden=absent, golden_required=False))
    assert optional.status == "ok" and optional.report is not None
    warned = [f for f in optional.report["findings"] if f["check"] == "integrity.reference"]
    assert warned and warned[0]["severity"] == "warn" and absent in warned[0]["message"]
    required = worker.verify(VerifyRequest(keras_run.candidate, golden=absent))
    assert required.status == "error" and absent in required.message


def test_a_vanished_candidate_is_vanished_not_a_verdict(worker, tmp_path: Path) -> None:
    result = worker.verify(VerifyRequest(str(tmp_path / "gone" / "ckpt-3"), discovered=True))
    assert result.status == "vanished" and "deleted" in result.message


def test_a_bundle_whose_index_is_missing_fails_unless_the_daemon_saw_it_whole(
    worker, keras_run, copy_ckpt, tmp_path: Path
) -> None:
    prefix = copy_ckpt(keras_run.candidate, tmp_path / "half")
    os.remove(prefix + ".index")  # the data shard remains
    given = worker.verify(VerifyRequest(prefix))  # a path someone gave: a broken checkpoint
    assert given.status == "ok" and given.report is not None and given.report["verdict"] == "fail"
    deleted = worker.verify(VerifyRequest(prefix, discovered=True))  # CheckpointManager deletes the index first
    assert deleted.status == "vanished"
