"""The daemon holds plain records (config/farm.py), validated by pydantic models (config/models.py)
in a short-lived child (config/validate.py): the two stay one schema, and the daemon never loads
pydantic or PyYAML."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from exec_supervisor.config import farm as records, load
from exec_supervisor.config import http, models
from exec_supervisor.config.validate import child_argv, farm_from_answer
from exec_supervisor.config.errors import ConfigError

from conftest import wait_until

MODELS: dict[str, type[BaseModel]] = {
    "Backoff": models.Backoff, "Probe": models.Probe, "Incidents": models.Incidents,
    "ExecutorType": models.ExecutorType, "AuthConfig": models.AuthConfig, "ServiceConfig": models.ServiceConfig,
    "EventsConfig": models.EventsConfig, "ControlConfig": models.ControlConfig, "HttpConfig": http.HttpConfig,
}


def _default(field: Any) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_record_has_its_models_fields_and_defaults(name: str) -> None:
    model, record = MODELS[name], records.RECORDS[name]
    fields = {f.name: f for f in dataclasses.fields(record)}
    assert set(fields) == set(model.model_fields), f"{name}: record and model fields differ"
    for key, info in model.model_fields.items():
        if info.is_required():
            continue
        wanted = info.get_default(call_default_factory=True)
        if isinstance(wanted, BaseModel):
            wanted = dataclasses.asdict(records.RECORDS[type(wanted).__name__]())  # a nested section's defaults
            assert dataclasses.asdict(_default(fields[key])) == wanted, f"{name}.{key}"
        else:
            assert _default(fields[key]) == wanted, f"{name}.{key}"


FULL = """\
service:
  host: http://127.0.0.1:9/
  auth: {token_env: LOG_API_TOKEN}
supervisor: {name: box, state_dir: state, log_dir: logs}
events: {forward: false, language: zh}
http: {listen: "127.0.0.1:0"}
defaults:
  backoff: {initial: 0.5}
  incidents: {threshold: [2, "50%"]}
executors:
  A:
    command: /bin/sleep 1000
    args: []
    ids: 0-2,7
    hosts: {box: 0-2, other: "7"}
    probe: {exec: /bin/true, every: 2s}
    max_memory: 64MiB
    watchdog: 5s
    ready: notify
  B:
    command: /bin/sleep 1000
    args: []
    count: 2
    incidents: off
"""


def test_the_childs_answer_is_the_same_farm_as_loading_in_process(tmp_path: Path) -> None:
    config = tmp_path / "farm.yaml"
    config.write_text(FULL)
    done = subprocess.run(child_argv(config), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    from_child = farm_from_answer(config, done.stdout, done.returncode)
    assert from_child == load(config)
    assert from_child.executors["A"].ids == (0, 1, 2, 7) and from_child.executors["A"].hosts == {"box": (0, 1, 2),
                                                                                                  "other": (7,)}
    assert from_child.executors["A"].incidents.threshold == ("2", "50%")
    assert from_child.executors["B"].incidents is None
    assert from_child.planned() == load(config).planned()


def test_the_childs_problems_come_back_as_one_line_each(tmp_path: Path) -> None:
    config = tmp_path / "farm.yaml"
    config.write_text("executors:\n  A:\n    command: /bin/sleep 1\n    count: 1\n    restart: sometimes\n")
    done = subprocess.run(child_argv(config), capture_output=True, timeout=60)
    assert done.returncode == 2
    with pytest.raises(ConfigError) as caught:
        farm_from_answer(config, done.stdout, done.returncode)
    assert [str(p) for p in caught.value.problems] == [str(p) for p in _problems_in_process(config)]
    assert f"{config}:5: executors.A.restart" in str(caught.value)


def _problems_in_process(config: Path) -> list[Any]:
    try:
        load(config)
    except ConfigError as exc:
        return exc.problems
    raise AssertionError("the config should be invalid")


def test_a_child_that_dies_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "farm.yaml"
    output = b"Traceback (most recent call last):\n  File ...\nMemoryError\n"
    with pytest.raises(ConfigError) as caught:
        farm_from_answer(config, output, -9)
    text = str(caught.value)
    assert "\n" not in text and "Traceback" not in text
    assert text == f"{config}: cannot be validated: the checking process failed (killed by signal 9: MemoryError)"


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.timeout(60)
def test_the_daemon_never_loads_pydantic_or_yaml(farm: Any) -> None:
    farm.write({"A": farm.program("sleep", count=2)})
    daemon = farm.start(wait_instances=2)
    farm.config_path.write_text(farm.config_path.read_text().replace("count: 2", "count: 3"))
    daemon.send_signal(1)  # SIGHUP: a reload reads the config again
    wait_until(lambda: len(farm.instances()) == 3, 20, what="the reload's third instance")
    maps = _mapped_libraries(daemon.pid)
    assert "pydantic_core" not in maps and "_yaml" not in maps
    assert "python" in maps  # the maps were read (the daemon's own interpreter is there)
    assert farm.stop() == 0


def test_the_json_form_keeps_paths_and_tuples(tmp_path: Path) -> None:
    config = tmp_path / "farm.yaml"
    config.write_text(FULL)
    loaded = load(config)
    again = records.farm_from_json(json.loads(records.farm_to_json(loaded)))
    assert again == loaded and isinstance(again.state_dir, Path) and isinstance(again.executors["A"].ids, tuple)
    assert again.name == "box" and again.http.address == ("127.0.0.1", 0)
