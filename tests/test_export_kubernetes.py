"""export kubernetes: manifests that validate offline against the 1.31+ schemas, the id mapping, no secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT
from exec_supervisor import config as config_mod
from exec_supervisor.runone import pick_instance

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")

VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
SECRET = "s3cr3t-Token-Value-9f8e7d"


def export(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exec_supervisor", "export", "kubernetes", str(config), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def validate_all(docs: list[dict[str, Any]]) -> None:
    for version in VERSIONS:
        for doc in docs:
            # strict: an unknown or misspelt field fails too
            kubernetes_validate.validate(doc, version, strict=True)


def farm_config(tmp_path: Path, executors: str, service: str = "") -> Path:
    program = tmp_path / "app" / "executor.py"
    program.parent.mkdir(exist_ok=True)
    program.write_text("import time\ntime.sleep(60)\n")
    path = tmp_path / "farm.yaml"
    path.write_text(f"service:\n  host: http://log-api.example:8083/\n{service}"
                    f"supervisor: {{name: farm-01, state_dir: state, log_dir: logs}}\n"
                    f"defaults: {{stop_timeout: 20s}}\n"
                    f"executors:\n{executors}")
    return path


def test_the_example_farm_validates_against_1_31_and_the_latest_schemas() -> None:
    done = export(ROOT / "configs" / "farm.yaml", "--image", "registry.example/farm:1", "--namespace", "farms")
    assert done.returncode == 0, done.stderr
    docs = documents(done.stdout)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "StatefulSet"]
    validate_all(docs)
    sts = docs[2]
    assert sts["metadata"]["name"] == "et-helloworld" and sts["metadata"]["namespace"] == "farms"
    spec = sts["spec"]
    assert (spec["replicas"], spec["ordinals"], spec["podManagementPolicy"]) == (4, {"start": 0}, "Parallel")
    assert spec["serviceName"] == docs[1]["metadata"]["name"] and docs[1]["spec"]["clusterIP"] == "None"
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["exec-supervisor", "run-one", "/etc/exec-supervisor/farm.yaml"]
    assert "--id-from-hostname" in container["command"]
    assert pod["terminationGracePeriodSeconds"] > 10  # stop_timeout 10s
    # Deterministic: the same config gives the same text.
    assert export(ROOT / "configs" / "farm.yaml", "--image", "registry.example/farm:1",
                  "--namespace", "farms").stdout == done.stdout


def test_several_id_ranges_map_to_statefulsets_whose_pods_carry_the_exec_ids(tmp_path: Path) -> None:
    config = farm_config(tmp_path, "  Infer_GPU:\n    command: ['{python}', ../app/executor.py]\n"
                                   "    ids: [0-3, 10, 20-22]\n    cwd: app/../app\n"
                                   "  Small:\n    command: ['{python}', app/executor.py]\n    count: 2\n")
    done = export(config, "--image", "img:1", "--spool", "pvc")
    assert done.returncode == 0, done.stderr
    docs = documents(done.stdout)
    validate_all(docs)
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    shape = [(s["metadata"]["name"], s["spec"]["ordinals"]["start"], s["spec"]["replicas"],
              s["metadata"]["annotations"]["exec-supervisor/max-replicas"]) for s in sets]
    assert shape == [("et-infer-gpu", 0, 4, "10"), ("et-infer-gpu-10", 10, 1, "10"),
                     ("et-infer-gpu-20", 20, 3, "unbounded"), ("et-small", 0, 2, "unbounded")]
    cfg = config_mod.load(config)
    pods = {}
    for sts in sets:
        command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
        type_name = command[command.index("--type") + 1]
        for ordinal in range(sts["spec"]["ordinals"]["start"], sts["spec"]["ordinals"]["start"] + sts["spec"]["replicas"]):
            pod_name = f"{sts['metadata']['name']}-{ordinal}"  # what the StatefulSet controller names it
            assert len(pod_name) <= 63
            pods[pod_name] = pick_instance(cfg, type_name=type_name, from_hostname=True, hostname=pod_name)
    assert pods["et-infer-gpu-3"] == ("Infer_GPU", 3)
    assert pods["et-infer-gpu-10-10"] == ("Infer_GPU", 10)
    assert pods["et-small-1"] == ("Small", 1)
    assert sorted(f"ET-{t}-{i}" for t, i in pods.values()) == sorted(s.exec_id for s in cfg.planned())
    # With --spool pvc every pod gets its own claim for the spool.
    assert all(s["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "spool" for s in sets)


def test_the_configmap_config_loads_where_the_image_holds_the_farm(tmp_path: Path) -> None:
    config = farm_config(tmp_path, "  A:\n    command: ['{python}', ../app/executor.py]\n    ids: 0-1\n"
                                   "    cwd: sub\n")
    (tmp_path / "sub").mkdir()
    image_dir = tmp_path / "image" / "etc-farm"  # the config's folder, as the image lays it out
    (image_dir / "sub").mkdir(parents=True)
    (image_dir / "app").mkdir()
    (image_dir / "app" / "executor.py").write_text("")
    done = export(config, "--image", "img:1", "--image-config-dir", str(image_dir))
    assert done.returncode == 0, done.stderr
    inner = yaml.safe_load(documents(done.stdout)[0]["data"]["farm.yaml"])
    assert inner["executors"]["A"]["cwd"] == str(image_dir / "sub")
    assert "name" not in inner["supervisor"]  # the pod's host name names its supervisor
    mounted = tmp_path / "mounted" / "farm.yaml"
    mounted.parent.mkdir()
    mounted.write_text(yaml.safe_dump(inner))
    cfg = config_mod.load(mounted)
    assert cfg.programs["A"] == sys.executable
    assert [s.cwd for s in cfg.planned()] == [str(image_dir / "sub")] * 2


@pytest.mark.parametrize("auth, keys", [
    ("  auth: {token_env: LOG_API_TOKEN}\n", ["LOG_API_TOKEN"]),
    ("  auth: {username_env: LOG_API_USER, password_env: LOG_API_PASSWORD}\n", ["LOG_API_USER", "LOG_API_PASSWORD"]),
])
def test_auth_comes_from_a_secret_and_no_secret_value_is_written(tmp_path: Path, auth: str, keys: list[str]) -> None:
    config = farm_config(tmp_path, "  A:\n    command: ['{python}', app/executor.py]\n    ids: 0\n", service=auth)
    secrets = {key: f"{SECRET}-{key}" for key in keys}
    refused = export(config, "--image", "img:1", env=secrets)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"exec-supervisor export kubernetes: farm.yaml: service.auth: give --auth-secret NAME, a Secret holding "
        f"{', '.join(keys)} (manifests never hold a secret)"]
    done = export(config, "--image", "img:1", "--auth-secret", "log-api", env=secrets)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout and SECRET not in done.stderr
    docs = documents(done.stdout)
    validate_all(docs)
    env = docs[-1]["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {key: {"name": "log-api", "key": key} for key in keys}


def test_a_token_file_is_mounted_from_the_secret(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SECRET)
    config = farm_config(tmp_path, "  A:\n    command: ['{python}', app/executor.py]\n    ids: 0\n",
                         service="  auth: {token_file: token}\n")
    done = export(config, "--image", "img:1", "--auth-secret", "log-api")
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout
    docs = documents(done.stdout)
    validate_all(docs)
    inner = yaml.safe_load(docs[0]["data"]["farm.yaml"])
    assert inner["service"]["auth"] == {"token_file": "/var/run/secrets/exec-supervisor/token"}
    pod = docs[-1]["spec"]["template"]["spec"]
    assert {"name": "auth", "mountPath": "/var/run/secrets/exec-supervisor", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]


def test_type_names_that_clash_in_lower_case_are_refused(tmp_path: Path) -> None:
    config = farm_config(tmp_path, "  Ab:\n    command: ['{python}', app/executor.py]\n    ids: 0\n"
                                   "  AB:\n    command: ['{python}', app/executor.py]\n    ids: 0\n")
    done = export(config, "--image", "img:1")
    assert done.returncode == 2
    assert "clashes" in done.stderr and len(done.stderr.strip().splitlines()) == 1
