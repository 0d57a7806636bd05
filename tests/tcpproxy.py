"""A TCP forwarder on 127.0.0.1 that a test can take away, so a service "goes down" for the client
behind it (open connections closed, new ones refused) while the sandbox itself keeps running."""

from __future__ import annotations

import contextlib
import socket
import threading

CONNECT_TIMEOUT_S = 5.0


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy one direction until either side closes (ends when close() shuts the sockets down)."""
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # close() shut the listener down
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), name="tcpproxy-pump", daemon=True).start()

    def close(self) -> None:
        """Take the service away: stop listening (connections are refused) and close every open connection."""
        with self._lock:
            self._closed = True
            sockets = [self.listener, *self._open]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes accept() and recv() in the proxy's threads
            sock.close()
