"""A small HTTP/1.1 client over one socket: one request per connection, the reply read as it comes.

The control endpoint is the only server it talks to, so it does what that needs and no more: a
request with a body given as bytes or as a file (sent with its Content-Length), and a reply framed by
``Transfer-Encoding: chunked``, by ``Content-Length``, or by the server closing the connection.
``http.client`` would do the same, but importing it (it parses headers with the ``email`` package)
cost every ``kachery-p2p-*`` command about 40 ms of start-up; this module needs a connected socket
and nothing else.

Errors: what the socket raises (``OSError``, ``TimeoutError``, ``ConnectionRefusedError``), and
``HTTPWireError`` when the server breaks the protocol (garbage status line, bad chunk, a body cut
short). Callers turn both into one clear line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

MAX_LINE = 65536  # longest status or header line accepted
MAX_HEADERS = 100
SEND_BLOCK = 1 << 16
RECV_BLOCK = 1 << 16
MAX_RECV = 1 << 20  # largest single recv for a large read


class Connection(Protocol):
    """What a request needs of its socket (``socket.socket``, ``ssl.SSLSocket`` or ``_socket.socket``)."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def close(self) -> None: ...


class HTTPWireError(Exception):
    """The server's reply is not the HTTP/1.1 we expected (or ended too soon)."""


class Response:
    """The reply: ``status``, ``reason``, ``headers`` (lower-case names), and the body as a stream."""

    def __init__(self, sock: Connection) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._eof = False
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._remaining: int | None = None  # bytes left of the body (Content-Length) or of the chunk
        self._chunked = False
        self._done = False  # the whole body has been read
        self._read_head()

    # -- socket buffer -------------------------------------------------------------------------
    def _fill(self) -> bool:
        """Read more from the socket into the buffer; False at EOF."""
        if self._eof:
            return False
        data = self._sock.recv(RECV_BLOCK)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def _line(self) -> bytes:
        """One CRLF- (or LF-) terminated line, without the terminator."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > MAX_LINE:
                raise HTTPWireError(f"a line of the reply is longer than {MAX_LINE} bytes")
            start = len(self._buffer)
            if not self._fill():
                raise HTTPWireError("the connection closed in the middle of the reply's head")

    def _take(self, count: int) -> bytes:
        """Up to ``count`` bytes (at least one unless at EOF): buffered bytes first, else one recv."""
        if self._buffer:
            data = bytes(self._buffer[:count])
            del self._buffer[:count]
            return data
        if self._eof:
            return b""
        data = self._sock.recv(min(count, MAX_RECV))
        if not data:
            self._eof = True
        return data

    # -- head ----------------------------------------------------------------------------------
    def _read_head(self) -> None:
        status_line = self._line()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise HTTPWireError(f"bad status line {status_line[:80]!r}")
        self.status = int(parts[1])
        self.reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if not line:
                break
            name, sep, value = line.partition(b":")
            if not sep or not name.strip():
                raise HTTPWireError(f"bad header line {line[:80]!r}")
            self.headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        else:
            raise HTTPWireError(f"more than {MAX_HEADERS} header lines")
        if 100 <= self.status < 200:  # an interim reply (100 Continue): the real one follows
            self._read_head()
            return
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in self.headers:
            length = self.headers["content-length"]
            if not length.isdigit():
                raise HTTPWireError(f"bad Content-Length {length[:40]!r}")
            self._remaining = int(length)
        if self.status in (204, 304) or self._remaining == 0:
            self._done = True

    # -- body ----------------------------------------------------------------------------------
    def read(self, count: int = -1) -> bytes:
        """Up to ``count`` bytes of the body (all of it if negative); b"" once the body is over.

        With a count it returns as soon as some bytes are there (as a socket does), never more than asked.
        """
        if count < 0:
            parts = []
            while part := self.read(RECV_BLOCK):
                parts.append(part)
            return b"".join(parts)
        if self._done or count == 0:
            return b""
        if self._chunked:
            return self._read_chunked(count)
        if self._remaining is None:  # the body ends when the server closes the connection
            data = self._take(count)
            self._done = not data
            return data
        data = self._take(min(count, self._remaining))
        if not data:
            raise HTTPWireError(f"the connection closed with {self._remaining} bytes of the body unread")
        self._remaining -= len(data)
        self._done = self._remaining == 0
        return data

    def _read_chunked(self, count: int) -> bytes:
        if not self._remaining:
            if self._remaining == 0:
                self._line()  # the CRLF after the previous chunk's data
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise HTTPWireError(f"bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                self._done = True
                return b""
            self._remaining = size
        data = self._take(min(count, self._remaining))
        if not data:
            raise HTTPWireError("the connection closed in the middle of a chunk")
        self._remaining -= len(data)
        return data

    def readline(self) -> bytes:
        """The body's next line, with its b"\\n" (the last one may have none); b"" at the end."""
        parts = []
        while block := self.read(RECV_BLOCK):
            end = block.find(b"\n")
            if end >= 0:
                parts.append(block[: end + 1])
                self._unread(block[end + 1 :])
                break
            parts.append(block)
        return b"".join(parts)

    def read_exactly(self, count: int) -> bytes:
        """Exactly ``count`` bytes of the body; HTTPWireError if it ends first."""
        parts = []
        missing = count
        while missing > 0:
            more = self.read(missing)
            if not more:
                raise HTTPWireError(f"the reply ended {missing} bytes short")
            parts.append(more)
            missing -= len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)  # one copy at most

    def _unread(self, data: bytes) -> None:
        """Put back body bytes that a readline took too many of."""
        if not data:
            return
        self._buffer[:0] = data
        if self._remaining is not None:  # chunked or Content-Length: the bytes count again
            self._remaining += len(data)
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        self._done = True
        self._sock.close()


def request(
    sock: Connection,
    method: str,
    host: str,
    path: str,
    headers: dict[str, str],
    body: bytes | BinaryIO | None = None,
) -> Response:
    """Send one request on ``sock`` (``Connection: close``) and read the reply's head."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", "Accept-Encoding: identity"]
    names = {name.lower() for name in headers}
    if isinstance(body, (bytes, bytearray)) and "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    elif body is None and method in ("POST", "PUT") and "content-length" not in names:
        lines.append("Content-Length: 0")
    elif body is not None and not isinstance(body, (bytes, bytearray)) and "content-length" not in names:
        raise ValueError("a file body needs a Content-Length header")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if isinstance(body, (bytes, bytearray)):
        sock.sendall(head + body)
    else:
        sock.sendall(head)
        if body is not None:
            while block := body.read(SEND_BLOCK):
                sock.sendall(block)
    return Response(sock)
