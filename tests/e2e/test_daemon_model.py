"""Model-aware checks in the running daemon: the same scenarios as
tests/integration/test_model_checks.py, each a watch with its own [watch.model], all
verified by one worker that imports TensorFlow once. Verdicts, findings and the
model metrics are read back from /api and /metrics."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptwatch.model.checks import add_model_checks
from ckptwatch.policy import Policy
from ckptwatch.verify.engine import verify_paths
from ckptwatch.verify.request import ModelSpec
from tests import zoo

from .conftest import ROOT, install, outcome, report_of

TESTS = str(ROOT / "tests")


pytestmark = pytest.mark.usefixtures("op_determinism_off_afterwards")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    f = zoo.build_scenarios(str(tmp_path_factory.mktemp("zoo")))
    f["outputs"] = str(tmp_path_factory.mktemp("outputs") / "golden.npz")
    report, _ = verify_paths(f["golden"])
    add_model_checks(
        report,
        f["golden"],
        None,
        ModelSpec("tests.zoo:mlp_and_optimizer", f["probe"], outputs_out=f["outputs"]),
        Policy(),
    )
    assert report.verdict == "pass" and os.path.isfile(f["outputs"])
    return f


# watch name -> (scenario file, [watch.model] table, expected verdict, checks that must fail)
SCENARIOS = {
    "healthy": ("healthy", {"factory": "zoo:mlp_and_optimizer", "smoke_step": True}, "pass", set()),
    "tf1-renamed": ("tf1", {"factory": "zoo:tf1_renamed_scope"}, "fail", {"restore.renamed", "restore.unmatched"}),
    "tf2-renamed": ("net", {"factory": "zoo:net_renamed"}, "fail", {"restore.renamed", "restore.unmatched"}),
    "v2-extra-layer": ("healthy", {"factory": "zoo:mlp_v2_and_optimizer"}, "fail", {"restore.shape"}),
    "no-optimizer": ("healthy", {"factory": "zoo:mlp_model_only"}, "fail", {"restore.unused"}),
    "perturbed": ("perturbed", {"factory": "zoo:mlp_and_optimizer"}, "fail", {"functional.agreement"}),
    # the default golden_mode (target): a golden the run's history never showed reached is not judged
    "perturbed-target": ("perturbed", {"factory": "zoo:mlp_and_optimizer"}, "pass", set()),
    "nan": ("nan", {"factory": "zoo:mlp_and_optimizer", "smoke_step": True}, "fail", {"functional.smoke"}),
    "keras-file": ("keras", {}, "pass", set()),
    "savedmodel": ("savedmodel", {}, "pass", set()),
    "legacy-h5": ("legacy_h5", {}, "pass", set()),
    "legacy-lambda": ("legacy_lambda", {}, "fail", {"restore.unsafe"}),
    "lambda": ("lambda", {}, "fail", {"restore.unsafe"}),
    "hangs": ("healthy", {"factory": "zoo:hangs", "timeout": 2}, "error", {"functional.timeout"}),
    "golden-outputs": ("perturbed", {"factory": "zoo:mlp_and_optimizer", "golden_outputs": "OUTPUTS"}, "fail",
                       {"functional.divergence"}),
}  # fmt: skip


def _commit_file(src: str, watch_dir: Path) -> str:
    tmp = watch_dir.parent / f".{watch_dir.name}-{os.path.basename(src)}"
    shutil.copyfile(src, tmp)
    dest = watch_dir / os.path.basename(src)
    os.replace(tmp, dest)
    return str(dest)


def test_daemon_runs_every_model_scenario(daemon_factory, files, tmp_path):
    watches, dirs = [], {}
    for name, (scenario, model, _, _) in SCENARIOS.items():
        dirs[name] = tmp_path / "watched" / name
        dirs[name].mkdir(parents=True)
        table = {**model, "probe": files["probe"], "python_path": [TESTS]}
        if table.get("golden_outputs") == "OUTPUTS":
            table["golden_outputs"] = files["outputs"]
        watch = {"name": name, "path": str(dirs[name]), "model": table}
        if scenario in ("healthy", "perturbed", "nan") and "golden_outputs" not in table:
            watch["golden"] = files["golden"]
        if name in ("perturbed", "golden-outputs"):  # a fine-tune of the golden: compared from the start
            watch["policy"] = {"golden_mode": "finetune"}
        watches.append(watch)
    d = daemon_factory(watches, daemon={"settle_seconds": 0.2, "poll_interval": 0.2})
    assert "--tensorflow" in " ".join(d.workers()[0].cmdline()), "model watches: the worker imports TF at start"

    committed = {}
    for name, (scenario, _, _, _) in SCENARIOS.items():
        src = files[scenario]
        if scenario == "savedmodel":  # exported in place, as serving exports are: export/<version>/
            committed[name] = str(dirs[name] / "1")
            zoo.save_serving_model(committed[name])
        elif src.endswith((".keras", ".h5")):
            committed[name] = _commit_file(src, dirs[name])
        else:
            committed[name] = install(src, dirs[name], os.path.basename(src), staging=tmp_path / "staging")
    for name, (_, _, verdict, must_fail) in SCENARIOS.items():
        ev = outcome(d, committed[name], timeout=240)
        assert ev["event"] == "checkpoint verified", ev
        report = report_of(d, committed[name])
        failing = {f["check"] for f in report["findings"] if f["severity"] == "fail"}
        assert report["verdict"] == verdict, (name, report["findings"])
        assert must_fail <= failing, (name, failing)
        if verdict != "error":
            assert report["model"] is not None and report["model"]["device"] == "cpu", (name, report["model"])

    healthy = report_of(d, committed["healthy"])["model"]
    assert healthy["restore"]["fidelity"]["mismatched"] == 0 and healthy["smoke_step"]["changed"] == 4
    served = report_of(d, committed["savedmodel"])
    assert served["checkpoint"]["format"] == "savedmodel" and served["model"]["source"] == "saved_model"
    assert served["model"]["functional"]["nonfinite_outputs"] == 0
    second = str(dirs["savedmodel"] / "2")  # the next export: compared with the first as "previous"
    zoo.save_serving_model(second)
    started = d.wait_for("verification started", timeout=180, checkpoint=second)  # a worker restart may come first
    assert started["previous"] == committed["savedmodel"]
    assert outcome(d, second, timeout=120)["event"] == "checkpoint verified"
    assert report_of(d, second)["drift"]["previous"] is not None
    (timeout,) = [f for f in report_of(d, committed["hangs"])["findings"] if f["severity"] == "fail"]
    assert "took longer than 2 s (raise --model-timeout or [watch.model] timeout" in timeout["message"], timeout
    assert d.wait_for("worker exited", reason="exit code 70")["device"] == "cpu"  # the stuck thread goes with it
    assert d.events("verification lost, retrying") == [], "no job went to the worker on its way out"
    renamed = report_of(d, committed["tf2-renamed"])
    assert [f["tensor"] for f in renamed["findings"] if f["check"] == "restore.unmatched"] == ["(root).model.backbone"]

    text = d.scrape()
    assert d.metric("ckptwatch_functional_agreement_ratio", text, watch="healthy", reference="golden") >= 0.95
    assert d.metric("ckptwatch_functional_agreement_ratio", text, watch="perturbed", reference="golden") < 0.5
    assert d.metric("ckptwatch_functional_output_max_abs_diff", text, watch="perturbed", reference="golden") > 1
    assert d.metric("ckptwatch_restore_unmatched_objects", text, watch="tf2-renamed") == 1
    assert d.metric("ckptwatch_restore_unmatched_objects", text, watch="healthy") == 0
    assert d.metric("ckptwatch_last_verdict", text, watch="lambda", verdict="fail") == 1
