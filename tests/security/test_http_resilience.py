"""One client connection cannot end the server (a real ``hypermachine serve`` process)."""

from __future__ import annotations

import socket

import httpx

from realserver import Server


def _upgrade(port: int, vm_id: str) -> bytes:
    return (
        f"GET /api/v1/vms/{vm_id}/console HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _send_all_then_read(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(data)
            return conn.recv(65536)
        except OSError:  # the server may close first: that is fine
            return b""


def test_pipelined_refused_upgrades_close_only_their_connection(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        vm = client.post(
            "/api/v1/vms", json={"name": "pipes", "image": "tiny", "disk_gb": 1, "wait": True}
        ).json()
        port = int(server.url.rsplit(":", 1)[1])
        upgrade = _upgrade(port, vm["id"])
        first = _send_all_then_read(port, upgrade * 3)  # a stopped VM's console: refused
        assert first.startswith(b"HTTP/1.1 4"), first[:100]
        for _ in range(10):
            _send_all_then_read(port, upgrade * 2)
        assert server.proc is not None and server.proc.poll() is None, "the server ended"
        assert client.get("/health").json()["status"] == "healthy"
