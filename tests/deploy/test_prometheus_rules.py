"""deploy/prometheus and deploy/grafana, checked with the real tools and without a daemon.

* the plain rules file and the PrometheusRule carry the same groups, byte for byte (no drift);
* `promtool check rules` accepts both; `promtool test rules` passes every unit test file;
* every alert has `for:`, a severity, a summary and a runbook-ish description naming its subject,
  and a `runbook_url` naming its runbook, a file in deploy/prometheus/runbooks/;
* one cause pages once: with the data a NaN checkpoint leaves, exactly one critical alert fires
  (tests/one_page_per_cause.yml, checked here to name every critical alert);
* the Alertmanager example passes `amtool check-config`, routes critical alerts to the pager and
  inhibits what follows from a daemon that is down;
* every alert has promtool tests that see it firing and not firing, and those tests notice when
  the alert never fires or always fires (mutation runs of promtool on altered copies);
* the dashboard is valid JSON of the agreed shape, and every metric a rule or panel names is one
  the daemon exports (names taken from a real scrape of DaemonMetrics, not from a list here).

The loop with a real Prometheus scraping a real daemon is tests/e2e/test_prometheus_loop.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import Snapshot, StateHealth, WorkerStatus
from tests.factories import watch_status
from tests.tools import MODEL_AWARE, require_tool

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "ckptwatch.rules.yml"
PROMETHEUS_RULE = PROM_DIR / "prometheusrule.yaml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "ckptwatch.json"
RUNBOOKS = PROM_DIR / "runbooks"
ALERTMANAGER = PROM_DIR / "alertmanager.example.yml"

# alerts about a daemon or its workers (no `watch` label in their series); all others are per watch
NOT_PER_WATCH = {
    "CkptwatchWorkerDown": "device",
    "CkptwatchWorkerRestarting": "device",
    "CkptwatchDown": "instance",
    "CkptwatchConfigReloadFailed": "instance",
    "CkptwatchStateNotWritable": "instance",
}


def promtool() -> str:
    return require_tool("promtool", "Debian package `prometheus`; `make tools` installs it")


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


# -- reading the files (no YAML library: the rules file is written in one regular layout) -----------


def groups_text(text: str, indent: str = "") -> str:
    """The `groups:` block of a rules file (or of a PrometheusRule's spec, `indent` deeper), dedented."""
    lines = text.splitlines()
    start = lines.index(f"{indent}groups:")
    out = []
    for line in lines[start:]:
        if line.strip() and not line.startswith(indent):
            raise AssertionError(f"a line outside the groups block after it: {line!r}")
        out.append(line[len(indent) :])
    return "\n".join(out) + "\n"


def alert_blocks(text: str) -> dict[str, str]:
    """alert name -> the text of its rule, from a rules file in the layout of ckptwatch.rules.yml."""
    parts = re.split(r"^      - alert: ", text, flags=re.M)
    blocks = {}
    for part in parts[1:]:
        name, _, body = part.partition("\n")
        assert name not in blocks, f"duplicate alert {name}"
        blocks[name.strip()] = body
    return blocks


def exported_metric_names() -> set[str]:
    """Every sample name a daemon with one of everything exports (a real registry, scraped)."""
    watch = watch_status("w", finding_counts={("nonfinite", "fail"): 1})
    reg = CollectorRegistry()
    snap = Snapshot("0", 0.0, [watch], [WorkerStatus("cpu", up=True)], StateHealth(), reload_time=1.0)
    metrics = DaemonMetrics(reg, lambda: snap, devices=["cpu"], watches=["w"])
    metrics.verification_finished("w", "pass", 1.0)
    text = generate_latest(reg).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bckptwatch_[a-z0-9_]+", expr))


def dashboard_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(dashboard_panels(p.get("panels") or []))
    return out


# -- rules ----------------------------------------------------------------------------------------


def test_plain_rules_and_prometheusrule_carry_identical_groups():
    rules = RULES.read_text()
    resource = PROMETHEUS_RULE.read_text()
    assert re.search(r"^apiVersion: monitoring\.coreos\.com/v1$", resource, re.M)
    assert re.search(r"^kind: PrometheusRule$", resource, re.M)
    assert re.search(r"^metadata:\n  name: ckptwatch$", resource, re.M)
    assert resource.count("\nspec:\n") == 1 and resource.index("\nspec:\n") < resource.index("\n  groups:\n")
    plain = groups_text(rules)
    assert groups_text(resource, indent="  ") == plain, (
        "deploy/prometheus/prometheusrule.yaml's spec differs from ckptwatch.rules.yml: regenerate it "
        "(the command is in the rules file's header)"
    )
    assert len(alert_blocks(plain)) >= 8


def test_promtool_check_rules_both_files(tmp_path):
    p = run_promtool("check", "rules", RULES)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"SUCCESS: \d+ rules found", p.stdout), p.stdout
    # the PrometheusRule's spec, as Prometheus would load it from the operator's generated file
    spec = tmp_path / "spec.rules.yml"
    spec.write_text(groups_text(PROMETHEUS_RULE.read_text(), indent="  "))
    p = run_promtool("check", "rules", spec)
    assert p.returncode == 0, p.stdout + p.stderr


def test_promtool_check_rules_rejects_a_broken_expression(tmp_path):
    """The check above can fail: the same file with one expression broken does not pass."""
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(RULES.read_text().replace("ckptwatch_nonfinite_values > 0", "ckptwatch_nonfinite_values >", 1))
    assert broken.read_text() != RULES.read_text()
    p = run_promtool("check", "rules", broken)
    assert p.returncode != 0, p.stdout + p.stderr


def test_every_alert_has_for_severity_and_annotations():
    blocks = alert_blocks(RULES.read_text())
    for name, body in blocks.items():
        assert name.startswith("Ckptwatch"), name
        assert re.search(r"^        expr: \S", body, re.M), name
        duration = re.search(r"^        for: (\d+[smh])$", body, re.M)
        assert duration and not duration.group(1).startswith("0"), f"{name}: needs a non-zero `for:`"
        assert re.search(r"^          severity: (critical|warning)$", body, re.M), f"{name}: severity"
        summary = re.search(r"^          summary: (.+)$", body, re.M)
        description = re.search(r"^          description: >-\n((?:            .+\n)+)", body + "\n", re.M)
        assert summary and description, f"{name}: summary and description annotations"
        subject = NOT_PER_WATCH.get(name, "watch")
        for text in (summary.group(1), description.group(1)):
            assert "{{ $labels." + subject + " }}" in text, f"{name}: annotations must name $labels.{subject}"
        assert "Runbook:" in description.group(1), f"{name}: the description says what to do"
        assert len(description.group(1).split()) > 40, f"{name}: a description worth reading at 3 a.m."


def test_every_alert_links_its_runbook_in_the_repository():
    blocks = alert_blocks(RULES.read_text())
    books = {p.stem for p in RUNBOOKS.glob("*.md")}
    assert books == set(blocks), "one runbook per alert, named after it (and none for an alert that is gone)"
    for name, body in blocks.items():
        url = re.search(r"^          runbook_url: '(.+)'$", body, re.M)
        assert url, f"{name}: a runbook_url annotation"
        assert url.group(1) == (
            '{{ or $externalLabels.runbook_base_url "deploy/prometheus/runbooks" }}/' + name + ".md"
        ), f"{name}: runbook_url names deploy/prometheus/runbooks/{name}.md"
        text = (RUNBOOKS / f"{name}.md").read_text()
        assert text.startswith(f"# {name}\n"), name
        severity = re.search(r"^          severity: (\w+)$", body, re.M).group(1)
        assert f"Severity: **{severity}**" in text, f"{name}: the runbook states the rule's severity"
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            assert section in text, f"{name}: runbook section {section}"


def test_one_nan_checkpoint_test_names_every_critical_alert():
    """tests/one_page_per_cause.yml asserts, for every critical alert, what it does while a NaN
    checkpoint is the newest: a new critical alert must be added there (and stay quiet, or be the one)."""
    blocks = alert_blocks(RULES.read_text())
    critical = {n for n, b in blocks.items() if re.search(r"^          severity: critical$", b, re.M)}
    text = (PROM_DIR / "tests" / "one_page_per_cause.yml").read_text()
    named = set(re.findall(r"^    alertname: (\S+)$", text, re.M))
    per_watch = critical - set(NOT_PER_WATCH)
    assert per_watch - named == set(), "critical per-watch alerts the NaN scenario does not check"
    firing = set(re.findall(r"^    alertname: (\S+)\n    exp_alerts:\n    - exp_labels:", text, re.M))
    assert firing == {"CkptwatchNonFiniteWeights"}, "exactly one alert pages for a NaN checkpoint"


def amtool() -> str:
    return require_tool("amtool", "Debian package `prometheus-alertmanager`; `make tools` installs it")


def test_alertmanager_example_is_valid_and_inhibits():
    p = subprocess.run(
        [amtool(), "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "inhibit rules" in p.stdout, p.stdout
    text = ALERTMANAGER.read_text()
    alerts = set(alert_blocks(RULES.read_text()))
    for name in re.findall(r"\bCkptwatch[A-Za-z]+", text):
        assert name in alerts, f"the Alertmanager example names an alert the rules do not have: {name}"

    def route(*labels: str) -> str:
        r = subprocess.run(
            [amtool(), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.strip()

    assert route("alertname=CkptwatchNonFiniteWeights", "severity=critical") == "ml-oncall-pager"
    assert route("alertname=CkptwatchRunStoppedSaving", "severity=warning") == "ml-platform-tickets"
    assert route("alertname=SomethingElse", "severity=critical") == "default"


def test_every_alert_has_firing_and_quiet_unit_tests():
    alerts = set(alert_blocks(RULES.read_text()))
    firing: set[str] = set()
    quiet: set[str] = set()
    for f in RULE_TESTS:
        text = f.read_text()
        assert re.search(r"^- \.\./ckptwatch\.rules\.yml$", text, re.M), f"{f.name} must test ../ckptwatch.rules.yml"
        for name, expected in re.findall(r"^    alertname: (\S+)\n    exp_alerts:(.*)$", text, re.M):
            (quiet if expected.strip() == "[]" else firing).add(name)
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"


def test_promtool_test_rules():
    assert RULE_TESTS
    p = run_promtool("test", "rules", *RULE_TESTS)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("SUCCESS") == len(RULE_TESTS), p.stdout


def _mutated(tmp_path: Path, new_expr: str) -> list[Path]:
    """A copy of deploy/prometheus with every alert's expression replaced by `new_expr`."""
    text = RULES.read_text()
    # one-line `expr: ...`, or `expr: |` and the lines indented below it
    pattern = r"^        expr: (?:\|\n(?:          .*\n|\n)+|.*\n)"
    mutated, n = re.subn(pattern, f"        expr: {new_expr}\n", text, flags=re.M)
    assert n == len(alert_blocks(text)), "every alert's expression was replaced"
    (tmp_path / "tests").mkdir()
    (tmp_path / "ckptwatch.rules.yml").write_text(mutated)
    assert run_promtool("check", "rules", tmp_path / "ckptwatch.rules.yml").returncode == 0
    copies = []
    for f in RULE_TESTS:
        copies.append(tmp_path / "tests" / f.name)
        shutil.copyfile(f, copies[-1])
    return copies


@pytest.mark.parametrize("new_expr", ["vector(1) == 2", "vector(1)"], ids=["never-fires", "always-fires"])
def test_each_unit_test_file_notices_a_broken_alert(tmp_path, new_expr):
    """Every test file fails when its alert never fires, and when it fires regardless of the data."""
    for copy in _mutated(tmp_path, new_expr):
        p = run_promtool("test", "rules", copy)
        assert p.returncode != 0, f"{copy.name} still passes with every expr = {new_expr!r}:\n{p.stdout}"


# -- dashboard --------------------------------------------------------------------------------------


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "ckptwatch" and dash["title"]
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    chained = {  # job, then the instances of those jobs, then their watches (two daemons' same-named watches apart)
        "job": "label_values(ckptwatch_build_info, job)",
        "instance": 'label_values(ckptwatch_build_info{job=~"$job"}, instance)',
        "watch": 'label_values(ckptwatch_last_verdict{job=~"$job", instance=~"$instance"}, watch)',
    }
    for name, definition in chained.items():
        v = variables[name]
        assert v["type"] == "query" and v["multi"] is True and v["includeAll"] is True, name
        assert v["definition"] == definition and v["query"]["query"] == definition, name
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name

    panels = dashboard_panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "panel titles are unique"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert t["expr"].strip(), p["title"]
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for wanted in (
        "ckptwatch_last_verdict",
        "ckptwatch_verifications_total",
        'reference="previous"',
        'reference="golden"',
        "ckptwatch_tensor_drift_relative_l2",
        "histogram_quantile(",
        "ckptwatch_queue_depth",
        "ckptwatch_checkpoints_skipped_total",
        "ckptwatch_worker_up",
        "ckptwatch_worker_restarts_total",
        *MODEL_AWARE,
    ):
        assert wanted in exprs, f"no panel shows {wanted}"
    # the state-set becomes one number per watch, mapped back to the verdict's name
    current = next(p for p in panels if p["title"] == "Current verdict")
    mapped = current["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {v["text"] for v in mapped.values()} == {"pass", "warn", "fail", "error"}


def test_rules_and_dashboard_name_only_metrics_the_daemon_exports():
    exported = exported_metric_names()
    assert exported >= MODEL_AWARE and "ckptwatch_last_pass_timestamp_seconds" in exported
    assert {
        "ckptwatch_watch_armed",
        "ckptwatch_watch_retired",
        "ckptwatch_policy_threshold",
        "ckptwatch_save_interval_seconds",
        "ckptwatch_config_reload_success",
        "ckptwatch_config_reload_timestamp_seconds",
    } <= exported
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard_panels(dash["panels"]) for t in p.get("targets", [])]
    used = metric_names_in(RULES.read_text()) | {name for expr in exprs for name in metric_names_in(expr)}
    assert used, "no metric names found"
    assert used - exported == set(), "names that no daemon exports (a typo, or a renamed metric)"
