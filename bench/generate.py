"""Generate the benchmark checkpoints (idempotent; --force regenerates).

Writes, under OUT (default bench/out/):

    big/{golden,previous,candidate}/ckpt-N.{index,data-00000-of-00001}
                                           tf.train.Checkpoint(model=model).write(prefix)
    big/{golden,previous,candidate}.weights.h5
                                           model.save_weights(...) of the same values (for the seed method)
    tiny/...                               the same layout for a tiny model (memory baseline, warm-ups)
    manifest.json                          what was generated, with which settings

The big model is a stack of Dense layers, by default 10 x Dense(3162) on a
3162-wide input: 10 * (3162 * 3162 + 3162) = 100,018,260 float32 parameters,
about 0.4 GB per checkpoint. `previous` is `golden` plus small noise and
`candidate` is `previous` plus small noise (training drift of ~1e-3 relative
L2 per step), so a three-way verify passes.

Memory: one model (~0.4 GB of variables) is built once; the three checkpoints
are produced by writing it, then adding noise one variable at a time (one
layer's worth of temporaries, ~40 MB) and writing again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "out")
ROLES = ("golden", "previous", "candidate")
STEPS = {"golden": 1000, "previous": 2000, "candidate": 3000}
SIZES = {"big": {"layers": 10, "width": 3162}, "tiny": {"layers": 2, "width": 16}}
SEED = 1234
DRIFT = 1e-3  # noise std relative to each variable's std, per step
FORMAT_VERSION = 1


def build_model(layers: int, width: int):
    """The benchmark architecture; shared with the seed method in run.py."""
    import keras

    model = keras.Sequential(
        [keras.Input(shape=(width,))] + [keras.layers.Dense(width, name=f"dense_{i}") for i in range(layers)],
        name="bench_mlp",
    )
    return model


def params(layers: int, width: int) -> int:
    return layers * (width * width + width)


def paths(out: str, size: str) -> dict[str, dict[str, str]]:
    """Per role: 'bundle' (the checkpoint prefix) and 'h5' (the .weights.h5 file)."""
    base = os.path.join(out, size)
    return {
        role: {
            "bundle": os.path.join(base, role, f"ckpt-{STEPS[role]}"),
            "h5": os.path.join(base, f"{role}.weights.h5"),
        }
        for role in ROLES
    }


def bundle_files(prefix: str) -> list[str]:
    d = os.path.dirname(prefix)
    name = os.path.basename(prefix)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith(name + "."))


def bundle_bytes(prefix: str) -> int:
    return sum(os.path.getsize(f) for f in bundle_files(prefix))


def _complete(out: str, size: str) -> bool:
    manifest = os.path.join(out, "manifest.json")
    try:
        with open(manifest, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    want = {"format": FORMAT_VERSION, "seed": SEED, "drift": DRIFT, **SIZES[size]}
    if m.get(size, {}).get("settings") != want:
        return False
    for p in paths(out, size).values():
        if not (os.path.isfile(p["bundle"] + ".index") and os.path.isfile(p["bundle"] + ".data-00000-of-00001")):
            return False
        if not os.path.isfile(p["h5"]):
            return False
    return True


def _generate(out: str, size: str, log) -> dict:
    import numpy as np
    import tensorflow as tf

    cfg = SIZES[size]
    layers, width = cfg["layers"], cfg["width"]
    base = os.path.join(out, size)
    shutil.rmtree(base, ignore_errors=True)
    t0 = time.perf_counter()
    model = build_model(layers, width)
    rng = np.random.default_rng(SEED)
    # "trained" golden values: kernels ~ N(0, 1/width), biases ~ N(0, 0.01)
    for layer in model.layers:
        layer.kernel.assign((rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(np.float32))
        layer.bias.assign((rng.standard_normal((width,), dtype=np.float32) * 0.01).astype(np.float32))
    ckpt = tf.train.Checkpoint(model=model)
    p = paths(out, size)
    for role in ROLES:
        if role != "golden":  # one training step's worth of drift on top of the last one
            for v in model.weights:
                std = float(np.std(v.numpy())) or 1.0
                v.assign_add(rng.standard_normal(tuple(v.shape), dtype=np.float32) * np.float32(DRIFT * std))
        os.makedirs(os.path.dirname(p[role]["bundle"]), exist_ok=True)
        ckpt.write(p[role]["bundle"])
        model.save_weights(p[role]["h5"])
        log(f"  {size}/{role}: {bundle_bytes(p[role]['bundle']) / 1e6:.1f} MB bundle, "
            f"{os.path.getsize(p[role]['h5']) / 1e6:.1f} MB .weights.h5")  # fmt: skip
    settings = {"format": FORMAT_VERSION, "seed": SEED, "drift": DRIFT, **cfg}
    return {
        "settings": settings,
        "params": params(layers, width),
        "seconds": round(time.perf_counter() - t0, 1),
        "bundle_bytes": {role: bundle_bytes(p[role]["bundle"]) for role in ROLES},
        "h5_bytes": {role: os.path.getsize(p[role]["h5"]) for role in ROLES},
    }


def ensure(out: str = DEFAULT_OUT, force: bool = False, log=print) -> dict:
    """Generate what is missing (everything with force); return the manifest."""
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, "manifest.json")
    if force:
        for size in SIZES:
            shutil.rmtree(os.path.join(out, size), ignore_errors=True)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        manifest = {}
    changed = False
    for size in SIZES:
        if _complete(out, size):
            log(f"{size}: reusing the checkpoints in {os.path.join(out, size)}")
            continue
        log(f"{size}: generating {params(**SIZES[size]):,} parameters x 3 checkpoints ...")
        manifest[size] = _generate(out, size, log)
        changed = True
        with open(manifest_path, "w", encoding="utf-8") as f:  # after each size, so a crash keeps what is done
            json.dump(manifest, f, indent=2)
    if changed:
        log(f"wrote {manifest_path}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory [bench/out]")
    ap.add_argument("--force", action="store_true", help="delete and regenerate everything")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure(args.out, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
