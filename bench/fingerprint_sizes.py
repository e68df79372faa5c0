"""Fingerprint sizes (issue 15): what a fingerprint costs per tensor, by component, for realistic
checkpoints and for worst-case mixes of small tensors, next to the checkpoint's own per-tensor
metadata.

    .venv/bin/python bench/fingerprint_sizes.py [--out DIR] [--force] [--only NAME ...]
                                                 [--many PREFIX] [--repeat N]

Writes (once; `--force` rewrites) with TensorFlow, under OUT (default bench/out/fingerprint_sizes/):

    mobilenetv2_035, resnet50, efficientnetb0   keras.applications, weights=None, 1000 classes
    bert_small                                  a BERT-like encoder: vocabulary 30,522, 4 layers,
                                                hidden 256, 4 heads, feed-forward 1,024
    mlp                                         784-512-256-10
                                                (each after one Adam step: the slots are saved,
                                                tf.train.Checkpoint(model=, optimizer=).write)
    mix_256B, mix_1KB, mix_4KB, mix_16KB, mix_64KB
                                                2,000 float32 variables, all of that size, named
                                                like a model's (model/block_NNNN/dense/kernel)

Then, for each, it fingerprints the checkpoint (verify_checkpoint with fingerprint_out, as the
daemon does), re-encodes the same fingerprint in every format the code writes (v2 and v3), and
prints each one's share of the checkpoint and its bytes per tensor by component: header (names,
dtypes, shapes, the checkpoint), stats, digests, samples. The checkpoint's own per-tensor
metadata is printed beside it: its `.index` and its object graph (the _CHECKPOINTABLE_OBJECT_GRAPH
entry) per tensor. `--many PREFIX` adds a checkpoint written by bench/many_tensors.py (e.g.
/work/main/bench/out/many/many/candidate/ckpt-2: 10,000 tensors, 1 GB). It also times reading and
writing each format (medians of `--repeat`). Results: OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(HERE, "out", "fingerprint_sizes")
SEED = 15
MIX_COUNT = 2000
MIXES = {"mix_256B": 256, "mix_1KB": 1024, "mix_4KB": 4096, "mix_16KB": 16384, "mix_64KB": 65536}
MODELS = ("mobilenetv2_035", "resnet50", "efficientnetb0", "bert_small", "mlp")
GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _bert_small(keras):
    vocab, hidden, layers, heads, ffn, length = 30522, 256, 4, 4, 1024, 128
    ids = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocab, hidden, name="word_embeddings")(ids)
    positions = keras.layers.Embedding(512, hidden, name="position_embeddings")(keras.ops.arange(length))
    x = keras.layers.LayerNormalization(name="embeddings_norm")(x + positions)
    for i in range(layers):
        a = keras.layers.MultiHeadAttention(heads, hidden // heads, name=f"layer_{i}_attention")(x, x)
        x = keras.layers.LayerNormalization(name=f"layer_{i}_attention_norm")(x + a)
        h = keras.layers.Dense(ffn, activation="gelu", name=f"layer_{i}_intermediate")(x)
        h = keras.layers.Dense(hidden, name=f"layer_{i}_output")(h)
        x = keras.layers.LayerNormalization(name=f"layer_{i}_output_norm")(x + h)
    out = keras.layers.Dense(2, name="classifier")(x[:, 0])
    return keras.Model(ids, out, name="bert_small"), (length,), vocab


def _model(name: str, keras):
    apps = keras.applications
    if name == "mobilenetv2_035":
        return apps.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None), (96, 96, 3), None
    if name == "resnet50":
        return apps.ResNet50(input_shape=(64, 64, 3), weights=None), (64, 64, 3), None
    if name == "efficientnetb0":
        return apps.EfficientNetB0(input_shape=(64, 64, 3), weights=None), (64, 64, 3), None
    if name == "bert_small":
        return _bert_small(keras)
    inputs = keras.Input((784,))
    h = keras.layers.Dense(512, activation="relu", name="hidden_1")(inputs)
    h = keras.layers.Dense(256, activation="relu", name="hidden_2")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="mlp"), (784,), None


def prefix_of(out: str, name: str) -> str:
    return os.path.join(out, "ckpt", name, "ckpt-1")


def generate(out: str, names: list[str], force: bool) -> None:
    todo = [n for n in names if force or not os.path.exists(prefix_of(out, n) + ".index")]
    if not todo:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    for name in todo:
        t0 = time.perf_counter()
        if name in MIXES:
            n = MIXES[name] // 4
            model = {
                f"block_{i:04d}": {"dense": {"kernel": tf.Variable(rng.standard_normal(n, dtype=np.float32))}}
                for i in range(MIX_COUNT)
            }
            ckpt = tf.train.Checkpoint(model=model)
        else:
            keras.utils.set_random_seed(SEED)
            model, shape, vocab = _model(name, keras)
            classes = int(model.outputs[0].shape[-1])
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
            if vocab:
                x = rng.integers(0, vocab, size=(2, *shape))
            else:
                x = rng.standard_normal((2, *shape), dtype=np.float32)
            model.train_on_batch(x, rng.integers(0, classes, size=(2,)))
            ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        ckpt.write(prefix_of(out, name))
        print(f"wrote {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        del model, ckpt


def bundle_bytes(prefix: str) -> int:
    d, base = os.path.split(prefix)
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith(base + "."))


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def measure(prefix: str, repeat: int) -> dict:
    from ckptwatch.formats import open_checkpoint
    from ckptwatch.verify import fingerprint as fp
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.verify.verification import verify_checkpoint

    total = bundle_bytes(prefix)
    source = open_checkpoint(prefix)
    try:
        infos = source.tensors()
        graph = sum(i.nbytes for i in infos if i.name == GRAPH_KEY)
    finally:
        source.close()
    with tempfile.TemporaryDirectory() as tmp:
        written = os.path.join(tmp, "ckpt.fp")
        verify_checkpoint(VerifyRequest(prefix, fingerprint_out=written))
        read = fp.FingerprintSource(written)
        entries = [(i, read.stats(i.name), read.sketch(i.name)) for i in read.tensors()]
        tensors = len(entries)
        row = {
            "checkpoint_bytes": total,
            "tensors": tensors,
            "data_bytes": sum(i.nbytes for i in infos if i.name != GRAPH_KEY),
            "index_per_tensor": os.path.getsize(prefix + ".index") / tensors,
            "graph_per_tensor": graph / tensors,
            "written": fp.describe(_read(written))["format"],
            "formats": {},
        }
        for version in fp.WRITTEN_VERSIONS:
            data = fp.encode(read.checkpoint, entries, version)
            path = os.path.join(tmp, f"v{version}.fp")
            with open(path, "wb") as f:
                f.write(data)
            parts = fp.describe(data)
            again = fp.FingerprintSource(path)
            assert [t for t in again.tensors()] == read.tensors(), version
            row["formats"][f"v{version}"] = {
                "bytes": len(data),
                "share": len(data) / total,
                "per_tensor": {k: v / tensors for k, v in parts.items() if k != "format"},
                "write_s": _median_seconds(lambda v=version: fp.encode(read.checkpoint, entries, v), repeat),
                "read_s": _median_seconds(lambda p=path: fp.FingerprintSource(p), repeat),
            }
    return row


def _table(results: dict) -> str:
    lines = [
        "| checkpoint | tensors | avg tensor | format | share | B/tensor | header | stats | digests | samples "
        "| ckpt index + graph B/tensor | write | read |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        avg = r["data_bytes"] / max(r["tensors"], 1)
        meta = r["index_per_tensor"] + r["graph_per_tensor"]
        for fmt, f in r["formats"].items():
            p = f["per_tensor"]
            lines.append(
                f"| {name} | {r['tensors']:,} | {avg / 1024:,.1f} KB | {fmt} | {100 * f['share']:.3f}% "
                f"| {f['bytes'] / r['tensors']:.1f} | {p['header']:.1f} | {p['stats']:.1f} | {p['digests']:.1f} "
                f"| {p['samples']:.1f} | {r['index_per_tensor']:.0f} + {r['graph_per_tensor']:.0f} = {meta:.0f} "
                f"| {1000 * f['write_s']:.0f} ms | {1000 * f['read_s']:.0f} ms |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--only", nargs="*", choices=[*MODELS, *MIXES], help="only these checkpoints")
    ap.add_argument("--many", metavar="PREFIX", help="also a checkpoint written by bench/many_tensors.py")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    names = list(args.only or [*MODELS, *MIXES])
    generate(args.out, names, args.force)
    targets = {n: prefix_of(args.out, n) for n in names}
    if args.many:
        targets["many_10k"] = args.many
    results = {}
    for name, prefix in targets.items():
        t0 = time.perf_counter()
        results[name] = measure(prefix, args.repeat)
        print(f"measured {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
