"""deploy/kubernetes: every kustomization rendered with `kubectl kustomize`, every manifest validated
offline against the Kubernetes JSON schemas (kubernetes-validate's bundled strict schemas, with
jsonschema) and Prometheus Operator resources (ours and deploy/prometheus/*.yaml) against the
validators generated from the operator's CRD schemas (@kubernetes-models/prometheus-operator, node).
Then the sidecar's semantics, and the rendered config + env run by a real daemon answering its probes."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.tools import unavailable, wait_until

from .conftest import ROOT, VENV_BIN, clean_env, require_tool

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml"))
KUBERNETES_VERSION = "1.32"  # native sidecars: beta, on by default, since 1.29; kubectl here is 1.32
NPM_MODULES = Path(os.environ.get("CKPTWATCH_NPM_MODULES", ROOT / ".venv" / "tools" / "npm" / "node_modules"))
VALIDATE_CRDS = Path(__file__).with_name("validate_crds.mjs")
# DESIGN.md: /healthz and /livez (process alive), /readyz (watches armed and a worker up)
DESIGN_PROBES = {
    "startupProbe": ("/livez", "/healthz"),
    "livenessProbe": ("/livez", "/healthz"),
    "readinessProbe": ("/readyz",),
}


def render(overlay: str) -> list[dict]:
    kubectl = require_tool("kubectl", "kubectl with kustomize")
    p = subprocess.run(
        [kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay) for overlay in KUSTOMIZATIONS}


def test_both_variants_exist():
    assert KUSTOMIZATIONS == ["base", "overlays/gpu", "overlays/persistent"]


# -- schema validation -------------------------------------------------------------------------------------


def k8s_errors(doc: dict) -> list[str]:
    """Every schema violation of a built-in kind (strict: unknown fields are errors)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


def crd_results(docs: list[dict]) -> list[dict]:
    node = require_tool("node", "Node.js; `make tools` installs the validators with npm")
    if not (NPM_MODULES / "@kubernetes-models" / "prometheus-operator").is_dir():
        unavailable(f"{NPM_MODULES}: no @kubernetes-models/prometheus-operator (run `make tools`)")
    p = subprocess.run(
        [node, str(VALIDATE_CRDS), str(NPM_MODULES)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    assert len(results) == len(docs)
    return results


def is_operator_resource(doc: dict) -> bool:
    return str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/")


def test_builtin_kinds_match_the_kubernetes_schemas(rendered):
    checked = 0
    for overlay, docs in rendered.items():
        for doc in docs:
            if is_operator_resource(doc):
                continue
            assert k8s_errors(doc) == [], f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
            checked += 1
    assert checked >= 6  # ConfigMap, PVC, Job in each variant


def prometheus_rule_files() -> list[Path]:
    files = []
    for path in sorted((ROOT / "deploy" / "prometheus").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        if any(d.get("kind") == "PrometheusRule" for d in docs):
            files.append(path)
    return files


def test_operator_resources_match_the_crd_schemas(rendered):
    docs = [d for ds in rendered.values() for d in ds if is_operator_resource(d)]
    for path in prometheus_rule_files():
        docs += [
            d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d["kind"] == "PrometheusRule"
        ]
    assert any(d["kind"] == "PodMonitor" for d in docs)
    results = crd_results(docs)
    assert [r for r in results if not r["ok"]] == []


def job(docs: list[dict]) -> dict:
    (found,) = [d for d in docs if d["kind"] == "Job"]
    return found


def test_validators_reject_broken_manifests(rendered):
    """The two checks above can fail: the same validators on deliberately broken copies."""
    docs = rendered["base"]
    broken_job = copy.deepcopy(job(docs))
    sidecar = broken_job["spec"]["template"]["spec"]["initContainers"][0]
    sidecar["volumeMounts"][0]["readonly"] = True  # misspelt: would be silently dropped by a lax client
    assert any("readonly" in e for e in k8s_errors(broken_job)), k8s_errors(broken_job)
    typed = copy.deepcopy(job(docs))
    typed["spec"]["template"]["spec"]["initContainers"][0]["ports"][0]["containerPort"] = "9847"
    assert k8s_errors(typed)

    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    bad_port = copy.deepcopy(monitor)
    bad_port["spec"]["podMetricsEndpoints"][0]["port"] = 9847  # must be the port's name
    no_selector = copy.deepcopy(monitor)
    del no_selector["spec"]["selector"]
    bad_interval = copy.deepcopy(monitor)
    bad_interval["spec"]["podMetricsEndpoints"][0]["interval"] = "half a minute"
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "broken"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "NoExpr", "for": "5m"}]}]},
    }
    results = crd_results([monitor, bad_port, no_selector, bad_interval, rule])
    assert [r["ok"] for r in results] == [True, False, False, False, False], results


# -- what the sidecar must be -------------------------------------------------------------------------------


def sidecar_of(docs: list[dict]) -> tuple[dict, dict]:
    pod = job(docs)["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod.get("initContainers", []) if c["name"] == "ckptwatch"]
    return pod, sidecar


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def config_of(docs: list[dict]) -> tuple[str, str]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (text,) = cm["data"].values()
    return cm["metadata"]["name"], text


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_native_sidecar(rendered, overlay):
    docs = rendered[overlay]
    pod, sidecar = sidecar_of(docs)
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar, not an init step
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    trainers = pod["containers"]
    # the checkpoint volume: written by the trainer, read-only for ckptwatch
    (ckpt_mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == "/checkpoints"]
    assert ckpt_mount.get("readOnly") is True
    assert any(m["name"] == ckpt_mount["name"] and not m.get("readOnly") for c in trainers for m in c["volumeMounts"])
    # writable paths (the root filesystem is read-only): /tmp (an emptyDir), the state (an emptyDir, a
    # claim of its own in overlays/persistent) and publish_dir's tree: the checkpoint volume's verified/
    env = env_of(sidecar)
    state_dir = env["CKPTWATCH_STATE_DIR"]
    writable = {m["mountPath"]: m for m in sidecar["volumeMounts"] if not m.get("readOnly")}
    _, text = config_of(docs)
    (watch,) = tomllib.loads(text)["watch"]
    published = next(p for p in writable if watch["publish_dir"].startswith(p + "/"))
    assert set(writable) == {state_dir, "/tmp", published}, writable
    assert "emptyDir" in volumes[writable["/tmp"]["name"]]
    state_volume = volumes[writable[state_dir]["name"]]
    if overlay == "overlays/persistent":
        claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
        assert "emptyDir" not in state_volume and state_volume["persistentVolumeClaim"]["claimName"] in claims
        assert state_volume["persistentVolumeClaim"]["claimName"] != volumes[ckpt_mount["name"]].get(
            "persistentVolumeClaim", {}
        ).get("claimName")
    else:
        assert "emptyDir" in state_volume
    # publish_dir on the shared checkpoint volume: whoever mounts it at /checkpoints finds the state
    # file under verified/ and the paths in it (/checkpoints/...) resolve for them too
    pub = writable[published]
    assert pub["name"] == ckpt_mount["name"] and pub["subPath"] == "verified"
    assert not watch["publish_dir"].startswith(watch["path"]) and watch["path"].startswith("/checkpoints/")
    assert env["NUMBA_CACHE_DIR"].startswith(state_dir + "/") and env["HOME"] == state_dir
    # the config: the generated ConfigMap (hash-suffixed name) mounted where the command reads it
    cm_name, _ = config_of(docs)
    assert volumes[mounts["config"]["name"]]["configMap"]["name"] == cm_name
    config_arg = sidecar["command"][sidecar["command"].index("--config") + 1]
    assert Path(config_arg).parent.as_posix() == mounts["config"]["mountPath"]


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_ports_probes_and_monitor_agree(rendered, overlay):
    docs = rendered[overlay]
    _, sidecar = sidecar_of(docs)
    (port,) = sidecar["ports"]
    assert port["name"] == "metrics"
    listen = env_of(sidecar)["CKPTWATCH_LISTEN"]
    host, _, listen_port = listen.rpartition(":")
    assert host == "0.0.0.0" and int(listen_port) == port["containerPort"], listen
    for probe, paths in DESIGN_PROBES.items():
        get = sidecar[probe]["httpGet"]
        assert get["path"] in paths and get["port"] in ("metrics", port["containerPort"]), (probe, get)
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    labels = job(docs)["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_the_drain_fits_the_grace_period_and_the_summary_lands_in_the_termination_message(rendered, overlay):
    docs = rendered[overlay]
    pod, sidecar = sidecar_of(docs)
    _, text = config_of(docs)
    daemon = tomllib.loads(text)["daemon"]
    # SIGTERM: drain, then stop the worker (up to 3 s) and close the state, before the kubelet's SIGKILL
    assert daemon["drain_seconds"] + 5 <= pod["terminationGracePeriodSeconds"], (daemon, pod)
    assert sidecar.get("terminationMessagePath", "/dev/termination-log") == daemon["termination_log"]
    assert sidecar["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_the_podmonitor_is_selected_by_kube_prometheus_stack(rendered, overlay):
    (monitor,) = [d for d in rendered[overlay] if d["kind"] == "PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_security_context(rendered, overlay):
    pod, sidecar = sidecar_of(rendered[overlay])
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001  # the image's user
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"requests", "limits"} <= set(sidecar["resources"]) and "memory" in sidecar["resources"]["limits"]


def test_gpu_overlay(rendered):
    _, base = sidecar_of(rendered["base"])
    pod, gpu = sidecar_of(rendered["overlays/gpu"])
    assert env_of(base)["CKPTWATCH_DEVICES"] == "cpu"
    assert "nvidia.com/gpu" not in base["resources"].get("limits", {})
    assert env_of(gpu)["CKPTWATCH_DEVICES"] == "gpu:0"
    assert str(gpu["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert gpu["image"] == base["image"] + "-gpu"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    # the GPU image's TensorFlow is the pinned one (Dockerfile: --build-arg BASE=tensorflow/tensorflow:X-gpu)
    pinned = re.search(r"^tensorflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f"tensorflow/tensorflow:{pinned}-gpu" in (K8S / "overlays" / "gpu" / "kustomization.yaml").read_text()


# -- the rendered config and env, run for real ------------------------------------------------------------------


def test_rendered_config_passes_check_config(rendered, tmp_path: Path):
    for overlay, docs in rendered.items():
        _, text = config_of(docs)
        path = tmp_path / f"{overlay.replace('/', '-')}.toml"
        path.write_text(text)
        p = subprocess.run(
            [str(VENV_BIN / "ckptwatch"), "check-config", str(path)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert p.returncode == 0, p.stderr


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_probes_answer_from_a_daemon_run_like_the_sidecar(rendered, daemons, tmp_path: Path):
    """The rendered ConfigMap and the sidecar's env (mount paths mapped into tmp_path, loopback on a free
    port instead of 0.0.0.0:9847): the probe paths answer 200 once the worker is up."""
    docs = rendered["base"]
    _, sidecar = sidecar_of(docs)
    _, text = config_of(docs)
    mounts = {m["mountPath"]: tmp_path / m["name"] / m.get("subPath", "") for m in sidecar["volumeMounts"]}
    mounts["/dev/termination-log"] = tmp_path / "termination-log"  # the kubelet's file
    for path, d in mounts.items():
        if path != "/dev/termination-log":
            d.mkdir(parents=True, exist_ok=True)
    mounts["/dev/termination-log"].write_text("")

    def mapped(value: str) -> str:
        for path, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == path or value.startswith(path + "/"):
                return str(local) + value[len(path) :]
        return value

    config = tomllib.loads(text)
    for w in config["watch"]:
        (Path(mapped(w["path"]))).mkdir(parents=True, exist_ok=True)
    (Path(mapped(sidecar["command"][-1]))).write_text(mapped_config(text, mapped))
    env = clean_env({k: mapped(v) for k, v in env_of(sidecar).items()})
    env["CKPTWATCH_LISTEN"] = "127.0.0.1:0"
    argv = [str(VENV_BIN / "ckptwatch"), *[mapped(a) for a in sidecar["command"][1:]]]
    daemon = daemons(argv, env)
    port = daemon.port()
    daemon.wait_for("worker ready", timeout=120)
    for probe in DESIGN_PROBES:
        path = sidecar[probe]["httpGet"]["path"]
        url = f"http://127.0.0.1:{port}{path}"
        # readiness may trail "worker ready" by a heartbeat
        wait_until(lambda u=url: http_status(u) == 200, 10, f"{probe} {path}", interval=0.1)
    assert daemon.stop() == 0
    assert (Path(mapped(env_of(sidecar)["CKPTWATCH_STATE_DIR"])) / "state.sqlite3").is_file()
    assert "stopped (SIGTERM)" in mounts["/dev/termination-log"].read_text()


def mapped_config(text: str, mapped) -> str:
    """The config with its absolute paths moved into the test's directories (TOML basic strings)."""
    return re.sub(r'"(/[^"]*)"', lambda m: json.dumps(mapped(m.group(1))), text)
