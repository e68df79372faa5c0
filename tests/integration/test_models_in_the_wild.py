"""Models as they come from elsewhere (issue 13): files written by other stacks and tools,
checked with `--probe` or a factory, each built here by the real writer.

- a Keras-2-era SavedModel with optimizer state, written by tf-keras (item 3);
- SavedModels that are intact but need what the verifier may lack: vocabulary tables from
  their own assets/ run; an op this TensorFlow does not have is verdict `error`, not `fail`
  (item 4);
- a legacy Keras 2 full-model `.h5` with custom layer classes: `restore.unsafe`, decided from
  its `model_config` before Keras is asked (item 5);
- a checkpoint written as Checkpoint(net=m) restored into a factory's {"model": m}: the names
  are the job's own and are honoured (item 7);
- `verify --probe` prints nothing on stderr but ckptwatch's own lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.errors import ModelUnsupported
from ckptwatch.model.checks import add_model_checks
from ckptwatch.policy import Policy
from ckptwatch.verify.engine import verify_paths
from ckptwatch.verify.request import ModelSpec
from tests import zoo

pytestmark = pytest.mark.usefixtures("op_determinism_off_afterwards")

Z = "tests.zoo:"
ROOT = Path(__file__).resolve().parents[2]


def in_process(candidate: str, policy: Policy | None = None, **spec) -> dict:
    """The engine and the model checks the CLI's child runs, in this process."""
    policy = policy or Policy()
    report, _ = verify_paths(candidate, None, None, policy)
    add_model_checks(report, candidate, None, ModelSpec(**spec), policy)
    return report.to_dict()


def findings(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == check]


# -- item 7: names the factory gives are honoured -----------------------------------------------------


@pytest.fixture(scope="module")
def net_checkpoints(tf, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("net")
    n = zoo.net()
    n.encoder.assign(n.encoder * 3.0 + 0.5)
    n.head.assign(n.head * -2.0)
    probe = root / "probe.npz"
    x, _ = zoo.probe_arrays()
    np.savez(probe, x=x)
    return {
        "as_net": tf.train.Checkpoint(net=n).write(str(root / "as-net" / "ckpt-1")),
        "as_model": tf.train.Checkpoint(model=n).write(str(root / "as-model" / "ckpt-1")),
        "probe": str(probe),
    }


def test_a_renamed_root_attribute_is_not_mapped_onto_the_factorys_name(net_checkpoints):
    """Checkpoint(net=m) restored into the job's {"model": m}: the job's own restore matches
    nothing and keeps every initializer, so this is unmatched + unused + renamed, never a pass."""
    rep = in_process(net_checkpoints["as_net"], factory=Z + "net_in_a_dict", probe=net_checkpoints["probe"])
    assert rep["verdict"] == "fail", rep["findings"]
    r = rep["model"]["restore"]
    assert r["matched"] == 0, r
    assert sorted(r["unmatched"]) == ["(root).model.encoder", "(root).model.head"], r
    assert sorted(r["unused"]) == ["(root).net.encoder", "(root).net.head"], r
    assert {f["tensor"] for f in findings(rep, "restore.unmatched")} == {"(root).model.encoder", "(root).model.head"}
    assert {f["tensor"] for f in findings(rep, "restore.unused")} == {"(root).net.encoder", "(root).net.head"}
    (renamed,) = findings(rep, "restore.renamed")
    assert renamed["severity"] == "fail" and "under 'net/' match model variables under 'model/'" in renamed["message"]


def test_the_same_names_or_a_bare_model_still_restore(net_checkpoints):
    rep = in_process(net_checkpoints["as_model"], factory=Z + "net_in_a_dict", probe=net_checkpoints["probe"])
    assert rep["verdict"] == "pass" and rep["model"]["restore"]["unmatched"] == [], rep["findings"]
    # a bare model has no name of its own: it is mapped onto the checkpoint's single child
    rep = in_process(net_checkpoints["as_net"], factory=Z + "net", probe=net_checkpoints["probe"])
    assert rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["restore"]["matched"] == 2 and rep["model"]["restore"]["unused"] == []


# -- files Keras 2 wrote (tf-keras, in a process of its own) -------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    """The CLI's environment as a user has it: no TF_CPP_MIN_LOG_LEVEL, nothing verbose."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CKPTWATCH_VERBOSE")}
    env.pop("CKPTWATCH_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra.pop("PYTHONPATH", ""), str(ROOT)) if p)
    return {**env, **extra}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckptwatch", *args], capture_output=True, text=True, env=_env(**env), cwd=ROOT,
        timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def keras2(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("keras2")
    subprocess.run(
        [sys.executable, "-c", "import sys; from tests.keras2 import write; write(sys.argv[1])", str(root)],
        env=_env(), cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def without_tf_keras(tmp_path_factory) -> str:
    """A PYTHONPATH entry that makes this interpreter an environment without tf-keras."""
    root = tmp_path_factory.mktemp("no-tf-keras")
    (root / "sitecustomize.py").write_text('import sys\nsys.modules["tf_keras"] = None  # not installed here\n')
    return str(root)


def test_a_keras2_savedmodel_with_optimizer_state_runs_its_probe(keras2):
    """Item 3: TF 2.16+ revives a Keras 2 optimizer's slots only through tf-keras (installed with
    ckptwatch); the probe runs, and stderr stays free of TensorFlow's own lines."""
    r = cli("verify", str(keras2 / "savedmodel"), "--probe", str(keras2 / "probe.npz"), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["source"] == "saved_model" and rep["model"]["functional"]["nonfinite_outputs"] == 0
    assert r.stderr == ""


def test_without_tf_keras_a_keras2_savedmodel_is_an_error_naming_the_package(keras2, without_tf_keras):
    """Not the file's fault: verdict error (exit 2) with what to install, never `fail restore.error`."""
    r = cli("verify", str(keras2 / "savedmodel"), "--probe", str(keras2 / "probe.npz"), PYTHONPATH=without_tf_keras)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    (line,) = r.stderr.splitlines()
    assert line.startswith("ckptwatch: error: the SavedModel was written by Keras 2 (tf.keras; keras_metadata.pb)")
    assert "'_UserObject' object has no attribute 'add_slot'" in line
    assert line.endswith("pip install 'tf-keras==2.21.*'"), line


def test_a_keras2_h5_that_keras3_cannot_build_loads_with_tf_keras(keras2, without_tf_keras):
    r = cli("verify", str(keras2 / "lstm.h5"), "--probe", str(keras2 / "probe.npz"), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["restore"]["method"] == "tf_keras-load_model(config checked)"
    assert rep["model"]["functional"]["nonfinite_outputs"] == 0 and r.stderr == ""
    r = cli("verify", str(keras2 / "lstm.h5"), "--probe", str(keras2 / "probe.npz"), PYTHONPATH=without_tf_keras)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    (line,) = r.stderr.splitlines()
    assert line.startswith("ckptwatch: error: lstm.h5 was written by Keras 2.21.0, and Keras 3 cannot build it ("), line
    assert "time_major" in line and line.endswith("pip install 'tf-keras==2.21.*'"), line


def test_tf_keras_is_a_dependency_pinned_with_tensorflow():
    pins = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    )  # fmt: skip
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    assert pins["tf-keras"].split(".")[:2] == pins["tensorflow"].split(".")[:2], pins
    assert '"tf-keras' in (ROOT / "pyproject.toml").read_text()


# -- item 5: custom classes in a legacy .h5 are refused from the config -------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("custom", "layer 'scale' is 'Scale', a custom class (not one of Keras' own)"),
        ("registered", "layer 'shift' is 'myproj>Shift', a custom class registered by package 'myproj'"),
    ],
)
def test_a_legacy_h5_with_a_custom_layer_is_refused_saying_why(keras2, name, why):
    rep = in_process(str(keras2 / f"{name}.h5"), probe=str(keras2 / "probe.npz"))
    assert rep["verdict"] == "fail" and {f["check"] for f in rep["findings"] if f["severity"] == "fail"} == {
        "restore.unsafe"
    }, rep["findings"]
    (unsafe,) = findings(rep, "restore.unsafe")
    assert unsafe["message"].startswith(f"refused to load {name}.h5 in safe mode: {why}"), unsafe["message"]
    assert "give a factory" in unsafe["message"]


# -- item 4: intact SavedModels that need what the verifier may lack ----------------------------------


def _tanh_module(tf):
    class Tanh(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([keras2_features(), 3], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, keras2_features()], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.tanh(tf.matmul(x, self.w))}

    return Tanh()


def keras2_features() -> int:
    from tests.keras2 import FEATURES

    return FEATURES


def _with_op_renamed(src: Path, dest: Path, old: str, new: str) -> Path:
    """A copy of a SavedModel whose graph names `new` where TF wrote `old`: an op from a
    library this TensorFlow has not loaded."""
    from tensorflow.core.protobuf import saved_model_pb2

    shutil.copytree(src, dest)
    saved = saved_model_pb2.SavedModel.FromString((dest / "saved_model.pb").read_bytes())
    renamed = 0
    for meta in saved.meta_graphs:
        for node in [*meta.graph_def.node, *(n for f in meta.graph_def.library.function for n in f.node_def)]:
            if node.op == old:
                node.op, renamed = new, renamed + 1
    assert renamed
    (dest / "saved_model.pb").write_bytes(saved.SerializeToString())
    return dest


@pytest.fixture(scope="module")
def custom_ops(tf, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("custom-ops")
    module = _tanh_module(tf)
    tf.saved_model.save(module, str(root / "tanh"), signatures={"serving_default": module.serve})
    return {
        "addons": _with_op_renamed(root / "tanh", root / "addons", "Tanh", "Addons>Mish"),
        "unknown": _with_op_renamed(root / "tanh", root / "unknown", "Tanh", "AcmeFusedActivation"),
        "intact": root / "tanh",
    }


def test_an_op_this_tensorflow_lacks_is_an_error_naming_it_and_what_to_install(custom_ops, keras2):
    r = cli("verify", str(custom_ops["addons"]), "--probe", str(keras2 / "probe.npz"))
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    (line,) = r.stderr.splitlines()
    assert line.startswith("ckptwatch: error: the SavedModel needs op Addons>Mish (node "), line
    assert "(an op from tensorflow-addons)" in line and "install tensorflow-addons" in line, line
    with pytest.raises(ModelUnsupported) as e:
        in_process(str(custom_ops["unknown"]), probe=str(keras2 / "probe.npz"))
    assert str(e.value).startswith("the SavedModel needs op AcmeFusedActivation (node "), str(e.value)
    assert "(an op from a custom op library)" in str(e.value) and e.value.check == "restore.unsupported"
    # the same SavedModel as TensorFlow wrote it runs
    rep = in_process(str(custom_ops["intact"]), probe=str(keras2 / "probe.npz"))
    assert rep["verdict"] == "pass" and rep["model"]["functional"]["nonfinite_outputs"] == 0, rep["findings"]


def test_in_the_daemons_worker_a_missing_op_is_verdict_error(custom_ops, keras2):
    """The worker's path: verify_checkpoint raises ModelChecksError, the worker answers `error`."""
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.worker.__main__ import run_job
    from ckptwatch.worker.protocol import Job

    class Collect:
        def send(self, message) -> None:
            pass

    request = VerifyRequest(str(custom_ops["addons"]), model=ModelSpec(probe=str(keras2 / "probe.npz")))
    result = run_job(Job("j1", request), Collect(), "cpu")  # type: ignore[arg-type]
    assert result.status == "error" and result.check == "restore.unsupported", result
    assert "Addons>Mish" in (result.message or "") and "tensorflow-addons" in (result.message or "")


@pytest.fixture(scope="module")
def vocabularies(tf, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """A TF2 module whose table reads a tf.saved_model.Asset, and an Estimator-style TF1 export
    (tf.Example parsing, a vocabulary-file feature column with an OOV bucket, a sharded Saver):
    both initialise their tables from their own assets/."""
    root = tmp_path_factory.mktemp("vocabularies")
    vocab = root / "vocab.txt"
    vocab.write_text("red\ngreen\nblue\n")

    class Tables(tf.Module):
        def __init__(self):
            super().__init__()
            self.vocab = tf.saved_model.Asset(str(vocab))
            init = tf.lookup.TextFileInitializer(
                self.vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER
            )
            self.table = tf.lookup.StaticHashTable(init, -1)
            self.w = tf.Variable(tf.ones([3, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words):
            return {"v": tf.gather(self.w, tf.maximum(self.table.lookup(words), 0))}

    m = Tables()
    tf.saved_model.save(m, str(root / "tf2"), signatures={"serving_default": m.serve})
    np.savez(root / "words.npz", x=np.array(["red", "blue", "mauve"]))

    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as sess:
        v1.set_random_seed(1)  # the model checks of earlier tests turned op determinism on
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        spec = {"color": v1.io.VarLenFeature(tf.string), "x": v1.io.FixedLenFeature([2], tf.float32)}
        features = v1.io.parse_example(serialized, spec)
        color = v1.feature_column.categorical_column_with_vocabulary_file("color", str(vocab), num_oov_buckets=1)
        columns = [v1.feature_column.embedding_column(color, 3), v1.feature_column.numeric_column("x", shape=[2])]
        net = v1.feature_column.input_layer(features, columns)
        v1.train.get_or_create_global_step()
        logits = tf.matmul(net, v1.get_variable("dense/kernel", [5, 2]))
        sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
        builder = v1.saved_model.Builder(str(root / "estimator"))
        builder.add_meta_graph_and_variables(
            sess, ["serve"],
            signature_def_map={"serving_default": v1.saved_model.predict_signature_def({"examples": serialized},
                                                                                       {"logits": logits})},
            main_op=v1.tables_initializer(), assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            saver=v1.train.Saver(sharded=True), strip_default_attrs=True,
        )  # fmt: skip
        builder.save()
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "color": tf.train.Feature(bytes_list=tf.train.BytesList(value=[c])),
                    "x": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0, 2.0])),
                }
            )
        ).SerializeToString()
        for c in (b"red", b"mauve")
    ]
    np.savez(root / "examples.npz", x=np.array(examples))
    vocab.unlink()  # the tables must read the copies in assets/
    return {"tf2": (root / "tf2", root / "words.npz"), "estimator": (root / "estimator", root / "examples.npz")}


@pytest.mark.parametrize("name", ["tf2", "estimator"])
def test_vocabulary_tables_from_their_own_assets_run(vocabularies, name):
    directory, probe = vocabularies[name]
    rep = in_process(str(directory), probe=str(probe))
    assert rep["verdict"] == "pass", rep["findings"]
    assert rep["model"]["source"] == "saved_model" and rep["model"]["functional"]["nonfinite_outputs"] == 0


# -- stderr is ckptwatch's own -----------------------------------------------------------------------


def test_verify_probe_prints_nothing_on_stderr_but_ckptwatchs_own_lines(custom_ops, keras2):
    """TensorFlow 2.21 writes absl, oneDNN, cudart and cpu_feature_guard lines on import, whatever
    TF_CPP_MIN_LOG_LEVEL says: a `--probe` run shows none of them, unless --verbose."""
    args = ("verify", str(custom_ops["intact"]), "--probe", str(keras2 / "probe.npz"))
    r = cli(*args)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = cli(*args, "--verbose")
    assert r.returncode == 0 and "absl::InitializeLog" in r.stderr, r.stderr  # what is silenced is there
