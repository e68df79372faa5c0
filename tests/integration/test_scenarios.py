"""Field failures, reproduced with real TF/Keras and checked through the real CLI:
verdict, exit code, check ids and the tensors they name."""

from __future__ import annotations


def findings(report: dict, check: str | None = None, severity: str | None = None) -> list[dict]:
    return [
        f for f in report["findings"]
        if (check is None or f["check"] == check) and (severity is None or f["severity"] == severity)
    ]  # fmt: skip


def named(report: dict, check: str) -> set[str | None]:
    return {f["tensor"] for f in findings(report, check)}


def problems(report: dict) -> set[tuple[str, str | None]]:
    """(check, tensor) of every fail/warn finding."""
    return {(f["check"], f["tensor"]) for f in report["findings"] if f["severity"] in ("fail", "warn")}


def verify(run_cli, *args, rc: int) -> dict:
    r = run_cli("verify", *args, "--json")
    assert r.returncode == rc, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    return r.json()


# -- structure ------------------------------------------------------------------------------------


def test_tf1_variable_scope_renamed(run_cli, tf1_scopes) -> None:
    report = verify(run_cli, tf1_scopes.renamed, "--golden", tf1_scopes.old[-1], rc=1)
    assert report["verdict"] == "fail"
    (renamed,) = findings(report, "structure.renamed")
    assert renamed["severity"] == "fail" and renamed["reference"] == "golden"
    assert "'model_scope/'" in renamed["message"] and "'different_model_scope/'" in renamed["message"]
    assert "4 tensor(s)" in renamed["message"]
    assert renamed["tensor"].startswith("different_model_scope/")
    # every variable is explained by the rename: nothing is reported missing or unexpected
    assert not findings(report, "structure.missing") and not findings(report, "structure.unexpected")
    # renamed pairs are still compared: drift vs golden exists for every renamed weight
    weights = [t for t in report["tensors"] if t["name"].startswith("different_model_scope/")]
    assert len(weights) == 4 and all(t["drift"]["golden"] is not None for t in weights)


def test_tf2_attribute_renamed(run_cli, tf2_attr_rename) -> None:
    report = verify(run_cli, tf2_attr_rename.new, "--golden", tf2_attr_rename.old, rc=1)
    (renamed,) = findings(report, "structure.renamed")
    assert "'net/encoder/'" in renamed["message"] and "'net/enc/'" in renamed["message"]
    assert renamed["tensor"].startswith("net/enc/")
    assert not findings(report, "structure.missing") and not findings(report, "structure.unexpected")


def test_layer_added_is_unexpected_not_a_rename(run_cli, keras_run) -> None:
    report = verify(run_cli, keras_run.added_layer, "--golden", keras_run.candidate, rc=0)
    assert report["verdict"] == "warn"
    assert named(report, "structure.unexpected") == keras_run.added_keys
    assert all(f["reference"] == "golden" for f in findings(report, "structure.unexpected"))
    assert not findings(report, "structure.renamed")
    assert not findings(report, "structure.missing")
    assert not findings(report, "structure.shape")


def test_layer_added_fails_under_replica(run_cli, keras_run) -> None:
    """A replica must match golden exactly: an extra layer is a failure there."""
    report = verify(run_cli, keras_run.added_layer, "--profile", "replica", "--golden", keras_run.candidate, rc=1)
    assert {f["tensor"] for f in findings(report, "structure.unexpected", "fail")} == keras_run.added_keys


# -- drift (training profile) ----------------------------------------------------------------------


def test_normal_training_step_passes(run_cli, keras_run) -> None:
    report = verify(run_cli, keras_run.candidate, "--previous", keras_run.previous, rc=0)
    assert report["verdict"] == "pass"
    assert problems(report) == set()
    d = report["drift"]["previous"]
    assert 0 < d["relative_l2"] < 0.5 and d["changed_fraction"] > 0.5 and d["cosine"] > 0.9
    assert report["drift"]["golden"] is None
    assert report["checkpoint"]["step"] == 3


def test_weights_reset_to_initializer(run_cli, keras_run) -> None:
    report = verify(run_cli, keras_run.reset, "--previous", keras_run.candidate, rc=1)
    assert report["verdict"] == "fail"
    per_tensor = {(f["check"], f["tensor"]) for f in report["findings"] if f["check"] in ("drift.jump", "drift.reset")}
    for key in keras_run.kernels.values():
        assert ("drift.jump", key) in per_tensor, key
    for key in keras_run.biases.values():  # zero again after training: back at the initializer
        assert ("drift.reset", key) in per_tensor, key
    assert ("drift.jump", None) in per_tensor  # the whole checkpoint moved too
    assert report["drift"]["previous"]["relative_l2"] > 1.0


def test_sudden_return_to_golden_is_a_reset(run_cli, keras_run, copy_ckpt, tmp_path) -> None:
    """Training restarted from the golden weights: a big jump vs previous, and now equal to golden."""
    golden = copy_ckpt(keras_run.reset, tmp_path / "golden")
    report = verify(run_cli, keras_run.reset, "--previous", keras_run.candidate, "--golden", golden, rc=1)
    (whole,) = [f for f in findings(report, "drift.reset") if f["tensor"] is None]
    assert whole["reference"] == "previous" and "golden" in whole["message"]
    assert not [f for f in findings(report, "drift.jump") if f["tensor"] is None]  # reported as a reset instead
    assert report["drift"]["golden"]["relative_l2"] == 0.0


def test_nan_in_one_kernel(run_cli, keras_run) -> None:
    report = verify(run_cli, keras_run.nan, rc=1)
    assert report["verdict"] == "fail"
    (nf,) = findings(report, "nonfinite")
    assert nf["tensor"] == keras_run.kernels[keras_run.nan_layer]
    assert nf["severity"] == "fail"
    assert f"{keras_run.nan_count} NaN" in nf["message"]
    stats = {t["name"]: t["stats"] for t in report["tensors"]}[nf["tensor"]]
    assert stats["nan"] == keras_run.nan_count and stats["inf"] == 0
    # with a previous checkpoint too: still named, and nothing else is called non-finite
    report = verify(run_cli, keras_run.nan, "--previous", keras_run.candidate, rc=1)
    assert named(report, "nonfinite") == {keras_run.kernels[keras_run.nan_layer]}


def test_frozen_layer_warns_and_frozen_option_silences_it(run_cli, frozen_run) -> None:
    report = verify(run_cli, frozen_run.candidate, "--previous", frozen_run.previous, rc=0)
    assert report["verdict"] == "warn"
    assert named(report, "drift.frozen") == frozen_run.frozen_keys
    assert frozen_run.frozen_kernel in named(report, "drift.frozen")
    assert {f["severity"] for f in findings(report, "drift.frozen")} == {"warn"}
    assert problems(report) == {("drift.frozen", k) for k in frozen_run.frozen_keys}

    # the exact keys ...
    args = [a for k in sorted(frozen_run.frozen_keys) for a in ("--frozen", k)]
    report = verify(run_cli, frozen_run.candidate, "--previous", frozen_run.previous, *args, rc=0)
    assert report["verdict"] == "pass" and not findings(report, "drift.frozen")

    # ... or a glob on the display name of the layer
    display = {t["name"]: t["display"] for t in report["tensors"]}[frozen_run.frozen_kernel]
    glob = display.rsplit("/", 1)[0] + "/*"
    report = verify(run_cli, frozen_run.candidate, "--previous", frozen_run.previous, "--frozen", glob, rc=0)
    assert report["verdict"] == "pass" and not findings(report, "drift.frozen")


def test_duplicate_save(run_cli, keras_run) -> None:
    report = verify(run_cli, keras_run.duplicate, "--previous", keras_run.candidate, rc=1)
    (dup,) = findings(report, "drift.unchanged")
    assert dup["severity"] == "fail" and dup["tensor"] is None and dup["reference"] == "previous"
    assert report["drift"]["previous"]["relative_l2"] == 0.0
    assert report["drift"]["previous"]["changed_fraction"] == 0.0
    assert not findings(report, "drift.frozen")  # one global finding, not one per tensor


def test_first_training_step_after_an_untrained_save_is_not_a_rename(run_cli, keras_run) -> None:
    r = run_cli("verify", keras_run.previous, "--previous", keras_run.untrained, "--json")
    assert r.returncode in (0, 1), r.stderr
    report = r.json()
    assert not findings(report, "structure.renamed")
    assert not findings(report, "structure.missing") and not findings(report, "structure.unexpected")
    # every kernel is compared with its earlier value
    drift = {t["name"]: t["drift"]["previous"] for t in report["tensors"]}
    assert all(drift[k] is not None for k in keras_run.kernels.values())


def test_nan_in_a_tensor_sliced_across_shards(run_cli, sliced_sharding) -> None:
    report = verify(run_cli, sliced_sharding.candidate, "--previous", sliced_sharding.previous, rc=1)
    assert named(report, "nonfinite") == {sliced_sharding.sliced_key}
    # sliced tensors are read and compared: only m/d, which the fixture leaves alone, is unchanged
    assert named(report, "drift.frozen") == {"m/d/.ATTRIBUTES/VARIABLE_VALUE"}


def test_integer_variables_are_not_exploding_weights(run_cli, tf, tmp_path) -> None:
    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([8, 4], seed=[1, 2]))
            self.step = tf.Variable(2_500_000, dtype=tf.int64)  # a tf.Module training loop's own step counter
            self.token_ids = tf.Variable(tf.constant([17, 40_000, 3_000_000, 9_999_999], tf.int64))

    prefix = tf.train.Checkpoint(model=Model()).write(str(tmp_path / "ckpt-2500000"))
    report = verify(run_cli, prefix, rc=0)
    assert not findings(report, "drift.explosion")


# -- replica profile ---------------------------------------------------------------------------------


def test_replica_exact_copy_passes(run_cli, keras_run) -> None:
    report = verify(run_cli, keras_run.exact_copy, "--profile", "replica", "--golden", keras_run.candidate, rc=0)
    assert report["verdict"] == "pass"
    assert problems(report) == set()
    g = report["drift"]["golden"]
    assert g["relative_l2"] == 0.0 and g["max_abs"] == 0.0 and g["changed_fraction"] == 0.0


def test_replica_perturbed_kernel_fails(run_cli, keras_run) -> None:
    report = verify(run_cli, keras_run.perturbed, "--profile", "replica", "--golden", keras_run.candidate, rc=1)
    assert report["verdict"] == "fail"
    assert named(report, "drift.replica") == {keras_run.kernels[keras_run.noisy_layer]}
    (f,) = findings(report, "drift.replica")
    assert f["severity"] == "fail" and f["reference"] == "golden"
    assert problems(report) == {("drift.replica", keras_run.kernels[keras_run.noisy_layer])}


def test_replica_without_golden_is_a_usage_error(run_cli, keras_run) -> None:
    r = run_cli("verify", keras_run.candidate, "--profile", "replica", "--previous", keras_run.previous)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "golden" in lines[0] and "Traceback" not in r.stderr
