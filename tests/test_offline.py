"""Nothing in the example farm leaves the machine: every connect() goes to loopback.

The example farm (configs/farm.yaml's HelloWorld, plus the seed-style executor) runs
under `strace -f -e trace=connect` with event forwarding to a local log service; any
connect() to an address outside 127.0.0.0/8 and ::1 (a DNS query, a public-IP lookup)
fails the test.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import ROOT, Farm, wait_until
from exec_supervisor.devservice import DevService

STRACE = shutil.which("strace")
ADDRESS_RE = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def outside_loopback(trace: str) -> list[str]:
    """The connect() lines of an strace log that name an address outside loopback."""
    bad = []
    for line in trace.splitlines():
        if "connect(" not in line:
            continue
        for v4, v6 in ADDRESS_RE.findall(line):
            address = ipaddress.ip_address(v4 or v6)
            mapped = getattr(address, "ipv4_mapped", None)
            if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
                bad.append(line.strip())
    return bad


def test_outside_loopback_detector() -> None:
    assert outside_loopback('1 connect(3, {sa_family=AF_INET, sin_port=htons(53), '
                            'sin_addr=inet_addr("10.0.0.2")}, 16) = 0')
    assert outside_loopback('connect(5, {sa_family=AF_INET6, sin6_port=htons(80), '
                            'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr)}, 28) = -1 ENETUNREACH')
    assert not outside_loopback('connect(3, {sa_family=AF_INET, sin_port=htons(8083), '
                                'sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
                                'connect(4, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = 0\n'
                                'connect(5, {sa_family=AF_INET6, inet_pton(AF_INET6, "::ffff:127.0.0.1", '
                                '&sin6_addr)}, 28) = 0')


def test_example_farm_connects_to_loopback_only(farm: Farm, tmp_path: Path) -> None:
    if STRACE is None:
        pytest.skip("needs the Debian package strace: apt-get install strace")
    example = yaml.safe_load((ROOT / "configs" / "farm.yaml").read_text())
    hello = example["executors"]["HelloWorld"]
    hello["command"] = [sys.executable, str(ROOT / "executors" / "et_hello_world.py")]
    hello["cwd"] = str(tmp_path)
    seed = {"command": [sys.executable, str(ROOT / "executors" / "et_seed_style.py")], "ids": "0-1",
            "env": {"PYTHONUNBUFFERED": "1"}, "cwd": str(tmp_path)}
    trace_path = tmp_path / "connect.trace"
    with DevService() as svc:
        farm.write({"HelloWorld": hello, "SeedStyle": seed}, service={"host": svc.url},
                   events={"forward": True, "min_level": "debug"})
        tracer = subprocess.Popen(
            [STRACE, "-f", "-qq", "-e", "trace=connect", "-o", str(trace_path),
             sys.executable, "-m", "exec_supervisor.cli", "start", str(farm.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        try:
            daemon = wait_until(lambda: next(iter(psutil.Process(tracer.pid).children()), None), 20,
                                what="the daemon under strace")
            # Each executor has made its start-up requests once the service has its 已启动 line,
            # and the supervisor's events have reached the service through the forwarder.
            wait_until(lambda: sum("已启动" in e["message"] for e in svc.entries) >= 6, 60,
                       what="six executors' start lines at the service")
            wait_until(lambda: any(e.get("event") == "running" for e in svc.entries), 30,
                       what="a running event forwarded")
        finally:
            try:
                psutil.Process(tracer.pid).children()[0].send_signal(signal.SIGTERM)
            except (psutil.Error, IndexError):
                pass
            try:
                tracer.wait(30)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
    assert daemon is not None
    trace = trace_path.read_text(errors="replace")
    assert "127.0.0.1" in trace, "strace saw no connect() at all: the check would be blind"
    assert outside_loopback(trace) == []
