"""HTTP client of the daemon's control endpoint (stdlib only, and not http.client: see client/wire.py).

Every request but ``/probe`` carries ``Authorization: Bearer <token>``, the token being read from the
0600 file the daemon writes into its config dir. Errors come back as
``{"error": {"code": ..., "message": ...}}`` and are raised as the matching exception of our tree.
"""

from __future__ import annotations

import _socket
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from ..client_config import ClientConfig
from ..errors import DaemonAuthError, DaemonError, DaemonNotRunningError, DaemonStoppedError, KacheryP2PError
from .connect import open_socket
from .wire import HTTPWireError, Response, request

# The daemon sends progress or a heartbeat at least every 2 s during a load or a read (daemon/running.py):
# this long without a word means it is stuck, however slow the transfer.
SILENCE_TIMEOUT = 60.0


def _silence(timeout: float) -> str:
    return (
        f"the daemon sent nothing for {timeout:g} s during the transfer (it sends word every 2 s):"
        " it seems stuck; see its log"
    )


class ControlClient:
    """One client per (config dir, port); cheap to create."""

    def __init__(self, config: ClientConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._token: str | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def _read_token(self) -> str:
        if self._token is None:
            path = self.config.token_path
            try:
                token = path.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                raise DaemonNotRunningError(
                    f"the kachery-p2p daemon is not running (no {path}): start it with kachery-p2p-start-daemon"
                ) from None
            except OSError as exc:
                raise DaemonAuthError(f"cannot read the daemon token {path}: {exc.strerror}") from None
            self._token = token
        return self._token

    def _open(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float | None = None,
    ) -> Response:
        all_headers = dict(headers or {})
        if auth:
            all_headers["Authorization"] = f"Bearer {self._read_token()}"
        try:
            sock = open_socket(self.config, timeout or self.timeout)  # client/connect.py: HTTPS when remote
        except (ConnectionRefusedError, _socket.gaierror) as exc:  # the same class as socket.gaierror
            raise DaemonNotRunningError(
                "the kachery-p2p daemon is not running (nothing answers on "
                f"{self.config.api_host}:{self.config.api_port}): start it with kachery-p2p-start-daemon"
            ) from exc
        except OSError as exc:
            raise DaemonError(f"lost the connection to the daemon: {exc}") from exc
        try:
            # One request per connection: closing the response closes the socket.
            response = request(sock, method, _host_header(self.config), path, all_headers, body)
        except (OSError, HTTPWireError) as exc:
            sock.close()
            raise DaemonError(f"lost the connection to the daemon: {exc}") from exc
        if response.status >= 400:
            self._raise_for(response)
        return response

    def _raise_for(self, response: Response) -> None:
        try:
            raw = response.read()
        except (OSError, HTTPWireError):
            raw = b""
        finally:
            response.close()
        try:
            error = json.loads(raw)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", f"the daemon answered HTTP {response.status}"
        if response.status == 401:
            raise DaemonAuthError(
                f"the daemon on port {self.config.api_port} refused our token from {self.config.token_path}"
                " (is it running with another KACHERY_P2P_CONFIG_DIR?)"
            )
        raise _exception_for(code)(message)

    # -- requests ------------------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        response = self._open("GET", "/probe", auth=False, timeout=5.0)
        return _json_body(response)

    def get_json(self, path: str) -> dict[str, Any]:
        return _json_body(self._open("GET", path))

    def post_json(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        body = json.dumps(payload).encode("utf-8")
        response = self._open(
            "POST", path, body=body, headers={"Content-Type": "application/json"}, timeout=timeout
        )
        return _json_body(response)

    def post_stream(self, path: str, body: BinaryIO, size: int, name: str) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "X-Kachery-Name": name.encode("utf-8").hex(),
        }
        return _json_body(self._open("POST", path, body=body, headers=headers, timeout=3600.0))

    def post_json_lines(
        self, path: str, payload: dict[str, Any], timeout: float | None = None, what: str = "the request"
    ) -> Iterator[dict[str, Any]]:
        """JSON lines as they come; ``timeout`` is the most silence tolerated between two lines."""
        body = json.dumps(payload).encode("utf-8")
        silence = timeout or SILENCE_TIMEOUT
        response = self._open(
            "POST", path, body=body, headers={"Content-Type": "application/json"}, timeout=silence
        )
        try:
            for line in response:
                line = line.strip()
                if not line:
                    continue
                message = json.loads(line)
                if message.get("type") == "error":
                    raise _exception_for(str(message.get("code")))(str(message.get("message")))
                yield message
        except TimeoutError:
            raise DaemonError(_silence(silence)) from None
        except (OSError, HTTPWireError, ValueError):
            raise DaemonStoppedError(f"the daemon stopped during {what}") from None
        finally:
            response.close()

    def read_frames(self, path: str, payload: dict[str, Any], what: str = "the read") -> Iterator[bytes]:
        """The bytes of a framed read (see daemon/control_stream.py), checked against the announced size."""
        body = json.dumps({**payload, "framed": True}).encode("utf-8")
        response = self._open(
            "POST", path, body=body, headers={"Content-Type": "application/json"}, timeout=SILENCE_TIMEOUT
        )
        size: int | None = None
        received = 0
        try:
            while True:
                kind, data = _read_frame(response)
                if kind == b"D":
                    received += len(data)
                    if size is None or received > size:
                        raise DaemonError("the daemon sent more bytes than the file has")
                    yield data
                elif kind == b"S":
                    size = int(json.loads(data)["size"])
                elif kind == b"E":
                    error = json.loads(data)
                    raise _exception_for(str(error.get("code")))(str(error.get("message")))
                elif kind == b"Z":
                    break
        except TimeoutError:
            raise DaemonError(_silence(SILENCE_TIMEOUT)) from None
        except (OSError, HTTPWireError, ValueError, KeyError, TypeError):
            raise DaemonStoppedError(f"the daemon stopped during {what}") from None
        finally:
            response.close()
        if size is None or received != size:
            raise DaemonStoppedError(f"the daemon stopped during {what} ({received} of {size} bytes)")


def _read_frame(response: Response) -> tuple[bytes, bytes]:
    head = response.read_exactly(5)
    length = int.from_bytes(head[1:], "big")
    return head[:1], response.read_exactly(length) if length else b""


def _json_body(response: Response) -> dict[str, Any]:
    try:
        raw = response.read()
    except (OSError, HTTPWireError) as exc:
        raise DaemonError(f"lost the connection to the daemon: {exc}") from exc
    finally:
        response.close()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DaemonError("the daemon sent a reply that is not JSON") from exc
    if not isinstance(data, dict):
        raise DaemonError("the daemon sent an unexpected reply")
    return data


def _host_header(config: ClientConfig) -> str:
    """``host:port`` as the daemon's Host check expects it (IPv6 in brackets; the port always given)."""
    host = config.api_host.strip("[]")
    return f"[{host}]:{config.api_port}" if ":" in host else f"{host}:{config.api_port}"


def _exception_for(code: str) -> type[KacheryP2PError]:
    from ..error_codes import exception_for  # the table loads only when the daemon reports an error

    return exception_for(code)
