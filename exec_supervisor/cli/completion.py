"""Shell completion of type names and exec ids from the running daemon: fast, and silent on any error.

click completes subcommands and options itself; these callbacks add the farm's words.
Enable it (bash; zsh_source / fish_source for the others):

    eval "$(_EXEC_SUPERVISOR_COMPLETE=bash_source exec-supervisor)"

Owns: the completion callbacks. Must not: print anything (the shell reads stdout).
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

COMPLETION_TIMEOUT = 1.0


def _names(ctx: click.Context) -> tuple[list[str], list[str]]:
    """(type names, exec ids) of the daemon the command line points at; ([], []) on any problem."""
    try:
        from ..control.client import Client
        from .app import CONFIG_ENV, DEFAULT_CONFIG, find_socket
        import os

        params: dict[str, Any] = {}
        for level in reversed([c for c in _chain(ctx)]):
            params.update({k: v for k, v in level.params.items() if v is not None})
        config = params.get("config_path") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
        path = find_socket(config, params.get("socket_path"))
        code, data = Client(path, timeout=COMPLETION_TIMEOUT).call("GET", "/v1/status?target=all")
        if code != 200 or not isinstance(data, dict):
            return [], []
        types = [str(t.get("type")) for t in data.get("types") or []]
        ids = [str(r.get("exec_id")) for r in data.get("instances") or []]
        return types, ids
    except BaseException:  # completion must never show a traceback, nor hang the shell
        return [], []


def _chain(ctx: click.Context) -> list[click.Context]:
    chain = []
    current: click.Context | None = ctx
    while current is not None:
        chain.append(current)
        current = current.parent
    return chain


def complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    types, ids = _names(ctx)
    words = ["all", *types, *ids]
    if ctx.command.name == "start" and not types:
        return [CompletionItem(incomplete, type="file")]  # `start CONFIG`: a file
    return [CompletionItem(w) for w in words if w.startswith(incomplete)]


def complete_type(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    types, _ = _names(ctx)
    return [CompletionItem(t) for t in types if t.startswith(incomplete)]


def complete_exec_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    types, ids = _names(ctx)
    return [CompletionItem(w) for w in ["all", *types, *ids] if w.startswith(incomplete)]
