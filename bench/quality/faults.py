"""Fault injection into COPIES of a run's healthy checkpoints (the originals are never touched).

    ensure_faults(root, runs)              generates what is not cached (one child process per run)
    python -m bench.quality.faults ROOT RUN      (the child: TensorFlow writes the bundles)

Each fault instance replaces the checkpoint at one position of a run (a sequence of positions
for faults that persist) and is verified against that position's baseline. It knows which check
should catch it (check-id prefixes) and which tensor(s) the finding must name (None: a
whole-checkpoint fault, no tensor required).

How faulted checkpoints are written:
  - file damage (bit flip, truncation, missing shard): byte operations on copied files;
  - whole-checkpoint substitutions (duplicate save, restart from scratch): copied files of
    another real checkpoint, under the position's name;
  - value and structure damage: every tensor of the healthy checkpoint is read with TF's
    reader, the damaged ones are replaced, and the whole bundle is written by TF's own SaveV2
    op (the op tf.train.Checkpoint.write uses), object graph included — a real TF bundle.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.quality import runs as R

VERSION = "faults-2"
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
NOISE_MULTIPLES = (0.5, 1.0, 3.0, 10.0, 30.0)  # x the tensor's typical healthy change between saves
NOISE_STD_FRACTIONS = (0.01, 0.05, 0.2, 0.8)  # x the tensor's standard deviation
SCORED_MULTIPLE = 3.0  # noise below this multiple of healthy change is measured, not counted as a miss
KERNEL_ROLES = ("kernel", "recurrent_kernel", "embeddings")

# Which checks catch each fault class: a fail finding whose check id starts with one of these
# (and names the damaged tensor, where the fault has one). Evaluated at scoring time, not cached:
# a rule change that adds a check id (say, a history-based `drift.outlier`) only edits this table.
# Value damage expects any `drift.` check on the damaged tensor; a duplicate and a frozen layer
# expect the checks made for them (a `drift.jump` there would be the wrong diagnosis).
EXPECT: dict[str, tuple[str, ...]] = {
    "bitflip": ("integrity.",),
    "truncated": ("integrity.",),
    "missing_shard": ("integrity.",),
    "nan": ("nonfinite",),
    "inf": ("nonfinite",),
    "nan_optimizer_slot": ("nonfinite",),
    "reset_layer": ("drift.",),
    "reset_continues": ("drift.",),
    "frozen_layer": ("drift.frozen",),
    "explosion_x1000": ("drift.",),
    "swap": ("drift.",),
    "duplicate_save": ("drift.unchanged",),
    "restart_same_seed": ("drift.rewind",),  # named as a return to an earlier checkpoint
    "restart_other_seed": ("drift.",),
    "renamed_scope": ("structure.", "restore."),  # restore.*: the model-aware restore says it too
    "shape_change": ("structure.", "restore."),
    "dtype_change": ("structure.", "restore."),
    "noise": ("drift.",),
}


@dataclass
class Fault:
    id: str  # "<run>/<class>[-<variant>]"
    run: str
    cls: str
    position: int  # index of the run's checkpoint this replaces (the first, for a sequence)
    checkpoints: list[str]  # prefixes to verify in order (relative to the faults root)
    tensors: list[str] | None  # a catching finding must name one of these keys; None: any or none
    score: str = "any"  # a sequence is caught if "any" of its checkpoints is, or only if "all" are
    scored: bool = True  # counts in the detection rate (a noise level below SCORED_MULTIPLE does not)
    detail: dict = field(default_factory=dict)

    @property
    def expect(self) -> tuple[str, ...]:
        """Check-id prefixes: a fail finding with one of them catches it (see EXPECT)."""
        return EXPECT[self.cls]


def faults_dir(root: Path, run: str) -> Path:
    return root / R.VERSION / VERSION / run


def load_faults(root: Path, run: str) -> list[Fault] | None:
    d = faults_dir(root, run)
    try:
        doc = json.loads((d / "faults.json").read_text())
    except (OSError, ValueError):
        return None
    if doc.get("version") != VERSION:
        return None
    return [Fault(**{**f, "checkpoints": [str(d / p) for p in f["checkpoints"]]}) for f in doc["faults"]]


def ensure_faults(root: Path, runs: dict[str, R.Run], force: bool = False, log=print) -> dict[str, list[Fault]]:
    out: dict[str, list[Fault]] = {}
    for name in runs:
        faults = None if force else load_faults(root, name)
        if faults is None:
            log(f"injecting faults into copies of {name} ...")
            cmd = [sys.executable, "-m", "bench.quality.faults", str(root), name]
            subprocess.run(cmd, env=R.child_env(), check=True)
            faults = load_faults(root, name)
            assert faults is not None, f"{name}: fault injection wrote no faults.json"
        out[name] = faults
    return out


# -- the child: reading and writing bundles with TensorFlow -----------------------------------------


class Bundles:
    def __init__(self) -> None:
        import tensorflow as tf

        self.tf = tf

    def read(self, prefix: str) -> dict:
        reader = self.tf.train.load_checkpoint(prefix)
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_dtype_map()}

    def write(self, prefix: str, tensors: dict[str, np.ndarray]) -> str:
        """A bundle with exactly these keys and values, written by TF's SaveV2 op."""
        tf = self.tf
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        names = sorted(tensors)
        values = [tf.constant(tensors[n]) for n in names]
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=values)
        return prefix

    def rename_root(self, tensors: dict[str, np.ndarray], old: str, new: str) -> dict[str, np.ndarray]:
        """`tf.train.Checkpoint(model=...)` became `tf.train.Checkpoint(<new>=...)`: the root's child
        edge is renamed in the object graph and every key under it follows (keys Keras 3 stores
        under `optimizer/_trainable_variables/N` stay, as TF would write them)."""
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        raw = tensors[OBJECT_GRAPH]
        graph.ParseFromString(raw.item() if isinstance(raw, np.ndarray) else raw)
        for child in graph.nodes[0].children:
            if child.local_name == old:
                child.local_name = new
        renamed = dict(tensors)
        for node in graph.nodes:
            for attr in node.attributes:
                key = attr.checkpoint_key
                if key.startswith(old + "/"):
                    attr.checkpoint_key = new + key[len(old) :]
                    renamed[attr.checkpoint_key] = renamed.pop(key)
        renamed[OBJECT_GRAPH] = graph.SerializeToString()
        return renamed


def copy_bundle(src: str, dst: str, data: bool = True) -> str:
    """Copy a bundle's index (and data shards) under another prefix."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src + ".index", dst + ".index")
    if data:
        base = os.path.basename(src)
        for f in sorted(os.listdir(os.path.dirname(src))):
            if f.startswith(base + ".data-"):
                shutil.copyfile(os.path.join(os.path.dirname(src), f), dst + f[len(base) :])
    return dst


def data_shard(prefix: str) -> str:
    (shard,) = [f for f in os.listdir(os.path.dirname(prefix)) if f.startswith(os.path.basename(prefix) + ".data-")]
    return os.path.join(os.path.dirname(prefix), shard)


# -- what to damage -------------------------------------------------------------------------------


def typical_changes(run: R.Run, values: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per trainable tensor: the median L2 norm of its change between consecutive healthy saves."""
    out = {}
    for key, info in run.tensors.items():
        if info["role"] == "slot" or not info["trainable"]:
            continue
        deltas = [float(np.linalg.norm(b[key].astype(np.float64) - a[key])) for a, b in itertools.pairwise(values)]
        out[key] = float(np.median(deltas))
    return out


def kernels(run: R.Run) -> list[str]:
    """Trainable kernels, largest first (ties: in checkpoint key order)."""
    ks = [k for k, t in run.tensors.items() if t["trainable"] and t["role"] in KERNEL_ROLES]
    return sorted(ks, key=lambda k: (-int(np.prod(run.tensors[k]["shape"])), k))


def swap_pair(run: R.Run) -> tuple[str, str] | None:
    """The largest two trainable tensors of the same shape (two hidden kernels, or a norm's scale and offset)."""
    by_shape: dict[tuple, list[str]] = {}
    for k, t in sorted(run.tensors.items()):
        if t["trainable"] and t["role"] != "slot":
            by_shape.setdefault(tuple(t["shape"]), []).append(k)
    pairs = [(int(np.prod(s)), ks[:2]) for s, ks in by_shape.items() if len(ks) >= 2]
    if not pairs:
        return None
    a, b = max(pairs, key=lambda p: p[0])[1]
    return a, b


def position(n: int, frac: float, length: int = 1) -> int:
    """The checkpoint index at `frac` of a run of n, leaving room for `length` checkpoints, never the first."""
    return max(1, min(n - length, round(frac * (n - 1))))


# -- the faults -----------------------------------------------------------------------------------


def inject(run: R.Run, out: Path) -> list[Fault]:
    io = Bundles()
    rng = np.random.default_rng(1234)
    n = len(run.checkpoints)
    values = [io.read(p) for p in run.checkpoints]
    init = io.read(run.init)
    typical = typical_changes(run, values)
    ks = kernels(run)
    big, small, mid = ks[0], ks[-1], ks[len(ks) // 2]
    slots = sorted(
        (k for k, t in run.tensors.items() if t["role"] == "slot"),
        key=lambda k: (-int(np.prod(run.tensors[k]["shape"])), k),
    )
    faults: list[Fault] = []

    def name_at(i: int) -> str:
        return os.path.basename(run.checkpoints[i])

    def add(label: str, i: int, prefixes: list[str], tensors: list[str] | None, **kw) -> None:
        """A fault instance: `label` is its class, or "<class>-<variant>" (noise levels)."""
        rel = [os.path.relpath(p, out) for p in prefixes]
        faults.append(Fault(f"{run.name}/{label}", run.name, label.split("-")[0], i, rel, tensors, **kw))

    def write(cls: str, i: int, tensors: dict[str, np.ndarray]) -> str:
        return io.write(str(out / cls / name_at(i)), tensors)

    def changed(i: int, **new: np.ndarray) -> dict[str, np.ndarray]:
        return {**values[i], **new}

    # file damage
    i = position(n, 0.5)
    p = copy_bundle(run.checkpoints[i], str(out / "bitflip" / name_at(i)))
    from ckptwatch.formats.bundle import BundleSource  # where the tensor's bytes are (ckptwatch's reader)

    src = BundleSource(p)
    entry = src.entry(big)
    src.close()
    with open(data_shard(p), "r+b") as f:  # flip the lowest bit of one float: a value barely changes
        f.seek(entry.offset + entry.size // 2 // 4 * 4)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    add("bitflip", i, [p], [big], detail={"offset": entry.offset + entry.size // 2 // 4 * 4})

    i = position(n, 0.6)
    p = copy_bundle(run.checkpoints[i], str(out / "truncated" / name_at(i)))
    size = os.path.getsize(data_shard(p))
    os.truncate(data_shard(p), int(size * 0.6))
    add("truncated", i, [p], None, detail={"bytes": size, "kept": int(size * 0.6)})

    i = position(n, 0.7)
    p = copy_bundle(run.checkpoints[i], str(out / "missing_shard" / name_at(i)), data=False)
    add("missing_shard", i, [p], None)

    # non-finite values
    i = position(n, 0.4)
    v = values[i][big].copy()
    v.flat[rng.integers(v.size)] = np.nan
    add("nan", i, [write("nan", i, changed(i, **{big: v}))], [big])

    i = position(n, 0.8)
    v = values[i][small].copy()
    v.flat[rng.integers(v.size)] = np.inf
    add("inf", i, [write("inf", i, changed(i, **{small: v}))], [small])

    if slots:
        i = position(n, 0.6)
        v = values[i][slots[0]].copy()
        v.flat[rng.integers(v.size)] = np.nan
        add(
            "nan_optimizer_slot",
            i,
            [write("nan_optimizer_slot", i, changed(i, **{slots[0]: v}))],
            [slots[0]],
        )

    # one layer
    layer = run.layer_of(mid)
    i = position(n, 0.6)
    add(
        "reset_layer",
        i,
        [write("reset_layer", i, changed(i, **{k: init[k] for k in layer}))],
        layer,
        detail={"layer": run.tensors[mid]["layer"]},
    )

    i = position(n, 0.5, 3)  # reset, and training continues from the reset layer (2 more saves)
    seq = [
        io.write(
            str(out / "reset_continues" / name_at(i + j)),
            changed(i + j, **{k: init[k] + (values[i + j][k] - values[i][k]) for k in layer}),
        )
        for j in range(3)
    ]
    add("reset_continues", i, seq, layer, score="all", detail={"layer": run.tensors[mid]["layer"]})

    layer = run.layer_of(big)
    i = position(n, 0.4, 3)  # one layer stops training (copied from the save before) for 3 saves
    seq = [
        io.write(str(out / "frozen_layer" / name_at(i + j)), changed(i + j, **{k: values[i - 1][k] for k in layer}))
        for j in range(3)
    ]
    add("frozen_layer", i, seq, layer, detail={"layer": run.tensors[big]["layer"]})

    i = position(n, 0.6)
    boom = {k: values[i][k] * np.asarray(1000, values[i][k].dtype) for k in layer}
    add(
        "explosion_x1000",
        i,
        [write("explosion_x1000", i, changed(i, **boom))],
        layer,
        detail={"layer": run.tensors[big]["layer"]},
    )

    pair = swap_pair(run)
    if pair:
        a, b = pair
        i = position(n, 0.7)
        add("swap", i, [write("swap", i, changed(i, **{a: values[i][b], b: values[i][a]}))], [a, b])

    # whole checkpoint
    i = position(n, 0.5)
    add(
        "duplicate_save",
        i,
        [copy_bundle(run.checkpoints[i - 1], str(out / "duplicate_save" / name_at(i)))],
        None,
    )
    i = position(n, 0.75)
    add(
        "restart_same_seed",
        i,
        [copy_bundle(run.checkpoints[0], str(out / "restart_same_seed" / name_at(i)))],
        None,
        detail={"content_of": name_at(0)},
    )
    add(
        "restart_other_seed",
        i,
        [copy_bundle(run.other_seed, str(out / "restart_other_seed" / name_at(i)))],
        None,
        detail={"content_of": os.path.relpath(run.other_seed, run.dir)},
    )

    # structure
    i = position(n, 0.5)
    if OBJECT_GRAPH in values[i]:
        renamed = io.rename_root(values[i], "model", "network")
        detail = {"renamed": "tf.train.Checkpoint(model=...) -> tf.train.Checkpoint(network=...)"}
    else:
        renamed = {("net/" + k if k.startswith("mlp/") else k): v for k, v in values[i].items()}
        detail = {"renamed": "variable_scope('mlp') -> variable_scope('net/mlp')"}
    add("renamed_scope", i, [write("renamed_scope", i, renamed)], None, detail=detail)
    add(
        "shape_change",
        i,
        [write("shape_change", i, changed(i, **{big: values[i][big][..., :-1].copy()}))],
        [big],
    )
    add(
        "dtype_change",
        i,
        [write("dtype_change", i, changed(i, **{big: values[i][big].astype(np.float16)}))],
        [big],
    )

    # the noise sweep: Gaussian noise on the largest kernel, scaled to its typical healthy change
    i = position(n, 0.8)
    base = values[i][big].astype(np.float64)
    unit = rng.normal(size=base.shape)
    unit /= np.linalg.norm(unit)
    levels = [(f"x{k:g}", k * typical[big]) for k in NOISE_MULTIPLES]
    levels += [(f"std{f:g}", f * float(base.std()) * np.sqrt(base.size)) for f in NOISE_STD_FRACTIONS]
    for label, l2 in levels:
        noisy = (base + l2 * unit).astype(values[i][big].dtype)
        multiple = float(l2 / typical[big]) if typical[big] > 0 else float("inf")
        add(
            f"noise-{label}",
            i,
            [write(f"noise-{label}", i, changed(i, **{big: noisy}))],
            [big],
            scored=bool(multiple >= SCORED_MULTIPLE),
            detail={
                "noise_l2": l2,
                "multiple_of_typical_change": multiple,
                "typical_change_l2": typical[big],
                "relative_to_tensor": l2 / float(np.linalg.norm(base)),
            },
        )
    return faults


def main(root: Path, name: str) -> None:
    """The child: inject every fault into copies of run `name` (trained under `root`)."""
    run = R.load_run(root, name)
    assert run is not None, f"no trained run {name} under {root}"
    out = faults_dir(root, name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    faults = inject(run, out)
    doc = {"version": VERSION, "run": run.name, "faults": [asdict(f) for f in faults]}
    (out / "faults.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
