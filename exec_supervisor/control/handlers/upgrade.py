"""POST /v1/upgrade: re-execute the daemon in place with the installed code (see upgrade.py).

Owns the request's input and answer only; the check, the handover and the refusals are the
daemon's (daemon.upgrade). Answers 202 once the installed code has passed its check and the
handover begins (the client then waits for `upgrades` to grow in GET /v1/health), 200 with
`"ok": false` when the check failed (nothing was changed), 409 when something long is in
progress (a reload, a scale, a rolling restart, another upgrade).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..httpserver import HttpError as ApiError, Request, Response, json_response as _json
from ..params import body_of, number
from ..route import Route

if TYPE_CHECKING:
    from ..server import ControlServer


async def upgrade(ctl: ControlServer, request: Request) -> Response:
    from ... import upgrade as upgrade_mod  # only when asked: most daemons never upgrade

    body = await body_of(request)
    ctl.check_running()
    timeout = number(body.get("timeout"), "timeout", upgrade_mod.CHECK_TIMEOUT, 1, 3600)
    assert timeout is not None
    try:
        answer = await ctl.daemon.upgrade(check_timeout=timeout)
    except upgrade_mod.UpgradeRefused as exc:
        if exc.status == 409:
            raise ApiError(409, str(exc)) from None
        return _json({"ok": False, "error": str(exc)})
    return _json(answer, 202)


ROUTES = [Route("POST", "/upgrade", upgrade)]
