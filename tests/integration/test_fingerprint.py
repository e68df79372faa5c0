"""Fingerprints stand in for checkpoints that are gone (max_to_keep) or not mounted
(golden): the verdict must be the one the real checkpoint gives, the file small,
and the drift estimate close to the exact figure."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.verify.engine import verify_paths
from tests.tools import flip_bits


def problems(report: dict) -> set[tuple[str, str | None]]:
    return {(f["check"], f["tensor"]) for f in report["findings"] if f["severity"] in ("fail", "warn")}


def fingerprint(run_cli, path: str, out: Path) -> Path:
    r = run_cli("fingerprint", path, "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and f"wrote {out}" in r.stdout
    return out


@pytest.fixture(scope="module")
def fp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fingerprints")


@pytest.fixture(scope="module")
def keras_prints(run_cli, keras_run, fp_dir: Path) -> dict[str, Path]:
    return {
        "previous": fingerprint(run_cli, keras_run.previous, fp_dir / "previous.json"),
        "candidate": fingerprint(run_cli, keras_run.candidate, fp_dir / "candidate.json.gz"),
    }


CASES = {
    # candidate, reference, expected verdict
    "exact_copy": ("exact_copy", "candidate", "fail"),  # a duplicate save: drift.unchanged
    "training_step": ("candidate", "previous", "pass"),
    "reset": ("reset", "candidate", "fail"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fingerprint_gives_the_same_verdict_as_the_checkpoint(run_cli, keras_run, keras_prints, case: str) -> None:
    cand_attr, ref_attr, verdict = CASES[case]
    cand, ref = getattr(keras_run, cand_attr), getattr(keras_run, ref_attr)
    real = run_cli("verify", cand, "--previous", ref, "--json")
    fake = run_cli("verify", cand, "--previous", keras_prints[ref_attr], "--json")
    assert real.returncode == fake.returncode == (1 if verdict == "fail" else 0), (real.stderr, fake.stderr)
    a, b = real.json(), fake.json()
    assert a["verdict"] == b["verdict"] == verdict
    assert problems(a) == problems(b)
    assert b["references"]["previous"] == str(keras_prints[ref_attr])
    da, db = a["drift"]["previous"], b["drift"]["previous"]
    assert db["relative_l2"] == pytest.approx(da["relative_l2"], rel=1e-6, abs=1e-12)
    assert db["changed_fraction"] == pytest.approx(da["changed_fraction"])
    if case == "exact_copy":
        assert ("drift.unchanged", None) in problems(b)
        assert db["relative_l2"] == 0.0 and db["max_abs"] == 0.0 and db["estimated"] is False
        for t in b["tensors"]:
            d = t["drift"]["previous"]
            if d is not None:
                assert d["relative_l2"] == 0.0 and d["estimated"] is False, t["name"]
    if case == "reset":
        assert {c for c, _ in problems(b)} >= {"drift.jump", "drift.reset"}


def test_verify_can_write_the_fingerprint_in_the_same_read(run_cli, keras_run, keras_prints, fp_dir: Path) -> None:
    out = fp_dir / "during-verify.json"
    r = run_cli("verify", keras_run.candidate, "--previous", keras_run.previous, "--write-fingerprint", out)
    assert r.returncode == 0 and out.is_file()
    import json

    a = json.loads(out.read_text())
    b = json.loads(gzip.decompress(keras_prints["candidate"].read_bytes()))
    assert a["schema"] == b["schema"] == "ckptwatch.fingerprint/v1"
    assert {t["name"]: t["hash"] for t in a["tensors"]} == {t["name"]: t["hash"] for t in b["tensors"]}


def test_gzip_fingerprint(keras_prints) -> None:
    gz = keras_prints["candidate"]
    assert gz.name.endswith(".gz")
    raw = gz.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert b"ckptwatch.fingerprint/v1" in gzip.decompress(raw)


def test_fingerprint_survives_deleting_the_checkpoint(run_cli, keras_run, copy_ckpt, tmp_path: Path) -> None:
    prev = copy_ckpt(keras_run.previous, tmp_path / "run")
    fp = fingerprint(run_cli, prev, tmp_path / "prev.fp.json")
    before = run_cli("verify", keras_run.candidate, "--previous", prev, "--json").json()
    shutil.rmtree(tmp_path / "run")  # CheckpointManager(max_to_keep=...) deleted it
    assert not os.path.exists(prev + ".index")
    after = run_cli("verify", keras_run.candidate, "--previous", fp, "--json")
    assert after.returncode == 0, after.stderr
    assert after.json()["verdict"] == before["verdict"] == "pass"
    gone = run_cli("verify", keras_run.candidate, "--previous", prev)
    assert gone.returncode == 2 and prev in gone.stderr


@pytest.mark.parametrize("kind", ["broken_json", "wrong_schema", "random_gzip", "truncated_gzip"])
def test_garbage_fingerprint_as_golden_is_an_error(run_cli, keras_run, keras_prints, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / f"bad-{kind}.json"
    if kind == "broken_json":
        bad.write_text('{"schema": "ckptwatch.fingerprint/v1", "checkpoint": {}, "tensors": [{"name": ')
    elif kind == "wrong_schema":
        bad.write_text('{"schema": "something.else/v9", "tensors": []}')
    elif kind == "random_gzip":
        bad = tmp_path / "bad.json.gz"
        bad.write_bytes(b"\x1f\x8b" + np.random.default_rng(3).bytes(500))
    else:
        bad = tmp_path / "cut.json.gz"
        bad.write_bytes(keras_prints["candidate"].read_bytes()[:200])
    r = run_cli("verify", keras_run.candidate, "--golden", bad, "--json")
    assert r.returncode == 2
    error = r.json()  # with --json, the error as a JSON object on stdout
    assert error["schema"] == "ckptwatch.error/v1" and error["exit"] == 2 and str(bad) in error["error"]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["verify", "fingerprint", "diff"])
def test_fingerprint_as_candidate_is_a_usage_error(
    run_cli, keras_run, keras_prints, tmp_path: Path, command: str
) -> None:
    """A fingerprint is a reference only (no tensor data): given where a checkpoint must be
    read it is one clear line and exit 2, never "internal error". (`inspect` lists the
    statistics it stored: tests/integration/test_cli_ux.py.)"""
    fp = keras_prints["previous"]
    args = {"fingerprint": ("-o", tmp_path / "again.json"), "diff": (keras_run.candidate,)}.get(command, ())
    r = run_cli(command, fp, *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"{fp} is a fingerprint" in lines[0] and "--previous or --golden" in lines[0], lines
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def test_broken_checkpoint_is_not_fingerprinted(run_cli, small_module, copy_ckpt, tmp_path: Path) -> None:
    prefix = copy_ckpt(small_module.path, tmp_path / "c")
    flip_bits(prefix + ".data-00000-of-00001", 100)
    out = tmp_path / "fp.json"
    r = run_cli("fingerprint", prefix, "-o", out)
    assert r.returncode == 2 and not out.exists()
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# -- big tensors: size and estimate error ------------------------------------------------------------

N_ROWS, N_COLS = 1100, 1024  # 1,126,400 elements: > 1M, 4.4 MB of float32
SIGMAS = (1e-3, 1e-2, 0.1, 0.5)


@pytest.fixture(scope="module")
def big(tf, ckpt_root: Path) -> dict:
    """One checkpoint of three tensors > 1 MB each, then gaussian-noise perturbations of it."""
    rng = np.random.default_rng(11)
    base = {
        "a": rng.normal(size=(N_ROWS, N_COLS)).astype("float32"),
        "b": rng.normal(0.3, 2.0, size=(640, 512)).astype("float32"),
        "c": rng.uniform(-1, 1, size=(512, 640)).astype("float32"),
    }

    class Big(tf.Module):
        def __init__(self):
            super().__init__()
            for k, v in base.items():
                setattr(self, k, tf.Variable(v))

    m = Big()
    ckpt = tf.train.Checkpoint(m=m)
    out = {"base": ckpt.write(str(ckpt_root / "big" / "ckpt-1")), "noisy": {}}
    for i, sigma in enumerate(SIGMAS):
        noise = rng.normal(scale=sigma, size=base["a"].shape).astype("float32")
        m.a.assign(base["a"] + noise)
        out["noisy"][sigma] = ckpt.write(str(ckpt_root / "big" / f"ckpt-{i + 2}"))
    return out


def test_fingerprint_is_under_one_percent_of_the_checkpoint(run_cli, big, tmp_path: Path) -> None:
    prefix = big["base"]
    files = [prefix + ".index", prefix + ".data-00000-of-00001"]
    total = sum(os.path.getsize(f) for f in files)
    assert total > 3 * 1024 * 1024
    for name in ("fp.json", "fp.json.gz"):
        fp = fingerprint(run_cli, prefix, tmp_path / name)
        assert fp.stat().st_size < 0.01 * total, (name, fp.stat().st_size, total)


def test_estimated_drift_is_close_to_exact(run_cli, big, tmp_path: Path) -> None:
    fp = str(fingerprint(run_cli, big["base"], tmp_path / "base.json"))
    key = "m/a/.ATTRIBUTES/VARIABLE_VALUE"
    errors = {}
    for sigma, cand in big["noisy"].items():
        exact, _ = verify_paths(cand, previous=big["base"])
        est, _ = verify_paths(cand, previous=fp)
        de = {t.name: t for t in exact.tensors}[key].drift["previous"]
        dx = {t.name: t for t in est.tensors}[key].drift["previous"]
        assert not de.estimated and dx.estimated
        assert de.relative_l2 == pytest.approx(sigma, rel=0.01)  # the perturbation is what we think it is
        errors[sigma] = dx.relative_l2 / de.relative_l2 - 1
        # untouched tensors: hashes are equal, so the estimate is exact and zero
        for other in ("m/b/.ATTRIBUTES/VARIABLE_VALUE", "m/c/.ATTRIBUTES/VARIABLE_VALUE"):
            d = {t.name: t for t in est.tensors}[other].drift["previous"]
            assert d.relative_l2 == 0.0 and not d.estimated
        assert est.verdict == exact.verdict, sigma
    print("relative error of the estimated relative_l2 by sigma:", {s: round(e, 4) for s, e in errors.items()})
    assert all(abs(e) < 0.10 for e in errors.values()), errors
    # the sketch docstring promises ~2.2% standard error: the typical error is of that order
    assert float(np.sqrt(np.mean(np.square(list(errors.values()))))) < 0.06, errors
