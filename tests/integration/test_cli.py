"""The CLI's contracts (DESIGN.md): output shapes, JSON keys, exit codes."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

import ckptwatch

REPORT_KEYS = {"schema", "tool", "created", "checkpoint", "verdict", "findings", "drift", "tensors", "model", "timings"}
OPTIONAL_REPORT_KEYS = {"references", "history"}
FINDING_KEYS = {"severity", "check", "tensor", "reference", "message"}
DRIFT_FINDING_KEYS = {"value", "limit", "expected", "basis"}  # what it saw, held it to, and where that came from
NAMED_FINDING_KEYS = {"display_name"}  # beside `tensor`, when a finding names one (issue 15)
CHECK_PREFIXES = ("integrity.", "nonfinite", "structure.", "drift.", "restore.", "functional.")
STRUCTURE_CHECKS = {f"structure.{c}" for c in ("missing", "unexpected", "shape", "dtype", "renamed")}
DRIFT_KEYS = {"relative_l2", "max_abs", "cosine", "changed_fraction"}
STATS_KEYS = {"count", "mean", "std", "min", "max", "l2", "zero_fraction", "skewness", "kurtosis", "nan", "inf"}


def parse_table(text: str, first_header: str) -> list[dict[str, str]]:
    """Rows of the table whose header line starts with `first_header`, cut at the
    columns the dashed line under the header defines. Asserts the alignment: every
    row has spaces in the gaps between columns."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    header, dashes = lines[start], lines[start + 1]
    assert set(dashes) <= {"-", " "} and dashes.startswith("-"), dashes
    spans = [m.span() for m in re.finditer(r"-+", dashes)]
    names = [header[a:b].strip() for a, b in spans[:-1]] + [header[spans[-1][0] :].strip()]
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith("..."):
            break
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            assert line[end:nxt].strip() == "", f"misaligned row: {line!r}"
        cells = [line[a:b].strip() for a, b in spans[:-1]] + [line[spans[-1][0] :].strip()]
        rows.append(dict(zip(names, cells)))
    return rows


def test_version(run_cli) -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"ckptwatch {ckptwatch.__version__}"


def test_cli_does_not_import_tensorflow(run_python) -> None:
    r = run_python("import ckptwatch.cli, ckptwatch.verify.engine, sys; print('tensorflow' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


VERIFY_IN_PROCESS = (
    "import sys\n"
    "from ckptwatch.cli import main\n"
    "try:\n"
    "    main(['verify', sys.argv[1], '--previous', sys.argv[2], '--json'])\n"
    "except SystemExit as e:\n"
    "    print('exit', e.code, 'tensorflow' in sys.modules, file=sys.stderr)\n"
)


def test_a_whole_verify_does_not_import_tensorflow(run_python, keras_run) -> None:
    code = "import os; os.environ['CKPTWATCH_NO_ISOLATION'] = '1'\n" + VERIFY_IN_PROCESS
    r = run_python(code, keras_run.candidate, keras_run.previous)
    assert r.stderr.strip().splitlines()[-1] == "exit 0 False", r.stderr[-2000:]
    assert json.loads(r.stdout)["verdict"] == "pass"


def test_main_called_with_arguments_verifies_those_arguments(run_python, keras_run) -> None:
    r = run_python(VERIFY_IN_PROCESS, keras_run.candidate, keras_run.previous)
    assert r.stderr.strip().splitlines()[-1].startswith("exit 0"), r.stderr[-2000:]
    assert json.loads(r.stdout)["verdict"] == "pass"


def test_inspect_human_output_is_an_aligned_table(run_cli, keras_run) -> None:
    r = run_cli("inspect", keras_run.candidate)
    assert r.returncode == 0 and r.stderr == ""
    rows = parse_table(r.stdout, "TENSOR")
    assert {"TENSOR", "DTYPE", "SHAPE", "BYTES"} <= set(rows[0])
    assert len(rows) == 22  # every tensor of the checkpoint
    by_name = {row["TENSOR"]: row for row in rows}
    assert by_name["model/_functional/_operations/2/_kernel"]["SHAPE"] == "16x16"
    assert by_name["model/_functional/_operations/2/_kernel"]["DTYPE"] == "float32"


def strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"bare {constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("which", ["keras", "dtype_zoo"])
def test_inspect_json(run_cli, keras_run, dtype_zoo, which: str) -> None:
    path = keras_run.candidate if which == "keras" else dtype_zoo.path
    r = run_cli("inspect", path, "--json")
    assert r.returncode in (0, 1), r.stderr
    doc = strict_json(r.stdout)
    assert {"checkpoint", "tensors"} <= set(doc)
    assert set(doc["checkpoint"]) >= {"path", "format", "step", "tensors", "bytes"}
    assert doc["checkpoint"]["tensors"] == len(doc["tensors"])
    for t in doc["tensors"]:
        assert {"name", "dtype", "shape", "bytes", "stats"} <= set(t)
        assert isinstance(t["shape"], list) and isinstance(t["bytes"], int)
        if t["dtype"] != "string":
            assert set(t["stats"]) >= STATS_KEYS, t["name"]
    by_name = {t["name"]: t for t in doc["tensors"]}
    if which == "keras":
        assert r.returncode == 0 and len(doc["tensors"]) == 22
        assert doc["checkpoint"]["step"] == 3 and doc["checkpoint"]["format"] == "tf-bundle"
        return
    assert len(doc["tensors"]) == 14
    f64 = by_name["zoo/f64/.ATTRIBUTES/VARIABLE_VALUE"]
    assert f64["dtype"] == "float64" and f64["shape"] == [3, 4, 5] and f64["bytes"] == 480
    assert f64["stats"]["count"] == 60
    assert by_name["zoo/empty/.ATTRIBUTES/VARIABLE_VALUE"]["stats"]["count"] == 0


def check_report_contract(doc: dict) -> None:
    assert REPORT_KEYS <= set(doc) <= REPORT_KEYS | OPTIONAL_REPORT_KEYS, set(doc)
    assert doc["schema"] == "ckptwatch.report/v1"
    assert set(doc["checkpoint"]) == {"path", "format", "step", "tensors", "bytes"}
    assert doc["verdict"] in ("pass", "warn", "fail", "error")
    for f in doc["findings"]:
        assert FINDING_KEYS <= set(f) <= FINDING_KEYS | DRIFT_FINDING_KEYS | NAMED_FINDING_KEYS, set(f)
        assert ("display_name" in f) == (f["tensor"] is not None), f
        if f["check"].startswith("drift."):
            assert set(f) >= DRIFT_FINDING_KEYS, f
        assert f["severity"] in ("fail", "warn", "info")
        assert f["check"].startswith(CHECK_PREFIXES), f["check"]
        if f["check"].startswith("structure."):
            assert f["check"] in STRUCTURE_CHECKS
        assert f["reference"] in ("previous", "golden", None)
        assert isinstance(f["message"], str) and f["message"] and "\n" not in f["message"]
    assert set(doc["drift"]) == {"previous", "golden"}
    for d in doc["drift"].values():
        assert d is None or set(d) >= DRIFT_KEYS
    for t in doc["tensors"]:
        assert {"name", "dtype", "shape", "stats", "drift"} <= set(t)
        assert set(t["drift"]) == {"previous", "golden"}
    assert doc["model"] is None
    assert isinstance(doc["timings"], dict)


@pytest.mark.parametrize(
    "case",
    ["alone", "previous", "golden_and_previous", "nan", "renamed", "replica", "corrupt"],
)
def test_verify_json_follows_the_report_contract(run_cli, keras_run, tf1_scopes, tmp_path: Path, case: str) -> None:
    args = {
        "alone": [keras_run.candidate],
        "previous": [keras_run.candidate, "--previous", keras_run.previous],
        "golden_and_previous": [keras_run.candidate, "--previous", keras_run.previous, "--golden", keras_run.untrained],
        "nan": [keras_run.nan, "--previous", keras_run.candidate],
        "renamed": [tf1_scopes.renamed, "--golden", tf1_scopes.old[0]],
        "replica": [keras_run.perturbed, "--profile", "replica", "--golden", keras_run.candidate],
    }.get(case)
    if case == "corrupt":
        bad = tmp_path / "ckpt-1"
        Path(str(bad) + ".index").write_bytes(b"not an index")
        args = [bad]
    r = run_cli("verify", *args, "--json")
    assert r.returncode in (0, 1), r.stderr
    doc = strict_json(r.stdout)
    check_report_contract(doc)
    assert r.returncode == (1 if doc["verdict"] == "fail" else 0)
    if case == "golden_and_previous":
        assert doc["drift"]["previous"] is not None and doc["drift"]["golden"] is not None
    if case == "nan":
        assert doc["verdict"] == "fail"
        (t,) = [t for t in doc["tensors"] if t["name"] == keras_run.kernels[keras_run.nan_layer]]
        assert t["stats"]["nan"] == 3  # NaN counted, and the JSON stays valid (strict_json: no bare NaN)


def test_diff_top_json(run_cli, keras_run) -> None:
    full = run_cli("diff", keras_run.candidate, keras_run.previous, "--json")
    top = run_cli("diff", keras_run.candidate, keras_run.previous, "--top", "3", "--json")
    assert full.returncode == top.returncode == 0, (full.stderr, top.stderr)
    a, b = full.json(), top.json()
    assert b["schema"] == "ckptwatch.diff/v1"
    assert {"schema", "a", "b", "tensors"} <= set(b)
    assert b["a"]["path"].endswith("ckpt-3") and b["b"]["path"].endswith("ckpt-2")
    assert len(b["tensors"]) == 3
    for t in b["tensors"]:
        assert "name" in t and set(t) >= DRIFT_KEYS
    values = [t["relative_l2"] for t in a["tensors"] if t["relative_l2"] is not None]
    assert values == sorted(values, reverse=True) and len(values) > 3
    assert [t["name"] for t in b["tensors"]] == [t["name"] for t in a["tensors"][:3]]
    assert b["tensors"][0]["relative_l2"] == max(values)


def test_diff_human(run_cli, keras_run) -> None:
    r = run_cli("diff", keras_run.candidate, keras_run.previous, "--top", "4")
    assert r.returncode == 0
    rows = parse_table(r.stdout, "TENSOR")
    assert len(rows) == 4
    rel = [float(row["REL L2"]) for row in rows]
    assert rel == sorted(rel, reverse=True)


def test_human_verify_lists_worst_tensors_first(run_cli, keras_run) -> None:
    doc = run_cli("verify", keras_run.candidate, "--previous", keras_run.previous, "--json").json()
    r = run_cli("verify", keras_run.candidate, "--previous", keras_run.previous)
    assert r.returncode == 0
    assert "PASS" in r.stdout.splitlines()[1]
    rows = parse_table(r.stdout, "TENSOR")
    col = next(c for c in rows[0] if c.startswith("REL L2"))
    weights = {t["display"]: t["drift"]["previous"]["relative_l2"] for t in doc["tensors"] if t["kind"] == "weight"}
    shown = [row for row in rows if row["TENSOR"] in weights]
    assert len(shown) == len(weights) == 6
    drift = [float(row[col]) for row in shown]
    assert drift == sorted(drift, reverse=True)
    assert rows[0]["TENSOR"] == max(weights, key=weights.get)  # the worst compared tensor comes first


def test_human_verify_puts_failing_tensors_on_top(run_cli, keras_run) -> None:
    r = run_cli("verify", keras_run.nan, "--previous", keras_run.candidate)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert "FAIL" in lines[1]
    findings = parse_table(r.stdout, "SEVERITY")
    assert findings[0]["SEVERITY"] == "fail" and findings[0]["CHECK"] == "nonfinite"
    # the tensors table follows the findings table; its first row is the poisoned kernel
    tables = [i for i, line in enumerate(lines) if line.startswith("TENSOR")]
    rows = parse_table("\n".join(lines[tables[-1] :]), "TENSOR")
    nan_display = {t["name"]: t["display"] for t in run_cli("verify", keras_run.nan, "--json").json()["tensors"]}
    assert rows[0]["TENSOR"] == nan_display[keras_run.kernels[keras_run.nan_layer]]


def test_policy_file_with_a_bad_key(run_cli, keras_run, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('profile = "training"\nmax_jumpp = 2.0\n')
    r = run_cli("verify", keras_run.candidate, "--previous", keras_run.previous, "--policy", policy)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "max_jumpp" in lines[0] and "Traceback" not in r.stderr


def test_policy_file_with_a_bad_override(run_cli, keras_run, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[[overrides]]\npattern = "*bias*"\nmax_jump = -1\n')
    r = run_cli("verify", keras_run.candidate, "--policy", policy)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "overrides.0.max_jump" in lines[0]


def test_policy_file_is_applied(run_cli, keras_run, tmp_path: Path) -> None:
    """A working policy changes the verdict: without history, a tight max_jump turns the normal
    step into a warning, a tight clear_jump (fails with or without history) into a fail."""
    policy = tmp_path / "tight.toml"
    policy.write_text("max_jump = 0.01\n")
    r = run_cli("verify", keras_run.candidate, "--previous", keras_run.previous, "--policy", policy, "--json")
    assert r.returncode == 0 and r.json()["verdict"] == "warn"
    jumps = {f["tensor"] for f in r.json()["findings"] if f["check"] == "drift.jump" and f["severity"] == "warn"}
    assert set(keras_run.kernels.values()) <= jumps
    policy.write_text("clear_jump = 0.01\n")
    r = run_cli("verify", keras_run.candidate, "--previous", keras_run.previous, "--policy", policy, "--json")
    assert r.returncode == 1
    jumps = {f["tensor"] for f in r.json()["findings"] if f["check"] == "drift.jump" and f["severity"] == "fail"}
    assert set(keras_run.kernels.values()) <= jumps


def test_usage_errors_exit_2(run_cli, keras_run) -> None:
    for args in (["verify"], ["verify", keras_run.candidate, "--profile", "nonsense"], ["nosuchcommand"]):
        r = run_cli(*args)
        assert r.returncode == 2, args
        assert "Traceback" not in r.stderr
