"""A small slice of the quality benchmark (`make bench-quality`, bench/quality/) in `make test`:
two real runs (a Keras MLP with Adam saved by CheckpointManager, a TF1 Saver graph), four faults
injected into copies, every checkpoint verified by a real worker process as the daemon drives it.

Drift is judged against each run's own history, kept as the daemon keeps it: no healthy
checkpoint fails, and every fault of the slice is caught with the right check and tensor."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quality import faults as F
from bench.quality import runs as R
from bench.quality.evaluate import VERDICTS, Config, RunResult, Verifier
from bench.quality.report import markdown, summarize
from bench.quality.worker import Worker
from ckptwatch.policy import Policy

RUNS = ["mlp_adam", "tf1_saver"]
FAULTS = {"bitflip", "nan", "reset_layer", "duplicate_save"}
MEANT = Config("passed", "none")  # the daemon as designed: a failed checkpoint never becomes "previous"
TODAY = Config("integrity", "none")  # the daemon's code today: any checkpoint that passed integrity does


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> dict[Config, tuple[list[RunResult], dict]]:
    root: Path = tmp_path_factory.mktemp("quality")
    runs = R.ensure_runs(root, RUNS, log=lambda _: None)
    faults = F.ensure_faults(root, runs, log=lambda _: None)
    worker = Worker()
    out = {}
    try:
        for config in (MEANT, TODAY):
            verifier = Verifier(worker, Policy(), config)
            results = [verifier.run(runs[n], [f for f in faults[n] if f.cls in FAULTS]) for n in RUNS]
            out[config] = (results, summarize(config, results))
    finally:
        worker.close()
    return out


def test_the_harness_produces_a_confusion_matrix(campaign) -> None:
    for config, (results, summary) in campaign.items():
        matrix = summary["matrix"]
        assert set(matrix) == {"healthy", *FAULTS}
        healthy = sum(len(r.run.checkpoints) for r in results)
        assert matrix["healthy"]["n"] == healthy == sum(matrix["healthy"][v] for v in VERDICTS)
        for cls in FAULTS:
            assert matrix[cls]["n"] == len(RUNS) == sum(matrix[cls][v] for v in VERDICTS)
        assert summary["healthy"]["verdicts"]["error"] == 0
        text = markdown(summary)
        assert f"baseline = {config.baseline}" in text and "| healthy |" in text


@pytest.mark.parametrize("config", [MEANT, TODAY], ids=lambda c: c.label)
def test_integrity_nan_and_reset_fail_with_the_right_check_and_tensor(campaign, config) -> None:
    results, _ = campaign[config]
    for r in results:
        for fo in r.faults:
            if fo.fault.cls in ("bitflip", "nan", "reset_layer"):
                assert fo.verdict == "fail" and fo.caught, (fo.fault.id, [o.findings for o in fo.outcomes])


@pytest.mark.parametrize("config", [MEANT, TODAY], ids=lambda c: c.label)
def test_a_duplicate_save_fails_against_the_checkpoint_before_it(campaign, config) -> None:
    """The same weights at the same training step as the baseline (the checkpoint before it: no
    healthy checkpoint failed)."""
    results, _ = campaign[config]
    for r in results:
        (fo,) = [fo for fo in r.faults if fo.fault.cls == "duplicate_save"]
        assert fo.verdict == "fail" and fo.caught, [o.findings for o in fo.outcomes]


@pytest.mark.parametrize("config", [MEANT, TODAY], ids=lambda c: c.label)
def test_no_healthy_checkpoint_fails(campaign, config) -> None:
    _, summary = campaign[config]
    failed = [d for d in summary["healthy"]["detail"] if d["verdict"] == "fail"]
    assert not failed, failed
