"""Running the proxy: on its own asyncio thread next to the daemon's MQTT worker, or standalone."""

from __future__ import annotations

import asyncio
import threading
from typing import Optional

from ..errors import WyomingError
from .server import SpeakerIdProxy


class ProxyThread:
    """The proxy's event loop in its own thread, for the daemon (whose main thread runs the MQTT worker)."""

    def __init__(self, proxy: SpeakerIdProxy, uri: str) -> None:
        self.proxy, self.uri = proxy, uri
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="wyoming", daemon=True)
        self._started = threading.Event()
        self._error: Optional[BaseException] = None

    def start(self, timeout: float = 10.0) -> None:
        """Returns once listening; WyomingError when the address cannot be bound."""
        self._thread.start()
        self._started.wait(timeout)
        if self._error is not None:
            raise WyomingError(f"wyoming.uri {self.uri}: cannot listen: {self._error}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.proxy.start(self.uri))
        except (OSError, ValueError) as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.proxy.close())
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)


async def serve(proxy: SpeakerIdProxy, uri: str, stop: Optional[asyncio.Event] = None) -> None:
    """Standalone (`edgeverify wyoming`): serve until `stop` is set (or forever)."""
    await proxy.start(uri)
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await proxy.close()
