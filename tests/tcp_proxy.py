"""A small TCP proxy for tests: put it between a client and PostgreSQL, then switch it down and up.

Down closes every open connection and refuses new ones (the listening socket is closed, so a
connect gets ECONNREFUSED, as from a stopped server); up listens again on the same port. Stall keeps
every connection open but forwards nothing (a network black hole) until resume. The upstream is a
TCP ``(host, port)`` or the path of a unix socket (the embedded server's ``/dir/.s.PGSQL.5432``).
"""

import contextlib
import socket
import threading
import time

from sqlalchemy.engine import URL, make_url

_CHUNK = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; ``down()``/``up()`` simulate an outage."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.port = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._stalled = threading.Event()
        self.connections_accepted = 0

    # -- switching -----------------------------------------------------------------------------

    def start(self) -> "TcpProxy":
        self.up()
        return self

    def up(self) -> None:
        """Listen (again, on the same port) and forward new connections."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            listener.settimeout(0.05)
            self.port = listener.getsockname()[1]
            self._listener = listener
            self._acceptor = threading.Thread(
                target=self._accept_loop, args=(listener,), name=f"tcp-proxy-{self.port}", daemon=True
            )
            self._acceptor.start()

    def down(self) -> None:
        """Stop listening (new connections are refused) and cut every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            acceptor, self._acceptor = self._acceptor, None
            doomed, self._open = self._open, set()
        if acceptor is not None:  # it sees the listener is no longer current within one timeout
            acceptor.join(timeout=5)
        if listener is not None:
            listener.close()
        for sock in doomed:
            _cut(sock)

        self._stalled.clear()  # the pumps of the cut connections finish

    def stall(self) -> None:
        """Keep connections (old and new) open but forward no byte: a black hole."""
        self._stalled.set()

    def resume(self) -> None:
        """Forward again what was held back during a stall."""
        self._stalled.clear()

    close = down

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- forwarding ----------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by down()
                return
            client.settimeout(None)
            try:
                server = self._connect_upstream()
            except OSError:
                _cut(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _cut(client)
                    _cut(server)
                    return
                self._open.update((client, server))
                self.connections_accepted += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.upstream)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.upstream, timeout=5)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            sink.settimeout(None)
            while data := source.recv(_CHUNK):
                while self._stalled.is_set():
                    time.sleep(0.02)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _cut(source)
            _cut(sink)


def _cut(sock: socket.socket) -> None:
    """Close ``sock`` so that a thread blocked in ``recv`` on it wakes up."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def proxy_for(database_url: str) -> tuple[TcpProxy, str]:
    """A started proxy in front of ``database_url``'s server, and the same URL through the proxy.

    TCP URLs are forwarded to their host and port; a unix-socket URL (``?host=/dir``, as the embedded
    server's) is forwarded to ``/dir/.s.PGSQL.<port>``.
    """
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0]
    if socket_dir and socket_dir.startswith("/"):
        upstream: tuple[str, int] | str = f"{socket_dir}/.s.PGSQL.{url.port or 5432}"
    else:
        upstream = (url.host or socket_dir or "127.0.0.1", url.port or 5432)
    proxy = TcpProxy(upstream).start()
    proxied: URL = url.difference_update_query(["host", "hostaddr", "port"]).set(
        host="127.0.0.1", port=proxy.port
    )
    return proxy, proxied.render_as_string(hide_password=False)
