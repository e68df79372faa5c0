"""Names people know (issue 15): the Keras layer and variable beside the exact key, in JSON
(`display_name`) and in the tables, from what each real file holds (ckptwatch.formats.known)."""

from __future__ import annotations

import numpy as np
import pytest

from ckptwatch.formats.known import legacy_h5_name
from tests.integration.test_cli import parse_table


def _model(keras, sequential: bool):
    keras.utils.set_random_seed(3)
    if sequential:
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, name="hidden"), keras.layers.Dense(3, name="logits")], name="seq"
        )
    else:
        inp = keras.Input((6,), name="features")
        h = keras.layers.Dense(8, name="hidden")(inp)
        h = keras.layers.BatchNormalization(name="norm")(h)
        model = keras.Model(inp, keras.layers.Dense(3, name="logits")(h), name="func")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    model.fit(x, x[:, :3], epochs=1, batch_size=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def named(tf, keras, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("named")
    out = {}
    for kind in ("functional", "sequential"):
        model = _model(keras, kind == "sequential")
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        out[f"{kind}.ckpt"] = ckpt.write(str(d / kind / "ckpt-1"))
        out[f"{kind}.keras"] = str(d / f"{kind}.keras")
        model.save(out[f"{kind}.keras"])
        logits = model.get_layer("logits").kernel
        bad = logits.numpy()
        bad[0, 0] = np.nan
        logits.assign(bad)
        out[f"{kind}.nan.keras"] = str(d / f"{kind}-nan.keras")
        model.save(out[f"{kind}.nan.keras"])
        out[f"{kind}.nan.ckpt"] = ckpt.write(str(d / f"{kind}-nan" / "ckpt-2"))
    return out


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_keras_archive_tensors_carry_the_layer_names(run_cli, named, kind: str) -> None:
    doc = run_cli("inspect", named[f"{kind}.keras"], "--json").json()
    shown = {t["display_name"] for t in doc["tensors"] if t["kind"] == "weight"}
    assert {"hidden/kernel", "hidden/bias", "logits/kernel", "logits/bias"} <= shown
    if kind == "functional":
        assert {"norm/gamma", "norm/beta", "norm/moving_mean", "norm/moving_variance"} <= shown
    for t in doc["tensors"]:
        assert t["name"].startswith(("layers/", "optimizer/"))  # the exact key stays beside it
    rows = parse_table(run_cli("inspect", named[f"{kind}.keras"]).stdout, "TENSOR")
    assert {"hidden/kernel", "logits/bias"} <= {row["NAME"] for row in rows}


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_a_finding_names_the_layer_beside_the_key(run_cli, named, kind: str) -> None:
    r = run_cli("verify", named[f"{kind}.nan.keras"], "--json")
    assert r.returncode == 1
    (f,) = [f for f in r.json()["findings"] if f["check"] == "nonfinite"]
    assert f["display_name"] == "logits/kernel" and f["tensor"].startswith("layers/dense")
    human = run_cli("verify", named[f"{kind}.nan.keras"])
    assert any("logits/kernel" in line and "nonfinite" in line for line in human.stdout.splitlines())


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_tf_checkpoint_names_fold_keras_internals_and_name_optimizer_slots(run_cli, named, kind: str) -> None:
    doc = run_cli("inspect", named[f"{kind}.ckpt"], "--json").json()
    by_name = {t["name"]: t for t in doc["tensors"]}
    weights = [t for t in doc["tensors"] if t["kind"] == "weight"]
    for t in weights:
        assert "_functional" not in t["display_name"] and "/_" not in t["display_name"], t
        assert t["display_name"].startswith("model/operations[")
    kernels = {t["display_name"] for t in weights if t["display_name"].endswith("/kernel")}
    assert len(kernels) == 2
    slots = [t for t in doc["tensors"] if t["name"].startswith("optimizer/_variables/")]
    assert slots and all(t["display_name"].endswith(("[momentum]", "[velocity]")) for t in slots)
    for kernel in kernels:  # every kernel's Adam state is named after it
        assert {f"{kernel} [momentum]", f"{kernel} [velocity]"} <= {t["display_name"] for t in slots}
    assert by_name["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]["display_name"] == "optimizer/iterations"
    nan = run_cli("verify", named[f"{kind}.nan.ckpt"], "--json").json()
    (f,) = [f for f in nan["findings"] if f["check"] == "nonfinite"]
    assert f["display_name"].startswith("model/operations[") and f["display_name"].endswith("/kernel")


def test_diff_rows_carry_display_name(run_cli, named) -> None:
    doc = run_cli("diff", named["functional.nan.keras"], named["functional.keras"], "--json").json()
    assert {"hidden/kernel", "logits/kernel"} <= {t["display_name"] for t in doc["tensors"]}


def test_legacy_h5_keys_name_their_layer() -> None:
    assert legacy_h5_name("model_weights/hidden/hidden/kernel:0") == "hidden/kernel"
    assert legacy_h5_name("optimizer_weights/Adam/hidden/kernel/m:0") == "hidden/kernel [Adam m]"
    assert legacy_h5_name("something/else") == ""
