"""hosts: one config for a fleet; each daemon runs the share of its supervisor.name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import Farm, wait_until

HOSTS = {"gpu-01": "0-1", "gpu-02": "2-3"}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exec_supervisor", *args], capture_output=True, text=True,
                          timeout=timeout)


def write(farm: Farm, name: str, hosts: dict[str, str] = HOSTS, ids: str = "0-3") -> Path:
    return farm.write({"Infer": farm.program("sleep", ids=ids, hosts=hosts), "Plain": farm.program("sleep", ids=0)},
                      supervisor={"name": name})


def test_check_prints_each_hosts_plan_and_reports_ids_on_no_host(farm: Farm) -> None:
    config = write(farm, "gpu-01", {"gpu-01": "0-1", "gpu-02": "3"})
    done = cli("check", str(config), "--host", "gpu-02")
    assert done.returncode == 0, done.stderr
    planned = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("ET-")]
    assert planned == ["ET-Infer-3", "ET-Plain-0"]  # types without hosts: run on every host
    assert "host gpu-02 (known: gpu-01, gpu-02)" in done.stdout
    assert "executors.Infer.hosts: ids 2 are in no host's share" in done.stdout
    mine = cli("check", str(config))
    assert [line.split()[0] for line in mine.stdout.splitlines() if line.startswith("ET-")] == \
        ["ET-Infer-0", "ET-Infer-1", "ET-Plain-0"]


def test_an_id_on_two_hosts_or_outside_the_ids_is_a_config_error(farm: Farm) -> None:
    config = write(farm, "gpu-01", {"gpu-01": "0-2", "gpu-02": "2-4"})
    done = cli("check", str(config))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert any("executors.Infer.hosts.gpu-02: id 2 is also in the share of gpu-01; each id runs on one host" in l
               for l in lines), lines
    assert any("executors.Infer.hosts.gpu-02: ids 4 are not in this type's ids" in l for l in lines), lines
    assert all(l.startswith(f"{config}:") for l in lines)
    data = yaml.safe_load(config.read_text())
    data["defaults"]["hosts"] = {"a": 1}
    config.write_text(yaml.safe_dump(data))
    assert "defaults.hosts: hosts belongs in each executor type" in cli("check", str(config)).stderr


def test_a_host_name_matching_no_share_is_refused_by_check_and_by_the_daemon(farm: Farm) -> None:
    farm.write({"Infer": farm.program("sleep", ids="0-3", hosts=HOSTS)}, supervisor={"name": "gpu-10"})
    done = cli("check", str(farm.config_path))
    assert done.returncode == 2
    message = ("farm.yaml: supervisor.name 'gpu-10' matches no share in hosts: (known: gpu-01, gpu-02), so this "
               "daemon would run no instance")
    assert message in done.stderr
    assert "matches no share" in cli("check", str(farm.config_path), "--host", "gpu-2").stderr
    farm.start()
    assert farm.daemon is not None and farm.daemon.wait(60) == 2
    assert message in farm.log()
    assert not farm.state_dir.exists() or not (farm.state_dir / "daemon.lock").exists()


def test_the_daemon_runs_its_share_and_scales_within_it(farm: Farm) -> None:
    write(farm, "gpu-02", ids="0-5", hosts={"gpu-01": "0-1", "gpu-02": "2-5"})
    farm.start(wait_instances=5)
    assert sorted(farm.instances()) == ["ET-Infer-2", "ET-Infer-3", "ET-Infer-4", "ET-Infer-5", "ET-Plain-0"]
    socket = str(farm.state_dir / "control.sock")
    too_many = cli("scale", "Infer", "5", "--socket", socket)
    assert too_many.returncode != 0
    assert "this host (gpu-02) runs ids 2-5 of hosts: (4); scale to at most 4 here" in too_many.stderr
    foreign = cli("scale", "Infer", "0-2", "--socket", socket)
    assert foreign.returncode != 0 and "ids 0, 1 are not in this host's share (gpu-02: 2-5)" in foreign.stderr
    fewer = cli("scale", "Infer", "2", "--wait", "--socket", socket)
    assert fewer.returncode == 0, fewer.stderr
    wait_until(lambda: sorted(farm.instances()) == ["ET-Infer-2", "ET-Infer-3", "ET-Plain-0"], 30,
               what="the first two ids of the share")
    assert farm.stop() == 0


def test_kubernetes_export_ignores_hosts_and_says_so(farm: Farm) -> None:
    config = write(farm, "gpu-01")
    done = cli("export", "kubernetes", str(config), "--image", "img:1")
    assert done.returncode == 0, done.stderr
    assert "hosts: of Infer ignored: the cluster places the pods" in done.stderr
    sets = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "StatefulSet"]
    assert [(s["metadata"]["name"], s["spec"]["replicas"]) for s in sets] == [("et-infer", 4), ("et-plain", 1)]
    inner = yaml.safe_load([d for d in yaml.safe_load_all(done.stdout) if d][0]["data"]["farm.yaml"])
    assert "hosts" not in inner["executors"]["Infer"]
