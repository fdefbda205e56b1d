"""`export kubernetes`: the farm as manifests for `kubectl apply -f -` (Kubernetes 1.31+).

Emitted, in this order (multi-document YAML, deterministic for one config and options):

1. a ConfigMap `exec-supervisor-<farm>` holding the farm config as the containers read it
   (state in the spool volume, each type's cwd where the config's folder is in the image,
   no supervisor.name: each pod's host name names its supervisor; no hosts:);
2. for each type and each contiguous range of its ids, a headless Service and a StatefulSet:
   `spec.ordinals.start` = the range's first id, `replicas` = its length, `podManagementPolicy:
   Parallel`. The type's first range is named `et-<type>` so its pods are exactly
   `et-<type>-<id>` (the exec id in lower case); a further range starting at N is `et-<type>-<N>`
   (pods `et-<type>-<N>-<id>`): two StatefulSets of one namespace cannot share a name.

The container runs `exec-supervisor run-one ... --type T --id-from-hostname --log-to stdout`:
the host name of a StatefulSet pod is its name, which ends in -<ordinal> on every version we
target, while the `apps.kubernetes.io/pod-index` label is GA only from 1.32 on.

Never writes a secret: service.auth's variables come from the Secret named by --auth-secret
(secretKeyRef, key = the variable's name; token_file: the Secret's key `token` mounted as a file).
Must not: read the values of those variables, talk to a cluster.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
from typing import Any

import yaml

from ..config import FarmConfig
from .common import ExportError, auth_env_names, farm_name, id_ranges, raw_config, slug

CONFIG_DIR = "/etc/exec-supervisor"
CONFIG_FILE = "farm.yaml"
STATE_DIR = "/var/lib/exec-supervisor"
SECRET_DIR = "/var/run/secrets/exec-supervisor"
GRACE_MARGIN_SECONDS = 15  # run-one's own stop after the instance's stop_timeout: leftovers, last events
READINESS_PERIOD_SECONDS = 10
NAME_MAX = 63  # a pod's name is its host name: one DNS label
PART_OF = "exec-supervisor"


def container_config(cfg: FarmConfig, image_config_dir: str | None, auth_secret: str | None) -> dict[str, Any]:
    """The farm config as the containers read it, from the file's own YAML."""
    data = raw_config(cfg)
    base = image_config_dir or str(cfg.base_dir)
    supervisor = dict(data.get("supervisor") or {})
    supervisor.pop("name", None)  # the pod's host name: events say which pod
    supervisor.update(state_dir=STATE_DIR, log_dir=posixpath.join(STATE_DIR, "logs"))
    data["supervisor"] = supervisor
    control = dict(data.get("control") or {})
    control.pop("socket", None)
    if control:
        data["control"] = control
    else:
        data.pop("control", None)
    if cfg.service.auth.token_file and auth_secret:
        service = dict(data.get("service") or {})
        service["auth"] = {"token_file": posixpath.join(SECRET_DIR, "token")}
        data["service"] = service
    executors = {}
    for name, own in (data.get("executors") or {}).items():
        own = dict(own or {})
        own.pop("hosts", None)  # the cluster places pods
        here = cfg.executors[name].cwd
        own["cwd"] = posixpath.normpath(posixpath.join(base, os.path.relpath(here, cfg.base_dir)))
        executors[name] = own
    data["executors"] = executors
    return data


def _literal_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # labels repeat on purpose: no &anchors for readers and tools
        return True


_Dumper.add_representer(str, _literal_str)


def dump_all(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def statefulset_names(cfg: FarmConfig) -> list[tuple[str, str, int, int]]:
    """(type, StatefulSet name, first id, last id) for every range, checked for clashes and length."""
    found: list[tuple[str, str, int, int]] = []
    seen: dict[str, str] = {}
    for type_name, executor in cfg.executors.items():
        base = f"et-{slug(type_name)}"
        for index, (first, last) in enumerate(id_ranges(executor.id_list)):
            name = base if index == 0 else f"{base}-{first}"
            if name in seen:
                raise ExportError(f"{cfg.path.name}: executors.{type_name}: its StatefulSet {name} clashes with "
                                  f"one of {seen[name]} (type names that differ only in case or '_')")
            seen[name] = type_name
            longest = f"{name}-{last}"
            if len(longest) > NAME_MAX:
                raise ExportError(f"{cfg.path.name}: executors.{type_name}: pod name {longest} is longer than "
                                  f"{NAME_MAX} characters (a host name); use a shorter type name")
            found.append((type_name, name, first, last))
    return found


def manifests(cfg: FarmConfig, image: str, namespace: str | None = None, auth_secret: str | None = None,
              spool: str = "emptydir", image_config_dir: str | None = None,
              command: list[str] | None = None, spool_size: str | None = None) -> list[dict[str, Any]]:
    """Every manifest, in apply order."""
    if spool not in ("emptydir", "pvc"):
        raise ExportError(f"--spool {spool!r}: expected emptydir or pvc")
    if not image:
        raise ExportError("--image: give the container image that holds exec-supervisor and the executors")
    auth = cfg.service.auth
    if (auth_env_names(cfg) or auth.token_file) and not auth_secret:
        raise ExportError(f"{cfg.path.name}: service.auth: give --auth-secret NAME, a Secret holding "
                          f"{', '.join(auth_env_names(cfg)) or 'token'} (manifests never hold a secret)")
    farm = farm_name(cfg)
    config_map = f"exec-supervisor-{farm}"
    config_text = yaml.safe_dump(container_config(cfg, image_config_dir, auth_secret), sort_keys=False)
    config_hash = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    exe = command or ["exec-supervisor"]
    meta_ns = {"namespace": namespace} if namespace else {}
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map, **meta_ns, "labels": _labels(farm)},
        "data": {CONFIG_FILE: config_text},
    }]
    names = statefulset_names(cfg)
    for position, (type_name, name, first, last) in enumerate(names):
        executor = cfg.executors[type_name]
        labels = {**_labels(farm), "exec-supervisor/type": type_name, "exec-supervisor/range": str(first)}
        following = [f for t, _, f, _ in names[position + 1:] if t == type_name]
        annotations = {
            "exec-supervisor/exec-ids": f"ET-{type_name}-{first}..{last}",
            # kubectl scale past this would run ids of the next range twice.
            "exec-supervisor/max-replicas": str(following[0] - first) if following else "unbounded",
        }
        docs.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, **meta_ns, "labels": labels},
            "spec": {"clusterIP": "None", "selector": labels},
        })
        docs.append({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, **meta_ns, "labels": labels, "annotations": annotations},
            "spec": {
                "serviceName": name,
                "replicas": last - first + 1,
                "ordinals": {"start": first},
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"exec-supervisor/config-sha256": config_hash}},
                    "spec": _pod_spec(cfg, type_name, executor, image, exe, config_map, auth_secret, spool),
                },
                **({"volumeClaimTemplates": [_spool_claim(cfg, spool_size)]} if spool == "pvc" else {}),
            },
        })
    return docs


def _labels(farm: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "exec-supervisor", "app.kubernetes.io/instance": farm,
            "app.kubernetes.io/part-of": PART_OF}


def _pod_spec(cfg: FarmConfig, type_name: str, executor: Any, image: str, exe: list[str], config_map: str,
              auth_secret: str | None, spool: str) -> dict[str, Any]:
    env = [{"name": key, "value": value} for key, value in sorted(executor.env.items())]
    env += [{"name": "ET_NAME", "value": type_name}, {"name": "ET_SERVICE_HOST", "value": cfg.service.host}]
    if "PYTHONUNBUFFERED" not in executor.env:  # run-one's own lines reach the log collector at once
        env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    if auth_secret:
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": auth_secret, "key": var}}}
                for var in auth_env_names(cfg)]
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "spool", "mountPath": STATE_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": config_map}}]
    if spool == "emptydir":
        volumes.append({"name": "spool", "emptyDir": {}})
    if cfg.service.auth.token_file and auth_secret:
        mounts.append({"name": "auth", "mountPath": SECRET_DIR, "readOnly": True})
        volumes.append({"name": "auth", "secret": {"secretName": auth_secret, "defaultMode": 0o400,
                                                   "items": [{"key": "token", "path": "token"}]}})
    run_one = [*exe, "run-one", posixpath.join(CONFIG_DIR, CONFIG_FILE), "--type", type_name, "--id-from-hostname",
               "--log-to", "stdout", "--state-dir", STATE_DIR]
    socket = posixpath.join(STATE_DIR, "control.sock")
    return {
        # run-one stops the instance (stop_signal, SIGKILL after stop_timeout) and flushes events first.
        "terminationGracePeriodSeconds": int(math.ceil(executor.stop_timeout)) + GRACE_MARGIN_SECONDS,
        "containers": [{
            "name": "executor",
            "image": image,
            "command": run_one,
            "env": env,
            "volumeMounts": mounts,
            # Ready = the instance is `running` (alive start_seconds). No liveness probe: run-one
            # restarts the executor with its backoff and exits when it gives up; then the kubelet
            # restarts the container.
            "readinessProbe": {
                "exec": {"command": [*exe, "status", "--socket", socket]},
                "periodSeconds": READINESS_PERIOD_SECONDS,
                "timeoutSeconds": 5,
            },
        }],
        "volumes": volumes,
    }


def _spool_claim(cfg: FarmConfig, size: str | None) -> dict[str, Any]:
    # The spool is capped at events.spool_max_bytes; the claim leaves room for the state files.
    mib = max(64, int(math.ceil(cfg.events.spool_max_bytes / 1024**2)) + 16)
    return {
        "metadata": {"name": "spool"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size or f"{mib}Mi"}}},
    }


def render(cfg: FarmConfig, image: str, **options: Any) -> str:
    docs = manifests(cfg, image, **options)
    head = (f"# exec-supervisor export kubernetes {cfg.path.name}: {len(docs) - 1} objects besides the ConfigMap.\n"
            "# Apply: kubectl apply -f <this file>. Scale a range: kubectl scale statefulset <name> --replicas N\n"
            "# (no further than its exec-supervisor/max-replicas annotation: the next range's ids follow).\n")
    return head + dump_all(docs)
