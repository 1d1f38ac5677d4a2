"""A TCP relay that holds what a client sends for a while after its first packet: a slow or busy link
between the daemon and its broker, so its SUBSCRIBE reaches the broker late."""

from __future__ import annotations

import socket
import threading
import time


class SlowLink:
    """Relays 127.0.0.1:<port> to the broker; client bytes after the first read wait until `hold_s` after
    the connection was accepted (broker bytes flow at once)."""

    def __init__(self, broker_port: int, hold_s: float) -> None:
        self.broker_port, self.hold_s = broker_port, hold_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._socks: list[socket.socket] = []
        self.accepted: list[float] = []  # time.monotonic() of each connection
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            self._socks += [client, upstream]
            until = self.accepted[-1] + self.hold_s
            threading.Thread(target=self._pump, args=(client, upstream, until), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, hold_until: float) -> None:
        first = True
        try:
            while data := src.recv(65536):
                if not first:
                    time.sleep(max(0.0, hold_until - time.monotonic()))
                first = False
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
        for s in self._socks:
            s.close()
