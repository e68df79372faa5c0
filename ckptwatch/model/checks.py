"""Model-aware checks of one checkpoint: restore status, restore fidelity, the
functional check on a probe batch, and the optional one-step smoke test.

    check_model(candidate, golden, spec, policy, record=None) -> (model section, findings)

The model comes from the operator's factory (restored from the checkpoint), or,
for files that carry their own model (.keras, full-model .h5, SavedModel), from the
file in safe mode. The golden reference for the functional check is, in order: stored
golden outputs (spec.golden_outputs), or the golden checkpoint restored the same
way. `record` is what the run's history showed on the probe batch (ckptwatch.model.compare
says how it is used). Nothing is written anywhere.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ckptwatch.errors import CkptwatchError, ModelTimeout, ModelUnsupported
from ckptwatch.formats import open_checkpoint, resolve
from ckptwatch.formats.bundle import BundleSource
from ckptwatch.formats.keras_archive import read_config
from ckptwatch.model import compare, restore, safety
from ckptwatch.model.runtime import device_label, seed, tensorflow
from ckptwatch.model.spec import Probe, load_outputs, load_probe, resolve_callable, save_outputs
from ckptwatch.policy import Policy
from ckptwatch.verify.history import ProbeRecord
from ckptwatch.verify.report import Finding
from ckptwatch.verify.request import ModelSpec
from ckptwatch.verify.verification import integrity_failed


class Loaded:
    """A model ready to run: built and restored, or loaded from its own file."""

    def __init__(self, call: Any, built: restore.Built | None, source: str):
        self.call, self.built, self.source = call, built, source


def _keras_load(path: str, keras2: bool) -> tuple[Any, str]:
    """(model, how it was loaded). A legacy `.h5` written by Keras 2 is built by tf-keras (Keras 2
    for TF 2.16+) when it is installed: Keras 3 refuses many Keras 2 configs (`time_major` of an
    LSTM, a mixed-precision policy). Its config was checked first (only Keras' own classes)."""
    from ckptwatch.formats.held import real_file

    if keras2 and tf_keras_installed():
        import tf_keras

        with real_file(path) as readable:
            return tf_keras.models.load_model(readable, compile=False), "tf_keras-load_model(config checked)"
    import keras

    with real_file(path) as readable:  # read through the daemon's held files: see formats.held
        return keras.saving.load_model(readable, compile=False, safe_mode=True), "keras-load_model(safe_mode=True)"


def tf_keras_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tf_keras") is not None


def tf_keras_requirement() -> str:
    """The tf-keras release that goes with this TensorFlow, as a pip requirement."""
    tf = tensorflow()
    major_minor = ".".join(tf.__version__.split(".")[:2])
    return f"tf-keras=={major_minor}.*"


def _keras_version(path: str) -> str:
    """The `keras_version` a legacy `.h5` was written by ("2.15.0"; "" when absent)."""
    import h5py

    with open(path, "rb") as raw, h5py.File(raw, "r") as f:  # a file object: held files are symlinks to /proc
        value = f.attrs.get("keras_version", b"")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load(path: str, spec: ModelSpec, probe: Probe | None, policy: Policy, quiet: bool = False):
    """(Loaded or None, restore outcome) for one checkpoint path."""
    kind, location = resolve(path)
    out = restore.RestoreOutcome()
    if spec.factory:
        seed()
        built = restore.arrange(resolve_callable(spec.factory, spec.python_path)())
        restore.prepare(built, probe.x if probe else None)
        if kind in ("bundle", "savedmodel"):
            source = open_checkpoint(path)
            try:
                assert isinstance(source, BundleSource)  # what a bundle or a SavedModel opens as
                out = restore.restore_bundle(built, source, location, policy, saved_model=kind == "savedmodel")
            finally:
                source.close()
        elif kind in ("hdf5", "keras"):
            out = restore.restore_keras_file(built, location, policy)
        else:
            out.findings.append(Finding("warn", "restore.skipped", f"a {kind} file holds no values to restore"))
        return (Loaded(built.model, built, f"factory {spec.factory}") if out.restored else None), out
    config = read_config(location) if kind == "keras" else _legacy_config(location) if kind == "hdf5" else None
    if kind == "keras" or config is not None:
        why = safety.keras_config_refusal(config) if kind == "keras" else safety.legacy_config_refusal(config)
        if why:
            out.findings.append(
                Finding(
                    "fail",
                    "restore.unsafe",
                    f"refused to load {os.path.basename(location)} in safe mode: {why}. ckptwatch never runs code "
                    "from a file it verifies; give a factory (--model / [watch.model] factory) to check it with "
                    "your own model code",
                )
            )
            return None, out
        version = _keras_version(location) if kind == "hdf5" else ""
        keras2 = version.startswith("2.")
        try:
            model, method = _keras_load(location, keras2)
        except Exception as e:
            if keras2 and not tf_keras_installed():
                raise ModelUnsupported(
                    f"{os.path.basename(location)} was written by Keras {version}, and Keras 3 cannot build it "
                    f"({restore.first_line(e)}): the verifier lacks the tf-keras package (Keras 2 for TF 2.16+). "
                    f"Install it in the verifier's environment: pip install '{tf_keras_requirement()}'"
                ) from None
            out.findings.append(
                Finding("fail", "restore.error", f"Keras could not load the model: {restore.first_line(e)}")
            )
            return None, out
        out.restored = True
        out.section = {"method": method, "matched": len(model.weights)}
        return Loaded(model, restore.Built({"model": model}, model), f"{kind} file"), out
    if kind == "savedmodel":
        directory = os.path.dirname(os.path.dirname(location))
        why, signature = safety.saved_model_refusal(os.path.join(directory, "saved_model.pb"))
        if why:
            out.findings.append(
                Finding(
                    "fail",
                    "restore.unsafe",
                    f"refused to load the SavedModel: {why}. ckptwatch never runs code from a file it verifies",
                )
            )
            return None, out
        try:
            loaded = tensorflow().saved_model.load(directory)
            fn = loaded.signatures[signature]
        except Exception as e:
            _unsupported_savedmodel(directory, e)
            message = f"TensorFlow could not load the SavedModel: {restore.first_line(e)}"
            out.findings.append(Finding("fail", "restore.error", message))
            return None, out
        out.restored = True
        out.section = {"method": f"saved_model.load, signature {signature!r}", "matched": len(fn.variables)}
        return Loaded(_signature_caller(fn), None, "saved_model"), out
    out.findings.append(
        Finding(
            "warn",
            "restore.skipped",
            f"model-aware checks of a {kind} checkpoint need a model factory (--model / [watch.model] factory)",
        )
    )
    return None, out


def _unsupported_savedmodel(directory: str, e: Exception) -> None:
    """Raise ModelUnsupported when a SavedModel failed to load for want of something the
    verifier's environment lacks, not because of the file."""
    text = str(e)
    if "Op type not registered" in text:
        raise ModelUnsupported(f"TensorFlow cannot load the SavedModel: {restore.first_line(e)}") from None
    keras2 = os.path.exists(os.path.join(directory, "keras_metadata.pb"))
    wants_keras = "add_slot" in text or "without the Keras module" in text or "tf_keras" in text
    if wants_keras and not tf_keras_installed():
        writer = "Keras 2 (tf.keras; keras_metadata.pb)" if keras2 else "Keras 2 (tf.keras)"
        raise ModelUnsupported(
            f"the SavedModel was written by {writer} with optimizer state, which TensorFlow 2.16+ loads only with "
            f"the tf-keras package ({restore.first_line(e)}): install it in the verifier's environment: "
            f"pip install '{tf_keras_requirement()}'"
        ) from None


def _legacy_config(path: str) -> dict | None:
    """The architecture a legacy Keras 2 full-model `.h5` carries (`model_config`, parsed as
    JSON only), None for a weights-only file."""
    from ckptwatch.formats.hdf5 import open_hdf5

    with open_hdf5(path) as source:
        return source.config


def _signature_caller(fn: Any):
    tf = tensorflow()
    names = sorted(fn.structured_input_signature[1])

    def call(x, training=False):
        if isinstance(x, dict):
            return fn(**{k: tf.constant(v) for k, v in x.items()})
        if len(names) != 1:
            raise CkptwatchError(f"the signature takes {names}: name the probe arrays x/<input>")
        spec = fn.structured_input_signature[1][names[0]]
        return fn(**{names[0]: tf.constant(x, dtype=spec.dtype)})

    return call


def run(loaded: Loaded, x: Any) -> dict[str, np.ndarray]:
    try:
        result = loaded.call(x, training=False)
    except TypeError:
        result = loaded.call(x)  # tf.Module.__call__ without a training flag
    return compare.flatten_outputs(result)


def smoke_step(loaded: Loaded, probe: Probe) -> tuple[dict, list[Finding]]:
    """One optimizer step on the probe batch: the loss must be finite and the trainable
    weights must change. Only this process's copy of the model is touched."""
    tf = tensorflow()
    built = loaded.built
    model = built.model if built else None
    if built is None or model is None or not getattr(model, "trainable_variables", None):
        return {"ran": False}, [Finding("warn", "functional.smoke", "smoke step skipped: no trainable model")]
    if probe.y is None:
        return {"ran": False}, [Finding("warn", "functional.smoke", "smoke step skipped: the probe has no labels y")]
    loss_fn = built.loss or getattr(model, "loss", None)
    if isinstance(loss_fn, str) or loss_fn is None:
        import keras

        loss_fn = keras.losses.get(loss_fn) if isinstance(loss_fn, str) else None
    if loss_fn is None:
        return {"ran": False}, [
            Finding(
                "warn",
                "functional.smoke",
                "smoke step skipped: no loss (compile the model, or return {'model', 'optimizer', 'loss'})",
            )
        ]
    optimizer = built.optimizer
    if optimizer is None:
        import keras

        optimizer = keras.optimizers.SGD(1e-3)
    variables = list(model.trainable_variables)
    before = [np.array(v) for v in variables]
    with tf.GradientTape() as tape:
        loss = loss_fn(tf.constant(probe.y), model(probe.x, training=True))
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, variables)
    value = float(loss.numpy())
    findings: list[Finding] = []
    section = {"ran": True, "loss": value, "changed": 0, "trainable": len(variables)}
    if not np.isfinite(value):
        findings.append(Finding("fail", "functional.smoke", f"one training step gives a non-finite loss ({value})"))
        return section, findings
    bad = [getattr(v, "path", v.name) for v, g in zip(variables, grads, strict=True)
           if g is not None and not bool(tf.reduce_all(tf.math.is_finite(g)))]  # fmt: skip
    for name in bad[: restore.MAX_NAMED]:
        findings.append(Finding("fail", "functional.smoke", f"gradient of {name} is not finite", name))
    if bad:
        return section, findings
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables, strict=True) if g is not None])
    changed = sum(not np.array_equal(np.array(v), b) for v, b in zip(variables, before, strict=True))
    section["changed"] = changed
    if changed == 0:
        findings.append(Finding("fail", "functional.smoke", "one training step changed none of the trainable weights"))
    return section, findings


def check_model(
    candidate: str, golden: str | None, spec: ModelSpec, policy: Policy, record: ProbeRecord | None = None
) -> tuple[dict, list[Finding]]:
    t0 = time.perf_counter()
    probe = load_probe(spec.probe, spec.python_path) if spec.probe else None
    if spec.factory:
        resolve_callable(spec.factory, spec.python_path)  # a wrong name fails before TF's import
    tensorflow()
    section: dict = {
        "device": device_label(),
        "source": None,
        "restore": None,
        "functional": None,
        "smoke_step": None,
    }
    loaded, outcome = load(candidate, spec, probe, policy)
    findings = list(outcome.findings)
    section["restore"] = outcome.section or None
    section["restore_unmatched"] = outcome.unmatched
    if loaded is None:
        if outcome.findings and not any(f.check in ("restore.skipped",) for f in outcome.findings):
            findings.append(Finding("info", "functional.skipped", "not run: the model could not be restored"))
        section["seconds"] = round(time.perf_counter() - t0, 3)
        return section, findings
    section["source"] = loaded.source
    if probe is not None:
        outputs = _outputs(loaded, probe, findings)
        if outputs is not None and spec.outputs_out:
            save_outputs(spec.outputs_out, outputs)
        if outputs is not None:
            reference, ref_name = _reference(golden, spec, probe, policy, findings)
            figures, more = compare.compare_outputs(outputs, reference, probe.y, policy, ref_name, record)
            figures["batch"] = probe.batch
            section["functional"] = figures
            findings += more
        if spec.smoke_step:
            section["smoke_step"], more = smoke_step(loaded, probe)
            findings += more
    section["seconds"] = round(time.perf_counter() - t0, 3)
    return section, findings


def _outputs(loaded: Loaded, probe: Probe, findings: list[Finding]) -> dict[str, np.ndarray] | None:
    try:
        return run(loaded, probe.x)
    except Exception as e:
        findings.append(
            Finding("fail", "functional.error", f"the restored model cannot run on the probe batch: {_short(e)}")
        )
        return None


def _reference(
    golden: str | None, spec: ModelSpec, probe: Probe, policy: Policy, findings: list[Finding]
) -> tuple[dict[str, np.ndarray] | None, str]:
    if spec.golden_outputs:
        return compare.flatten_outputs(load_outputs(spec.golden_outputs)), "golden_outputs"
    if not golden:
        return None, "golden"
    kind, _ = resolve(golden)
    if kind == "fingerprint":
        findings.append(
            Finding(
                "info",
                "functional.golden",
                "golden is a fingerprint (no weights to run): store its outputs with `verify --write-outputs` "
                "and give them as golden_outputs",
                reference="golden",
            )
        )
        return None, "golden"
    try:
        loaded, outcome = load(golden, spec, probe, policy.model_copy(update={"restore": "partial"}))
    except CkptwatchError as e:
        loaded, outcome = None, restore.RestoreOutcome(findings=[Finding("fail", "restore.error", str(e))])
    bad = [f for f in outcome.findings if f.severity == "fail"]
    if loaded is None or bad:
        why = bad[0].message if bad else "it could not be loaded"
        findings.append(
            Finding(
                "warn", "functional.golden", f"golden model not usable, outputs not compared: {why}", reference="golden"
            )
        )
        return None, "golden"
    try:
        return run(loaded, probe.x), "golden"
    except Exception as e:
        findings.append(
            Finding("warn", "functional.golden", f"golden model cannot run: {_short(e)}", reference="golden")
        )
        return None, "golden"


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def add_model_checks(
    report: Any,
    candidate: str,
    golden: str | None,
    spec: ModelSpec,
    policy: Policy,
    record: ProbeRecord | None = None,
) -> None:
    """Run check_model within spec.timeout and merge it into `report` (a verify Report).

    A candidate that failed its integrity checks is not handed to TensorFlow: its
    reader could abort the process on a malformed file, and the verdict is already fail."""
    import threading

    if integrity_failed(report):
        report.model = {"skipped": "the checkpoint failed its integrity checks", "device": None}
        return
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = check_model(candidate, golden, spec, policy, record)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=work, name="ckptwatch-model", daemon=True)
    thread.start()
    thread.join(spec.timeout)
    if thread.is_alive():
        raise ModelTimeout(
            f"model-aware checks of {candidate} took longer than {spec.timeout:g} s "
            "(raise --model-timeout or [watch.model] timeout if the model needs longer)"
        )
    if "error" in result:
        raise result["error"]
    section, findings = result["value"]
    report.model = section
    report.timings["model_seconds"] = section.get("seconds")
    report.add_findings(findings)
