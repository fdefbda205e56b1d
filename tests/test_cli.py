"""The operator's CLI against real daemons: never locked out, honest exit codes, runtime scale said aloud."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import Farm, wait_until
from exec_supervisor.control import registry

SLEEP = shutil.which("sleep")


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"command": [SLEEP, "10000"], "args": [], **extra}


def cli(farm: Farm, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
        config_first: bool = False) -> subprocess.CompletedProcess[str]:
    where = ["-c", str(farm.config_path)]
    argv = [*where, *args] if config_first else [*args, *where]
    return subprocess.run([sys.executable, "-m", "exec_supervisor.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def run_ok(farm: Farm, *args: str, codes: tuple[int, ...] = (0,), **kw: Any) -> str:
    result = cli(farm, *args, **kw)
    assert result.returncode in codes, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def states(farm: Farm) -> dict[str, str]:
    data = json.loads(run_ok(farm, "status", "--json", codes=(0, 4)))
    return {row["exec_id"]: row["state"] for row in data["instances"]}


# --------------------------------------------------------------------------- a broken config never locks out


def test_a_broken_config_does_not_lock_the_operator_out(farm: Farm) -> None:
    farm.write({"A": sleeper(count=2)})
    farm.start(wait_instances=2)
    wait_until(lambda: set(states(farm).values()) == {"running"}, 20, what="both running")
    entry, stale = registry.lookup(farm.config_path)
    assert entry is not None and entry.pid == farm.daemon.pid and not stale
    pids = farm.instances()

    good = farm.config_path.read_text()
    broken = good.replace("executors:\n  A:\n", "executors:\n  A:\n   oops: [\n", 1)
    assert broken != good
    farm.config_path.write_text(broken)

    # Every client command still reaches the daemon, whatever the file says now.
    assert "ET-A-1" in run_ok(farm, "status")
    assert "ET-A-0" in run_ok(farm, "status", config_first=True)
    result = cli(farm, "reload")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(rf"^{re.escape(str(farm.config_path))}:\d+: ", result.stderr, re.M), result.stderr
    assert "nothing was changed" in result.stderr
    assert farm.instances() == pids, "a refused reload changes nothing"

    run_ok(farm, "stop", "ET-A-1")
    assert states(farm)["ET-A-1"] == "stopped"
    out = run_ok(farm, "shutdown")
    assert f"exec-supervisor (pid {farm.daemon.pid}) stopped 1 instance and exited" in out
    assert farm.stop() == 0
    assert not entry.file.exists(), "the daemon removes its record as it exits"
    result = cli(farm, "status")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not valid YAML" in result.stderr and "no running daemon of it is recorded" in result.stderr


def test_a_stale_record_is_recognised(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1)})
    dead = subprocess.Popen(["true"])
    dead.wait()
    place = registry.candidate_files(farm.config_path)[-1]  # the fallback next to the config
    place.write_text(json.dumps({"config": registry.config_key(farm.config_path), "pid": dead.pid,
                                 "socket": str(farm.dir / "gone.sock"), "started": 1.0}))
    entry, stale = registry.lookup(farm.config_path)
    assert entry is None and [s.file for s in stale] == [place]
    result = cli(farm, "status")
    assert result.returncode == 3, result.stderr
    assert f"{place} is stale (its daemon (pid {dead.pid}) is no longer running)" in result.stderr

    farm.start(wait_instances=1)  # a new daemon replaces the stale record
    wait_until(lambda: registry.lookup(farm.config_path)[0] is not None, 20, what="the new daemon's record")
    assert "ET-A-0" in run_ok(farm, "status", codes=(0, 4))
    assert farm.stop() == 0


# --------------------------------------------------------------------------- status exit code and filters


def test_status_exits_4_when_a_desired_instance_is_not_running(farm: Farm) -> None:
    farm.write({"Good": sleeper(count=2),
                "Bad": {**farm.program("exit:3"), "count": 1, "max_restarts": 1, "restart_window": "1m"}})
    farm.start(wait_instances=2)
    wait_until(lambda: states(farm).get("ET-Bad-0") == "fatal", 20, what="ET-Bad-0 fatal")
    wait_until(lambda: states(farm).get("ET-Good-1") == "running", 20, what="Good running")

    result = cli(farm, "status")
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert re.search(r"^ET-Bad-0\s+fatal\s", result.stdout, re.M)
    assert cli(farm, "status", "Good").returncode == 0
    assert cli(farm, "status", "--json").returncode == 4

    only = run_ok(farm, "status", "--state", "fatal,backoff", codes=(4,))
    rows = [line.split()[0] for line in only.splitlines() if line.startswith("ET-")]
    assert rows == ["ET-Bad-0"]
    bad = cli(farm, "status", "--state", "fatl")
    assert bad.returncode == 2 and "fatl: not a state" in bad.stderr

    run_ok(farm, "stop", "Bad")  # held stopped: no longer desired
    assert cli(farm, "status").returncode == 0
    assert farm.stop() == 0


# --------------------------------------------------------------------------- a runtime scale is said aloud


def test_runtime_scale_is_announced_and_reset(farm: Farm) -> None:
    farm.write({"A": sleeper(count=4), "B": sleeper(count=1)})
    farm.start(wait_instances=5)
    run_ok(farm, "scale", "A", "2", "--wait")
    assert farm.stop() == 0

    farm.start(wait_instances=3)
    note = re.compile(r"A: 2 instances, scaled at runtime on \d{4}-\d\d-\d\d \d\d:\d\d; the config says 4; "
                      r"`exec-supervisor scale A --reset` follows the config again")
    wait_until(lambda: note.search(farm.log()), 10, what="the start-up note")
    assert "B:" not in farm.log().split("scaled at runtime")[0].splitlines()[-1]
    check = run_ok(farm, "check", str(farm.config_path))
    assert note.search(check), check
    status_text = run_ok(farm, "status", codes=(0, 4))
    assert re.search(r"^A: \d/2 running \(scaled to 2 on [\d-]+ [\d:]+, config says 4; `scale A --reset` follows",
                     status_text, re.M), status_text
    kept = farm.instances()

    out = run_ok(farm, "scale", "A", "--reset", "--wait")
    assert "A: 2 -> 4 instances (2 started); follows the config again" in out
    now = farm.instances()
    assert sorted(now) == ["ET-A-0", "ET-A-1", "ET-A-2", "ET-A-3", "ET-B-0"]
    assert all(now[k] == v for k, v in kept.items()), "survivors keep their process"
    assert "scaled" not in run_ok(farm, "status")
    assert "note:" not in run_ok(farm, "check", str(farm.config_path))
    assert farm.stop() == 0


# --------------------------------------------------------------------------- describe, logs, signal, reload


def talker(**extra: Any) -> dict[str, Any]:
    """A shell loop that says who it is ten times a second and answers USR1."""
    script = 'trap "echo got USR1 $ET_EXEC_ID" USR1; while true; do echo "line from $ET_EXEC_ID"; sleep 0.1; done'
    return {"command": ["/bin/sh", "-c", script], "args": [], **extra}


def test_describe_masks_secrets_and_shows_history(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1, env={"API_TOKEN": "s3cret-token-value", "DB_PASSWORD": "hunter2pw",
                                           "MODEL_DIR": "/data/models"})})
    farm.start(wait_instances=1)
    wait_until(lambda: states(farm).get("ET-A-0") == "running", 20, what="running")
    os.kill(farm.instances()["ET-A-0"], 9)
    wait_until(lambda: "SIGKILL" in run_ok(farm, "describe", "ET-A-0") and
               states(farm).get("ET-A-0") == "running", 20, what="back to running")
    text = run_ok(farm, "describe", "ET-A-0")
    as_json = run_ok(farm, "describe", "ET-A-0", "--json")
    everything = text + as_json + run_ok(farm, "status", "--json", codes=(0, 4))
    assert "s3cret-token-value" not in everything and "hunter2pw" not in everything
    assert re.search(r"^\s+API_TOKEN\s+\*{8}$", text, re.M) and re.search(r"^\s+DB_PASSWORD\s+\*{8}$", text, re.M)
    assert re.search(r"^\s+MODEL_DIR\s+/data/models$", text, re.M)
    assert re.search(rf"^\s+command:\s+{re.escape(SLEEP)} 10000$", text, re.M)
    assert re.search(rf"^\s+log:\s+{re.escape(str(farm.log_dir / 'ET-A-0.log'))}$", text, re.M)
    assert re.search(r"^\s+restarts:\s+1$", text, re.M)
    history = [line.split(None, 3)[2:] for line in text.splitlines() if re.match(r"^\s+\d{4}-\d\d-\d\d ", line)]
    assert [h[0] for h in history] == ["starting", "running", "backoff", "starting", "running"], history
    assert "signal SIGKILL" in history[2][1] and "restart in" in history[2][1]
    assert json.loads(as_json)["history"][2]["state"] == "backoff"
    missing = cli(farm, "describe", "ET-A-7")
    assert missing.returncode == 2 and "no instance ET-A-7" in missing.stderr
    assert farm.stop() == 0


def test_logs_of_three_instances_interleaved(farm: Farm, tmp_path: Path) -> None:
    farm.write({"A": talker(count=3), "B": sleeper(count=1)})
    farm.start(wait_instances=4)
    wait_until(lambda: all((farm.log_dir / f"ET-A-{i}.log").exists() and
                           (farm.log_dir / f"ET-A-{i}.log").stat().st_size > 60 for i in range(3)), 20,
               what="three logs with lines")
    text = run_ok(farm, "logs", "A", "-n", "2")
    prefixed = re.findall(r"^(ET-A-\d) \| line from (ET-A-\d)$", text, re.M)
    assert sorted({p for p, _ in prefixed}) == ["ET-A-0", "ET-A-1", "ET-A-2"] and len(prefixed) == 6, text
    assert all(p == q for p, q in prefixed), "each line carries its own instance's prefix"

    out_path = tmp_path / "follow.out"
    with open(out_path, "wb") as out:
        follower = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", "logs", "all", "-f", "-n", "0",
                                     "-c", str(farm.config_path)], stdout=out, stderr=subprocess.STDOUT)
        try:
            def seen() -> set[str]:
                found = re.findall(r"^(ET-A-\d) \| line from (ET-A-\d)$", out_path.read_text(), re.M)
                assert all(p == q for p, q in found)
                return {p for p, _ in found}
            wait_until(lambda: seen() == {"ET-A-0", "ET-A-1", "ET-A-2"}, 20, what="lines of all three, followed")
        finally:
            follower.terminate()
            follower.wait(10)
    assert "\x1b[" not in out_path.read_text(), "no colour into a file"

    run_ok(farm, "scale", "A", "2", "--wait")  # ET-A-2 scaled away: its log stays readable
    assert re.search(r"^line from ET-A-2$", run_ok(farm, "logs", "ET-A-2", "-n", "3"), re.M)
    assert "ET-A-2 | line from ET-A-2" in run_ok(farm, "logs", "A", "-n", "1")
    wait_until(lambda: time.time() - (farm.log_dir / "ET-A-2.log").stat().st_mtime > 1.5, 10,
               what="ET-A-2's log idle")
    recent = run_ok(farm, "logs", "A", "-n", "1", "--since", "1s")
    assert "ET-A-0 | line from ET-A-0" in recent and "ET-A-2" not in recent, recent
    gone = cli(farm, "logs", "ET-A-9")
    assert gone.returncode == 2 and "no log file" in gone.stderr
    assert farm.stop() == 0


def test_signal_reaches_each_running_instance(farm: Farm) -> None:
    farm.write({"A": talker(count=2)})
    farm.start(wait_instances=2)
    wait_until(lambda: set(states(farm).values()) == {"running"}, 20, what="running")
    pids = farm.instances()
    out = run_ok(farm, "signal", "A", "usr1")
    assert out.strip() == "sent SIGUSR1 to 2 instances: ET-A-0, ET-A-1"
    for i in range(2):
        wait_until(lambda: f"got USR1 ET-A-{i}" in (farm.log_dir / f"ET-A-{i}.log").read_text(), 10,
                   what=f"ET-A-{i} got the signal")
    assert farm.instances() == pids
    bad = cli(farm, "signal", "A", "NOPE")
    assert bad.returncode == 2 and "'NOPE' is not a signal" in bad.stderr
    run_ok(farm, "stop", "ET-A-1")
    out = run_ok(farm, "signal", "all", "HUP")
    assert "sent SIGHUP to 1 instance: ET-A-0" in out
    assert farm.stop() == 0


def _reload_lines(text: str) -> dict[str, list[str]]:
    found = {}
    for verb in ("start", "stop", "restart"):
        match = re.search(rf"^  {verb}: (.*)$", text, re.M)
        found[verb] = sorted(re.split(r"[ ,]+", match.group(1))) if match else []
    return found


def test_reload_dry_run_matches_what_reload_does(farm: Farm) -> None:
    farm.write({"A": sleeper(count=3), "B": sleeper(count=2), "D": sleeper(count=1)})
    farm.start(wait_instances=6)
    wait_until(lambda: set(states(farm).values()) == {"running"}, 20, what="running")
    pids = farm.instances()
    config = yaml.safe_load(farm.config_path.read_text())
    config["executors"]["A"]["count"] = 2
    config["executors"]["B"]["env"]["NEW"] = "1"
    config["executors"]["C"] = sleeper(count=1, env=config["executors"]["D"]["env"])
    farm.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    dry = run_ok(farm, "reload", "--dry-run")
    assert dry.splitlines()[0] == "reload would: 1 start, 1 stop, 2 restart, 3 unchanged (nothing was changed)"
    planned = _reload_lines(dry)
    assert planned == {"start": ["ET-C-0"], "stop": ["ET-A-2"], "restart": ["ET-B-0", "ET-B-1"]}
    assert farm.instances() == pids, "a dry run changes nothing"

    done = run_ok(farm, "reload", "--rolling")
    assert done.splitlines()[0] == "reloaded: 1 started, 1 stopped, 2 restarted (rolling), 3 unchanged"
    assert _reload_lines(done) == planned
    now = farm.instances()
    assert sorted(now) == ["ET-A-0", "ET-A-1", "ET-B-0", "ET-B-1", "ET-C-0", "ET-D-0"]
    assert now["ET-A-0"] == pids["ET-A-0"] and now["ET-D-0"] == pids["ET-D-0"]
    assert now["ET-B-0"] != pids["ET-B-0"] and now["ET-B-1"] != pids["ET-B-1"]
    # Rolling: ET-B-1 was asked to stop only once ET-B-0 ran again.
    b0 = json.loads(run_ok(farm, "describe", "ET-B-0", "--json"))["history"]
    b1 = json.loads(run_ok(farm, "describe", "ET-B-1", "--json"))["history"]
    b0_back = [h["time"] for h in b0 if h["state"] == "running"][-1]
    b1_stop = [h["time"] for h in b1 if h["state"] == "stopping"][-1]
    assert b1_stop >= b0_back, (b0, b1)
    assert "reload would: 0 start, 0 stop, 0 restart, 6 unchanged" in run_ok(farm, "reload", "--dry-run")
    farm.config_path.write_text(farm.config_path.read_text().replace("count: 2", "count: -2", 1))
    broken = cli(farm, "reload", "--dry-run")
    assert broken.returncode == 2 and re.search(rf"^{re.escape(str(farm.config_path))}:\d+: executors\.A\.count",
                                                 broken.stderr, re.M), broken.stderr
    assert "reload_failed" not in run_ok(farm, "events", "--json"), "a dry run reports, it does not log a refusal"
    assert farm.stop() == 0


# --------------------------------------------------------------------------- completion, start


def test_completion_of_an_exec_id_from_the_running_daemon(farm: Farm) -> None:
    farm.write({"Alpha": sleeper(ids="3,17"), "Beta": sleeper(count=1)})
    farm.start(wait_instances=3)
    env = {**os.environ, "_EXEC_SUPERVISOR_COMPLETE": "bash_complete", "COMP_WORDS": "exec-supervisor logs ET-Al",
           "COMP_CWORD": "2", "EXEC_SUPERVISOR_CONFIG": str(farm.config_path)}
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.split() == ["plain,ET-Alpha-3", "plain,ET-Alpha-17"], result.stdout
    env["COMP_WORDS"] = f"exec-supervisor -c {farm.config_path} scale B"
    env["COMP_CWORD"] = "4"
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.stdout.split() == ["plain,Beta"], result.stdout
    env["COMP_WORDS"] = "exec-supervisor status ET-"
    env["EXEC_SUPERVISOR_CONFIG"] = str(farm.dir / "missing.yaml")
    env["COMP_CWORD"] = "2"
    result = subprocess.run([sys.executable, "-m", "exec_supervisor.cli"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", ""), "silent when no daemon answers"
    assert farm.stop() == 0


def test_start_says_where_things_are_and_tails_the_output(farm: Farm) -> None:
    farm.write({"A": talker(count=2)})
    farm.start("--tail", wait_instances=2)
    log = farm.wait_log("ET-A-1 | line from ET-A-1", timeout=20)
    assert "ET-A-0 | line from ET-A-0" in log
    assert re.search(rf"exec-supervisor: 2 instances of 1 type; logs in {re.escape(str(farm.log_dir))}/"
                     rf"ET-<Name>-<id>\.log, control socket {re.escape(str(farm.state_dir / 'control.sock'))}", log)
    assert f"exec-supervisor -c {farm.config_path} status" in log
    assert farm.stop() == 0
    assert "Traceback" not in farm.log()


# --------------------------------------------------------------------------- on a terminal


class Terminal:
    """The CLI on a pseudo-terminal (stdout and stderr), read as a user would see it."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.process = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", *argv], stdin=slave,
                                        stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.output = b""

    def read_until(self, predicate: Any, timeout: float = 20) -> bytes:
        import select

        deadline = time.monotonic() + timeout
        while not predicate(self.output):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; the terminal shows {self.output[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # the process ended and closed the terminal
                    assert predicate(self.output), self.output[-2000:]
        return self.output

    def finish(self, timeout: float = 20) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            try:
                while True:
                    chunk = os.read(self.master, 65536)
                    if not chunk:
                        break
                    self.output += chunk
            except OSError:
                pass
            os.close(self.master)
        return code


def test_colours_on_a_terminal_only_and_watch_redraws_until_ctrl_c(farm: Farm) -> None:
    farm.write({"Good": sleeper(count=1),
                "Bad": {**farm.program("exit:3"), "count": 1, "max_restarts": 1, "restart_window": "1m"}})
    farm.start(wait_instances=1)
    wait_until(lambda: states(farm) == {"ET-Good-0": "running", "ET-Bad-0": "fatal"}, 20,
               what="one running, one fatal")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm"

    term = Terminal(["status", "-c", str(farm.config_path)], env)
    assert term.finish() == 4
    assert re.search(rb"\x1b\[32mrunning\s*\x1b\[0m", term.output), term.output
    assert re.search(rb"\x1b\[31m\x1b\[1mfatal\s*\x1b\[0m", term.output), term.output
    piped = cli(farm, "status")
    assert "\x1b[" not in piped.stdout and re.search(r"^ET-Bad-0\s+fatal", piped.stdout, re.M)
    plain = Terminal(["status", "-c", str(farm.config_path)], {**env, "NO_COLOR": "1"})
    assert plain.finish() == 4
    assert b"\x1b[" not in plain.output and re.search(rb"ET-Good-0\s+running", plain.output)

    watch = Terminal(["-c", str(farm.config_path), "status", "--watch", "--interval", "0.3"], env)
    frames = watch.read_until(lambda out: out.count(b"\x1b[H\x1b[2J") >= 3)
    assert frames.count(b"Every 0.3s: exec-supervisor status all") >= 3
    last = frames.rsplit(b"\x1b[H\x1b[2J", 1)[1]
    assert re.search(rb"ET-Bad-0\s+\S*fatal", last) and b"Good: " in last
    watch.process.send_signal(2)  # Ctrl-C
    assert watch.finish() == 0
    assert b"Traceback" not in watch.output and watch.output.endswith(b"\x1b[?25h"), watch.output[-200:]
    assert farm.stop() == 0


def test_progress_while_waiting(farm: Farm) -> None:
    farm.write({"A": sleeper(count=1, start_seconds=0.6)})
    farm.start(wait_instances=1)
    result = cli(farm, "scale", "A", "4", "--wait")
    assert result.returncode == 0, result.stderr
    steps = re.findall(r"^(\d)/4 running$", result.stderr, re.M)
    assert steps and steps == sorted(steps) and len(set(steps)) == len(steps), result.stderr
    assert "\r" not in result.stderr, "a line per step when not on a terminal"
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    term = Terminal(["restart", "A", "-c", str(farm.config_path)], env)
    assert term.finish(60) == 0
    assert re.search(rb"\r\x1b\[K[0-4]/4 restarted", term.output), term.output
    assert b"restarted: ET-A-0, ET-A-1, ET-A-2, ET-A-3" in term.output
    assert farm.stop() == 0


def test_global_options_before_the_command_and_a_user_runtime_dir(farm: Farm, tmp_path: Path,
                                                                   monkeypatch: Any) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # the daemon and the clients below inherit it
    farm.write({"A": sleeper(count=1)})
    farm.stderr = open(farm.stderr_path, "ab")
    farm.daemon = subprocess.Popen([sys.executable, "-m", "exec_supervisor.cli", "-c", str(farm.config_path), "start"],
                                   stdout=farm.stderr, stderr=farm.stderr, stdin=subprocess.DEVNULL)
    wait_until(lambda: list(runtime.glob("exec-supervisor/farm.yaml-*.json")), 20, what="the record in XDG_RUNTIME_DIR")
    wait_until(lambda: cli(farm, "status", config_first=True).returncode == 0, 20, what="running")
    farm.config_path.write_text("executors: [\n")  # broken: the record still leads to the daemon
    assert "ET-A-0" in run_ok(farm, "status", config_first=True)
    assert "stopped 1 instance" in run_ok(farm, "shutdown", config_first=True)
    assert farm.stop() == 0
    assert not list(runtime.glob("exec-supervisor/*.json")), "removed as the daemon exits"
