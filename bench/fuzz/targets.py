"""What the fuzzer feeds each reader and parser: the seed files a case starts from, how it
mutates them, and what a worker runs on the result. A `run` returns an outcome label; it raises
on anything else (the harness classifies: ckptwatch's own errors are clean failures)."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from bench.fuzz import mutate

Mutator = Callable[[random.Random, str, str, bytes | None], str]  # (rng, seed dir, case dir, splice) -> label


def _verdict(report) -> str:
    fails = sorted({f.check for f in report.findings if f.severity == "fail"})
    integrity = [c for c in fails if c.startswith("integrity")]
    if integrity:
        return "clean:fail[" + ",".join(integrity) + "]"
    return f"ok:{report.verdict}" + (f"[{','.join(fails)}]" if fails else "")


def run_bundle(case: str) -> str:
    from ckptwatch.verify.engine import verify_paths

    report, _ = verify_paths(os.path.join(case, "ckpt"))
    return _verdict(report)


def run_state(case: str) -> str:
    from ckptwatch.formats.layout import read_state_file
    from ckptwatch.verify.engine import verify_paths

    read_state_file(case)
    report, _ = verify_paths(case)
    return _verdict(report)


def run_file(name: str) -> Callable[[str], str]:
    def run(case: str) -> str:
        from ckptwatch.verify.engine import verify_paths

        report, _ = verify_paths(os.path.join(case, name))
        return _verdict(report)

    return run


def run_keras(case: str) -> str:
    from ckptwatch.formats.keras_archive import read_config
    from ckptwatch.model.safety import keras_config_refusal
    from ckptwatch.verify.engine import verify_paths

    path = os.path.join(case, "m.keras")
    refused = keras_config_refusal(read_config(path))
    report, _ = verify_paths(path)
    return _verdict(report) + (":refused" if refused else "")


def run_fingerprint(case: str) -> str:
    from ckptwatch.verify.engine import verify_paths
    from ckptwatch.verify.fingerprint import FingerprintSource

    (name,) = [n for n in os.listdir(case) if n.startswith("fp.")]
    path = os.path.join(case, name)
    source = FingerprintSource(path)
    source.tensors()
    report, _ = verify_paths(os.path.join(case, "seed", "ckpt-2"), previous=path)
    return _verdict(report)


def run_config(case: str) -> str:
    from ckptwatch.config import load_config

    load_config(os.path.join(case, "config.toml"), env={})
    return "ok:loaded"


def run_savedmodel(case: str) -> str:
    from ckptwatch.model.safety import saved_model_refusal

    why, _ = saved_model_refusal(os.path.join(case, "saved_model.pb"))
    return "clean:refused" if why else "ok:allowed"


# -- preparing cases ---------------------------------------------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


BUNDLES = [("bundle", "ckpt-2"), ("module", "ckpt")]
SHARD = ".data-00000-of-00001"


def _copy_bundle(rng: random.Random, seeds: str, case: str) -> tuple[str, str]:
    directory, prefix = rng.choice(BUNDLES)
    src = os.path.join(seeds, directory, prefix)
    dst = os.path.join(case, "ckpt")
    shutil.copyfile(src + ".index", dst + ".index")
    shutil.copyfile(src + SHARD, dst + SHARD)
    return dst + ".index", dst + SHARD


def prep_index(rng: random.Random, seeds: str, case: str, other: bytes | None) -> str:
    index, shard = _copy_bundle(rng, seeds, case)
    if rng.random() < 0.5:
        what, data = mutate.index_structure(rng, _read(index), _read(shard))
    else:
        what, data = mutate.bytes_mutation(rng, _read(index), other)
    _write(index, data)
    return what


def prep_data(rng: random.Random, seeds: str, case: str, other: bytes | None) -> str:
    index, shard = _copy_bundle(rng, seeds, case)
    what, data = mutate.bytes_mutation(rng, _read(shard), other)
    _write(shard, data)
    if rng.random() < 0.7:  # CRCs that match: the reader decodes what the mutation made
        _write(index, mutate.recrc(_read(index), data))
        what += "+recrc"
    return what


def prep_state(rng: random.Random, seeds: str, case: str, other: bytes | None) -> str:
    for name in ("ckpt-2.index", "ckpt-2" + SHARD, "checkpoint"):
        shutil.copyfile(os.path.join(seeds, "bundle", name), os.path.join(case, name))
    path = os.path.join(case, "checkpoint")
    data = _read(path)
    if rng.random() < 0.3:
        line = rng.choice(
            [
                b'model_checkpoint_path: "/dev/zero"',
                b'model_checkpoint_path: "../../../etc/passwd"',
                b'model_checkpoint_path: "' + b"a/" * 3000 + b'"',
                b"model_checkpoint_path: ckpt-2",
                b'model_checkpoint_path: "ckpt-2\\x00"',
                b'model_checkpoint_path: "\xff\xfe"',
                b"",
            ]
        )
        what, data = "state-line", line + b"\n" + data
    else:
        what, data = mutate.bytes_mutation(rng, data, other)
    _write(path, data)
    return what


def prep_copy(name: str, structured: Callable | None = None, share: float = 0.5) -> Mutator:
    def prep(rng: random.Random, seeds: str, case: str, other: bytes | None) -> str:
        data = _read(os.path.join(seeds, name))
        if structured and rng.random() < share:
            what, data = structured(rng, data)
        else:
            what, data = mutate.bytes_mutation(rng, data, other)
        _write(os.path.join(case, os.path.basename(name)), data)
        return what

    return prep


def prep_fingerprint(rng: random.Random, seeds: str, case: str, other: bytes | None) -> str:
    os.symlink(os.path.join(seeds, "bundle"), os.path.join(case, "seed"))
    r = rng.random()
    if r < 0.25:
        return prep_copy("fp.json", mutate.json_bytes, 0.6)(rng, seeds, case, other)
    if r < 0.4:
        return prep_copy("fp.json.gz", mutate.gzip_json, 0.6)(rng, seeds, case, other)
    if r < 0.5:
        return prep_copy("fp.v2.fp")(rng, seeds, case, other)
    return prep_copy("fp.fp", mutate.binary_fingerprint, 0.8)(rng, seeds, case, other)


def prep_config(rng: random.Random, seeds: str, case: str, other: bytes | None) -> str:
    os.mkdir(os.path.join(case, "bundle"))
    os.mkdir(os.path.join(case, "state"))
    return prep_copy("config.toml", mutate.toml_text, 0.7)(rng, seeds, case, other)


@dataclass(frozen=True)
class Target:
    name: str
    prepare: Mutator
    run: Callable[[str], str]
    splice_from: str  # a seed file whose bytes a splice may borrow
    tf: bool = False  # runs in the worker that has TensorFlow's protobufs loaded


TARGETS = [
    Target("bundle-index", prep_index, run_bundle, "module/ckpt.index"),
    Target("bundle-data", prep_data, run_bundle, "bundle/ckpt-1" + SHARD),
    Target("state-file", prep_state, run_state, "fp.json"),
    Target("weights-h5", prep_copy("m.weights.h5"), run_file("m.weights.h5"), "m.h5"),
    Target("legacy-h5", prep_copy("m.h5"), run_file("m.h5"), "m.weights.h5"),
    Target("keras", prep_copy("m.keras", mutate.keras_structure, 0.6), run_keras, "m.weights.h5"),
    Target("fingerprint", prep_fingerprint, run_fingerprint, "fp.json"),
    Target("config-toml", prep_config, run_config, "bundle/checkpoint"),
    Target("saved-model", prep_copy("savedmodel/saved_model.pb"), run_savedmodel, "savedmodel/fingerprint.pb", tf=True),
]
BY_NAME = {t.name: t for t in TARGETS}
