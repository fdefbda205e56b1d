"""TLS on first use (lazytls.py): a daemon without https never maps OpenSSL's ssl module; one with an
https service host and an https probe speaks TLS through both (http.client and asyncio were imported
while ssl was held back)."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_until


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append((self.command, self.path))
        body = b'{"id": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Any:
    if shutil.which("openssl") is None:
        pytest.skip("needs the Debian package openssl: apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    handler = type("Recorder", (_Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler.seen, cert
    server.shutdown()
    server.server_close()


def _ssl_mapped(pid: int) -> bool:
    return "/_ssl." in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.timeout(60)
def test_a_farm_without_https_never_loads_ssl(farm: Any) -> None:
    farm.write({"A": farm.program("sleep", count=1)})
    daemon = farm.start(wait_instances=1)
    assert not _ssl_mapped(daemon.pid)
    assert farm.stop() == 0


@pytest.mark.timeout(90)
def test_https_forwarding_and_an_https_probe_work_in_the_daemon(farm: Any, tls_server: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server, seen, cert = tls_server
    url = f"https://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the forwarder's CA bundle (the daemon inherits it)
    farm.write({"A": farm.program("sleep", count=1, probe={"http": url + "health", "every": "0.2s"})},
               service={"host": url}, events={"forward": True})
    daemon = farm.start(wait_instances=1)
    wait_until(lambda: ("POST", "/api/bases/logs/") in seen, 30, what="an event posted over TLS")
    wait_until(lambda: seen.count(("GET", "/health")) >= 2, 30, what="two probes over TLS")
    assert _ssl_mapped(daemon.pid)
    assert "TLS error" not in farm.log()
    assert farm.stop() == 0
