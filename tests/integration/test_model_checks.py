"""Model-aware checks through `ckptwatch verify --model/--probe`: real models written by
real TF/Keras savers (tests/zoo.py), restored by TensorFlow in the CLI's child process.

Each scenario of the issue: a TF1 variable_scope renamed, a TF2 attribute renamed, a
checkpoint of model v1 restored into v2 (one more layer), optimizer state left unused,
weights perturbed with the structure intact, NaN in one kernel, a SavedModel and a
.keras file checked with no factory, a .keras with a Lambda layer refused, stored
golden outputs instead of a golden model, and the smoke step.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ckptwatch.model.checks import add_model_checks
from ckptwatch.policy import Policy
from ckptwatch.verify.engine import verify_paths
from ckptwatch.verify.request import ModelSpec
from tests import zoo

Z = "tests.zoo:"  # the CLI runs with the repository root as its working directory


pytestmark = pytest.mark.usefixtures("op_determinism_off_afterwards")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    return zoo.build_scenarios(str(tmp_path_factory.mktemp("zoo")))


def _commands(f: dict[str, str], outputs: str) -> dict[str, list]:
    probe = ["--probe", f["probe"]]
    mlp = ["--model", Z + "mlp_and_optimizer", *probe]
    return {
        "healthy": [f["healthy"], "--golden", f["golden"], *mlp, "--smoke-step"],
        "tf1_renamed": [f["tf1"], "--model", Z + "tf1_renamed_scope", *probe],
        "tf1_same": [f["tf1"], "--model", Z + "tf1_model_scope", *probe],
        "tf2_renamed": [f["net"], "--model", Z + "net_renamed", *probe],
        "v2_extra_layer": [f["healthy"], "--model", Z + "mlp_v2_and_optimizer", *probe],
        "no_optimizer": [f["healthy"], "--model", Z + "mlp_model_only", *probe],
        "perturbed": [f["perturbed"], "--golden", f["golden"], "--golden-mode", "finetune", *mlp],
        "perturbed_target": [f["perturbed"], "--golden", f["golden"], *mlp],
        "nan": [f["nan"], "--golden", f["golden"], *mlp, "--smoke-step"],
        "savedmodel": [f["savedmodel"], *probe],
        "keras": [f["keras"], *probe, "--golden", f["keras"]],
        "lambda": [f["lambda"], *probe],
        "golden_written": [f["golden"], *mlp, "--write-outputs", outputs],
    }


@pytest.fixture(scope="module")
def cli(run_cli, files, tmp_path_factory) -> dict[str, tuple[int, dict]]:
    """Every scenario through `ckptwatch verify --json`, two at a time (each is a fresh
    interpreter importing TensorFlow)."""
    outputs = str(tmp_path_factory.mktemp("outputs") / "golden-outputs.npz")
    commands = _commands(files, outputs)
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(commands, pool.map(lambda args: verify(run_cli, *args), commands.values())))
    results["_outputs"] = (0, {"path": outputs})
    return results


def verify(run_cli, *args) -> tuple[int, dict]:
    r = run_cli("verify", *args, "--json")
    assert r.returncode in (0, 1), f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr
    return r.returncode, r.json()


def checks(report: dict, severity: str = "fail") -> set[str]:
    return {f["check"] for f in report["findings"] if f["severity"] == severity}


def named(report: dict, check: str) -> list[str]:
    return [f["tensor"] or "" for f in report["findings"] if f["check"] == check]


def in_process(candidate: str, policy: Policy | None = None, golden: str | None = None, **spec) -> dict:
    """The same engine + model checks the CLI's child runs, in this process (TF is already loaded)."""
    policy = policy or Policy()
    report, _ = verify_paths(candidate, None, golden, policy)
    add_model_checks(report, candidate, golden, ModelSpec(**spec), policy)
    return report.to_dict()


def test_healthy_checkpoint_restores_bit_exact_runs_and_trains(cli):
    code, rep = cli["healthy"]
    assert code == 0 and rep["verdict"] == "pass", rep["findings"]
    m = rep["model"]
    assert m["device"] == "cpu" and m["source"] == f"factory {Z}mlp_and_optimizer"
    r = m["restore"]
    assert r["method"] == "object-graph" and r["unmatched"] == [] and r["unused"] == []
    assert r["fidelity"]["checked"] == r["matched"] > 4 and r["fidelity"]["mismatched"] == 0
    assert r["tf_status"] == {"assert_existing_objects_matched": "ok", "assert_consumed": "ok"}
    f = m["functional"]
    assert f["reference"] == "golden" and f["agreement"] >= 0.95 and 0 < f["max_abs_diff"] < 0.5
    assert f["accuracy"] is not None and f["batch"] == zoo.BATCH
    s = m["smoke_step"]
    assert s["ran"] and np.isfinite(s["loss"]) and s["changed"] == s["trainable"] == 4


def test_tf1_variable_scope_renamed(cli):
    code, rep = cli["tf1_renamed"]
    assert code == 1 and rep["verdict"] == "fail"
    assert {"restore.renamed", "restore.unmatched", "restore.unused"} <= checks(rep)
    assert sorted(named(rep, "restore.unmatched")) == ["renamed_scope/dense/bias", "renamed_scope/dense/kernel"]
    assert sorted(named(rep, "restore.unused")) == ["model_scope/dense/bias", "model_scope/dense/kernel"]
    renamed = next(f for f in rep["findings"] if f["check"] == "restore.renamed")
    assert "'model_scope/'" in renamed["message"] and "'renamed_scope/'" in renamed["message"]
    assert rep["model"]["restore"]["method"] == "name-based"
    code, rep = cli["tf1_same"]  # the same checkpoint into the code that wrote it: clean
    assert code == 0 and rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["restore"]["fidelity"] == {"checked": 2, "mismatched": 0}


def test_tf2_attribute_renamed_on_a_module(cli):
    code, rep = cli["tf2_renamed"]
    assert code == 1
    assert named(rep, "restore.unmatched") == ["(root).model.backbone"]
    assert named(rep, "restore.unused") == ["(root).model.encoder"]
    renamed = next(f for f in rep["findings"] if f["check"] == "restore.renamed")
    assert "model/encoder" in renamed["message"] and "model/backbone" in renamed["message"]
    tf_status = rep["model"]["restore"]["tf_status"]
    assert tf_status["assert_existing_objects_matched"] != "ok", "TensorFlow agrees: an object got no value"


def test_v1_checkpoint_into_v2_with_an_extra_layer(cli):
    code, rep = cli["v2_extra_layer"]
    assert code == 1
    shape = [f for f in rep["findings"] if f["check"] == "restore.shape"]
    assert shape and any("mlp/extra/kernel" in f["message"] for f in shape), shape
    assert any("logits" in f["message"] for f in rep["findings"] if f["check"] == "restore.unmatched")
    assert rep["model"]["functional"] is None, "a restore TF refuses leaves nothing to run"


def test_optimizer_state_unused_when_restoring_without_the_optimizer(cli, files):
    code, rep = cli["no_optimizer"]
    assert code == 1 and checks(rep) == {"restore.unused"}
    unused = named(rep, "restore.unused")
    assert "(root).optimizer._iterations" in unused and all(u.startswith("(root).optimizer") for u in unused)
    assert rep["model"]["restore"]["tf_status"]["assert_consumed"].startswith("Unresolved object in checkpoint")
    assert rep["model"]["restore"]["tf_status"]["assert_existing_objects_matched"] == "ok"
    # a serving model may legitimately leave the optimizer behind: the policy says so
    spec = {"factory": Z + "mlp_model_only", "probe": files["probe"]}
    rep = in_process(files["healthy"], Policy(allow_unused=["(root).optimizer*"]), **spec)
    assert rep["verdict"] == "pass" and checks(rep, "info") >= {"restore.unused"}, rep["findings"]
    rep = in_process(files["healthy"], Policy(restore="existing"), **spec)
    assert rep["verdict"] == "warn" and checks(rep, "warn") == {"restore.unused"}


def test_perturbed_weights_same_structure_diverge_functionally(cli):
    code, rep = cli["perturbed"]
    assert code == 1
    assert not any(c.startswith(("structure.", "integrity.", "restore.")) for c in checks(rep))
    assert {"functional.divergence", "functional.agreement"} & checks(rep)
    f = rep["model"]["functional"]
    assert f["relative_diff"] > 1.0 and f["agreement"] < 0.5
    assert all(x["reference"] == "golden" for x in rep["findings"] if x["check"].startswith("functional."))


def test_a_golden_the_run_has_not_reached_is_reported_not_failed(cli):
    """The default golden_mode (target): far from the golden, with no history showing the run
    ever reached it (an early checkpoint of a run from scratch), the comparison is info."""
    code, rep = cli["perturbed_target"]
    assert code == 0 and rep["verdict"] == "pass", rep["findings"]
    info = [x for x in rep["findings"] if x["check"] in ("functional.divergence", "functional.agreement")]
    assert info and all(x["severity"] == "info" and "not reached" in x["message"] for x in info)
    assert rep["model"]["functional"]["golden_met"] is False


def test_nan_in_one_kernel_and_the_smoke_step_on_it(cli):
    code, rep = cli["nan"]
    assert code == 1
    assert {"nonfinite", "functional.nonfinite", "functional.smoke"} <= checks(rep)
    assert len(named(rep, "nonfinite")) == 1, "one kernel holds the NaN"
    assert rep["model"]["functional"]["nonfinite_outputs"] > 0
    smoke = next(f for f in rep["findings"] if f["check"] == "functional.smoke")
    assert "non-finite loss" in smoke["message"]


def test_savedmodel_and_keras_file_checked_with_a_probe_and_no_factory(cli):
    code, rep = cli["savedmodel"]
    assert code == 0 and rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["source"] == "saved_model"
    assert rep["model"]["functional"]["nonfinite_outputs"] == 0 and rep["model"]["functional"]["accuracy"] is not None
    code, rep = cli["keras"]
    assert code == 0 and rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["source"] == "keras file"
    assert rep["model"]["functional"]["agreement"] == 1.0 and rep["model"]["functional"]["max_abs_diff"] == 0.0


def test_keras_file_with_a_lambda_layer_is_refused(cli):
    code, rep = cli["lambda"]
    assert code == 1
    unsafe = [f for f in rep["findings"] if f["check"] == "restore.unsafe"]
    assert len(unsafe) == 1 and "Lambda" in unsafe[0]["message"] and "'scale'" in unsafe[0]["message"]
    assert rep["model"]["functional"] is None


def test_stored_golden_outputs_instead_of_a_golden_model(cli, files):
    code, _ = cli["golden_written"]
    outputs = cli["_outputs"][1]["path"]
    assert code == 0
    with np.load(outputs, allow_pickle=False) as stored:
        assert stored.files == ["output"] and stored["output"].shape == (zoo.BATCH, zoo.CLASSES)
    spec = {"factory": Z + "mlp_and_optimizer", "probe": files["probe"], "golden_outputs": outputs}
    rep = in_process(files["healthy"], **spec)
    assert rep["verdict"] == "pass" and rep["model"]["functional"]["reference"] == "golden_outputs", rep["findings"]
    rep = in_process(files["perturbed"], Policy(golden_mode="finetune"), **spec)
    assert rep["verdict"] == "fail" and {"functional.divergence", "functional.agreement"} & checks(rep)


def test_model_options_errors_are_one_line(run_cli, files, tmp_path):
    r = run_cli("verify", files["healthy"], "--model", "no_such_module:build")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("ckptwatch: error: factory")
    assert "Traceback" not in r.stderr
    r = run_cli("verify", files["healthy"], "--smoke-step")
    assert r.returncode == 2 and "need --probe" in r.stderr
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    r = run_cli("verify", files["keras"], "--probe", pickled)
    assert r.returncode == 2 and "not a plain array file" in r.stderr, r.stderr[-500:]


def test_model_checks_past_their_timeout_are_an_error(run_cli, files):
    probe = ["--probe", files["probe"]]
    r = run_cli("verify", files["healthy"], "--model", Z + "hangs", *probe, "--model-timeout", "2", timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert r.stderr.strip().splitlines()[-1] == (
        f"ckptwatch: error: model-aware checks of {files['healthy']} took longer than 2 s "
        "(raise --model-timeout or [watch.model] timeout if the model needs longer)"
    )
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_report_model_section_is_null_without_model_checks(run_cli, files):
    r = run_cli("verify", files["healthy"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["model"] is None


# -- Keras weight files into a factory-built model: Keras' loader, then a round trip ------------------


def test_keras_weights_file_restored_bit_exact_by_round_trip(files):
    rep = in_process(files["weights"], factory=Z + "mlp_and_optimizer", probe=files["probe"])
    assert rep["verdict"] == "pass", rep["findings"]
    r = rep["model"]["restore"]
    assert r["method"] == "keras-load_weights+round-trip"
    assert r["unmatched"] == [] and r["unused"] == [] and r["initializer"] == []
    assert r["fidelity"] == {"checked": r["matched"], "mismatched": 0} and r["matched"] > 4  # + optimizer state


def test_keras_file_into_a_factory_goes_through_the_round_trip_too(files):
    rep = in_process(files["keras"], factory=Z + "mlp_and_optimizer", probe=files["probe"])
    assert rep["verdict"] == "pass", rep["findings"]
    r = rep["model"]["restore"]
    assert r["method"] == "keras-load_weights+round-trip" and r["fidelity"]["mismatched"] == 0
    assert r["fidelity"]["checked"] == r["matched"] > 4 and r["unused"] == [] == r["unmatched"]


def test_keras_weights_file_without_the_optimizer_leaves_its_state_unused(files):
    spec = {"factory": Z + "mlp_model_only", "probe": files["probe"]}
    rep = in_process(files["weights"], **spec)
    assert rep["verdict"] == "fail" and checks(rep) == {"restore.unused"}, rep["findings"]
    unused = named(rep, "restore.unused")
    assert unused and all(u.startswith("optimizer/vars/") for u in unused), unused
    rep = in_process(files["weights"], Policy(allow_unused=["optimizer/*"]), **spec)
    assert rep["verdict"] == "pass" and checks(rep, "info") >= {"restore.unused"}, rep["findings"]


def test_keras_weights_file_into_a_model_with_another_layer_is_refused(files):
    rep = in_process(files["weights"], factory=Z + "mlp_v2_and_optimizer", probe=files["probe"])
    assert rep["verdict"] == "fail" and "restore.error" in checks(rep), rep["findings"]
    assert rep["model"]["functional"] is None


def test_keras_weights_converted_on_load_are_named(files):
    rep = in_process(files["float64_weights"], factory=Z + "mlp_model_only", probe=files["probe"])
    assert rep["verdict"] == "fail" and checks(rep) == {"restore.fidelity"}, rep["findings"]
    assert sorted(named(rep, "restore.fidelity")) == [f"layers/dense{s}/vars/{i}" for s in ("", "_1") for i in (0, 1)]
    assert all("float32, the file float64" in f["message"] for f in rep["findings"] if f["check"] == "restore.fidelity")


def test_legacy_full_model_h5_is_loaded_in_safe_mode_with_no_factory(files):
    rep = in_process(files["legacy_h5"], probe=files["probe"])
    assert rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["source"] == "hdf5 file"
    assert rep["model"]["restore"]["method"] == "keras-load_model(safe_mode=True)"
    assert rep["model"]["functional"]["nonfinite_outputs"] == 0
    rep = in_process(files["legacy_lambda"], probe=files["probe"])
    assert rep["verdict"] == "fail" and checks(rep) == {"restore.unsafe"}, rep["findings"]
    (unsafe,) = [f["message"] for f in rep["findings"] if f["check"] == "restore.unsafe"]
    assert "refused to load lambda.h5 in safe mode: layer 'scale' is a Lambda layer" in unsafe, unsafe
    rep = in_process(files["weights"], probe=files["probe"])  # weights only: nothing to build a model from
    assert rep["verdict"] == "warn" and checks(rep, "warn") == {"restore.skipped"}, rep["findings"]


def test_legacy_h5_naming_a_class_keras_does_not_know_is_refused_as_unsafe(files, tmp_path):
    """A Keras 2 config names custom classes with no `module`: every class named must be one of
    Keras' own, decided from the JSON before Keras is asked (issue 13, item 5)."""
    import h5py

    path = tmp_path / "custom.h5"
    shutil.copy(files["legacy_h5"], path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layer = config["config"]["layers"][-1]
        layer["class_name"] = "MyCustomDense"
        for obj in (config, *config["config"]["layers"]):
            obj.pop("module", None)
            obj.pop("registered_name", None)
        f.attrs["model_config"] = json.dumps(config)
    rep = in_process(str(path), probe=files["probe"])
    assert rep["verdict"] == "fail" and checks(rep) == {"restore.unsafe"}, rep["findings"]
    (unsafe,) = [f["message"] for f in rep["findings"] if f["check"] == "restore.unsafe"]
    assert "is 'MyCustomDense', a custom class (not one of Keras' own)" in unsafe, unsafe


def test_legacy_keras2_h5_is_loaded_without_a_round_trip(files):
    rep = in_process(files["legacy_h5"], factory=Z + "mlp_model_only", probe=files["probe"])
    assert rep["verdict"] in ("pass", "warn"), rep["findings"]
    r = rep["model"]["restore"]
    assert r["method"] == "keras-load_weights" and r["fidelity"] is None
    assert rep["model"]["functional"]["nonfinite_outputs"] == 0


@pytest.mark.parametrize(("name", "factory"), [("weights", "mlp_and_optimizer"), ("legacy_h5", None)])
def test_a_held_keras_file_deleted_before_its_check_is_still_checked(files, tmp_path, name, factory):
    """Read through the daemon's held descriptor after CheckpointManager-style deletion: libhdf5
    cannot open a link whose real path is gone, so Keras' loaders get a private copy."""
    import shutil

    from ckptwatch.daemon.discovery import find_candidates
    from ckptwatch.daemon.holding import Holder
    from ckptwatch.model.checks import add_model_checks as model_checks
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.verify.verification import verify_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(files[name], run / os.path.basename(files[name]))
    (c,) = find_candidates("run", str(run))
    held = Holder().hold(c)
    assert held is not None
    os.unlink(c.path)
    spec = ModelSpec(factory=Z + factory if factory else None, probe=files["probe"])
    try:
        rep = verify_checkpoint(
            VerifyRequest(c.path, model=spec, held=held.stand_ins(), discovered=True), None, model_checks
        )
    finally:
        held.close()
    report = rep.report.to_dict()
    assert report["verdict"] == "pass", report["findings"]
    assert report["model"]["restore"]["method"].startswith(("keras-load_weights", "keras-load_model"))
    assert os.listdir(tmp_path) == ["run"] and not os.listdir(run)
