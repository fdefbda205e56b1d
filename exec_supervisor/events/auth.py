"""The forwarder's credentials for the log API: where they come from, login, renewal, advice.

Owns one config generation's credentials (a token from an environment variable
or a file, or a username/password exchanged at the token route for a bearer
token), their renewal after a refusal, the check that a token is safe in an HTTP
header, and the wording of "how to fix it" when the service refuses us.

Secrets (tokens, passwords) only ever go into request headers and the token
form: nothing here logs, formats or raises them. It must not touch the spool,
the sender's retry policy or delivery accounting; the caller passes in the
connection and timeouts to log in with.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from .httpclient import Channel, TransportError
from .payload import answer_detail

__all__ = ["AuthProblem", "Credentials", "read_token_file", "header_safe", "refusal_advice"]

log = logging.getLogger("exec_supervisor")


class AuthProblem(Exception):
    """The service (or the local auth config) refuses us; retry slowly, log once."""


class Credentials:
    """The credentials of one config generation. Holds secrets: never log or repr it."""

    __slots__ = ("config", "mode", "token", "username", "password", "problem", "expires_at", "renew_at", "exempt",
                 "renewed")

    def __init__(self, config: Any) -> None:
        auth = config.service.auth
        self.config = config  # the generation these came from (holds only names, no secrets)
        self.mode = "none"
        self.token: str | None = None
        self.username: str | None = None
        self.password: str | None = None
        self.problem: str | None = None  # a config problem, worded without the secret
        self.expires_at = 0.0
        self.renew_at = 0.0
        self.renewed = False  # already got a fresh token after the current 401
        self.exempt = False
        if auth.token_env:
            self.mode = "token"
            self.token = os.environ.get(auth.token_env, "").strip() or None
            if self.token is None:
                self.problem = f"service.auth.token_env: the environment variable {auth.token_env} is not set or empty"
            elif not header_safe(self.token):
                self.token = None
                self.problem = (f"service.auth.token_env: the environment variable {auth.token_env} holds characters "
                                "a token cannot have (value not shown)")
        elif auth.token_file:
            self.mode = "token"
            self.token, self.problem = read_token_file(config)
        elif auth.username_env:
            self.mode = "password"
            self.username = os.environ.get(auth.username_env) or None
            self.password = os.environ.get(auth.password_env or "") or None
            missing = [name for name, value in ((auth.username_env, self.username), (auth.password_env, self.password)) if not value]
            if missing:
                self.problem = f"service.auth: the environment variable(s) {', '.join(missing)} are not set or empty"

    def __repr__(self) -> str:
        return f"<Credentials {self.mode}>"

    def log_in(self, channel: Channel, token_url: str, timeouts: tuple[float, float]) -> None:
        """Exchange username/password for a bearer token. Raises AuthProblem, or TransportError for an outage."""
        form = urlencode({"username": self.username or "", "password": self.password or ""}).encode()
        response = channel.post(token_url, form, {"Content-Type": "application/x-www-form-urlencoded"}, timeouts)
        if response.status == 200:
            try:
                body = response.json()
                token = str(body["access_token"])
                minutes = float(body.get("expires_minutes") or 720)
            except (ValueError, KeyError, TypeError):
                raise AuthProblem(f"the token route {token_url} answered 200 without an access_token") from None
            if not header_safe(token):
                raise AuthProblem(f"the token route {token_url} answered a token with characters a token "
                                  "cannot have (value not shown)")
            now = time.monotonic()
            lifetime = max(1.0, minutes * 60)
            self.token = token
            self.expires_at = now + lifetime
            # Renew well before it runs out: at 80 %, and at least a minute early when it lives long enough.
            self.renew_at = now + max(lifetime * 0.5, min(lifetime * 0.8, lifetime - 60))
            return
        detail = answer_detail(response)
        if response.status == 401 and "白名单" in detail:
            # The service exempts this address from tokens (and so will not issue one).
            self.exempt = True
            self.token = None
            log.info("event forwarder: the service exempts this host from tokens; sending events without one")
            return
        if response.status in (401, 403, 422):
            auth = self.config.service.auth
            raise AuthProblem(
                f"the service refused the username/password from ${auth.username_env} / ${auth.password_env} "
                f"at {token_url} ({response.status} {detail})"
            )
        raise TransportError(f"{response.status} {detail}")  # 5xx and co: an outage, retried like one

    def renew_after_refusal(self) -> bool:
        """After a 401: True when fresh credentials are worth an immediate retry (once per refusal)."""
        if self.renewed:
            return False
        if self.mode == "password" and not self.problem:
            self.renewed = True
            if self.exempt:
                self.exempt = False  # the exemption went away: log in
            else:
                self.token = None  # revoked or expired early: get a new one
                self.renew_at = 0.0
            return True
        if self.mode == "token" and self.config.service.auth.token_file:
            token, problem = read_token_file(self.config)
            if token is not None and token != self.token:
                self.token, self.problem = token, None  # the file was rotated
                self.renewed = True
                return True
        return False


def read_token_file(config: Any) -> tuple[str | None, str | None]:
    """(token, None), or (None, a problem worded without the token)."""
    path = config.base_dir / os.path.expanduser(config.service.auth.token_file)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return None, f"service.auth.token_file: cannot read {path}: {exc.strerror or exc.__class__.__name__}"
    except UnicodeDecodeError:
        return None, f"service.auth.token_file: {path} is not UTF-8 text"
    if not token:
        return None, f"service.auth.token_file: {path} is empty"
    if not header_safe(token):
        return None, f"service.auth.token_file: {path} holds characters a token cannot have (value not shown)"
    return token, None


def header_safe(token: str) -> bool:
    """A token goes into an HTTP header: printable ASCII only (a bad one would be echoed in an error)."""
    return token.isascii() and token.isprintable()


def refusal_advice(config: Any, url: str) -> str:
    """How an operator fixes a 401/403 from the log API at `url`, for the one error line."""
    auth = config.service.auth
    ip = _local_ip(url)
    host = f"this host's IP ({ip})" if ip else "this host's IP"
    if auth.token_env or auth.token_file or auth.username_env:
        return (
            f"check the token or credentials configured in service.auth of {config.path}, "
            f"or add {host} to the service's token-exempt IP networks or hosts"
        )
    return (
        f"add {host} to the service's token-exempt IP networks or hosts, or configure "
        f"service.auth (token_env, token_file, or username_env + password_env) in {config.path}"
    )


def _local_ip(url: str) -> str | None:
    """The address this host uses to reach the service (what its exemption list must hold)."""
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)  # UDP connect: picks the route, sends nothing
            return probe.getsockname()[0]
    except OSError:
        return None
