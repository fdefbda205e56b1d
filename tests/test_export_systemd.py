"""export systemd: template units and a target that pass `systemd-analyze verify`, with the shipped hardening."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from exec_supervisor import systemd

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="needs the Debian package systemd: apt-get install systemd")


def export(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exec_supervisor", "export", "systemd", str(config), "--dir", str(out)],
                          capture_output=True, text=True, timeout=60)


def farm(tmp_path: Path) -> Path:
    program = tmp_path / "executor.py"
    program.write_text("import time\ntime.sleep(60)\n")
    config = tmp_path / "gpu-farm.yaml"
    config.write_text("executors:\n"
                      "  Infer_GPU: {command: ['{python}', executor.py], ids: [0-3, 10], stop_timeout: 40s}\n"
                      "  Hello: {command: ['{python}', executor.py], count: 2}\n")
    return config


@needs_analyze
def test_units_verify_and_the_target_wants_every_instance(tmp_path: Path) -> None:
    out = tmp_path / "units"
    done = export(farm(tmp_path), out)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["et-hello@.service", "et-infer_gpu@.service", "gpu-farm.target"]
    target = (out / "gpu-farm.target").read_text()
    wanted = sorted(word for line in target.splitlines() if line.startswith("Wants=") for word in line[6:].split())
    assert wanted == sorted([f"et-infer_gpu@{i}.service" for i in (0, 1, 2, 3, 10)]
                            + ["et-hello@0.service", "et-hello@1.service"])
    unit = (out / "et-infer_gpu@.service").read_text()
    assert f"run-one {tmp_path / 'gpu-farm.yaml'} --type Infer_GPU --id %i --log-to stdout" in unit
    assert "TimeoutStopSec=70" in unit and "PartOf=gpu-farm.target" in unit
    # The hardening of the shipped unit, line for line.
    for line in systemd.HARDENING.splitlines():
        if line and not line.startswith("#"):
            assert line in unit.splitlines()
    # Instances of the templates, as systemd would load them; warnings count as failures.
    for name in ("et-infer_gpu@10.service", "et-hello@1.service"):
        (out / name).symlink_to(out / (name.split("@")[0] + "@.service"))
    verify = subprocess.run(["systemd-analyze", "verify", str(out / "gpu-farm.target"),
                             str(out / "et-infer_gpu@10.service"), str(out / "et-hello@1.service")],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def test_the_shipped_unit_still_renders_with_the_shared_hardening() -> None:
    assert (ROOT / "configs" / "exec-supervisor.service").read_text() == systemd.render_unit()


@needs_analyze
def test_the_example_farm_verifies_as_systemd_units(tmp_path: Path) -> None:
    out = tmp_path / "units"
    done = export(ROOT / "configs" / "farm.yaml", out)
    assert done.returncode == 0, done.stderr
    (out / "et-helloworld@2.service").symlink_to(out / "et-helloworld@.service")
    verify = subprocess.run(["systemd-analyze", "verify", str(out / "farm.target"), str(out / "et-helloworld@2.service")],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    assert "Wants=et-helloworld@0.service et-helloworld@1.service et-helloworld@2.service et-helloworld@3.service" \
        in (out / "farm.target").read_text()
