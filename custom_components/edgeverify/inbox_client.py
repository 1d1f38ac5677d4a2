"""The devices' inboxes over HA's own MQTT client: admin requests, answers, and the entries HA shows.

Requests go to `<base>/admin/request` (the broker ACL lets Home Assistant's user, and nobody else, send
them: docs/security.md); the device answers on `<base>/admin/response`, echoing our `transaction`. The
entries -- with their transcripts -- are kept in HA's memory only, here, and refreshed when a device
says it heard a voice it did not know, when it comes online, after our own assignments, and every
REFRESH_S (entries expire on the device). Entities follow through the dispatcher signal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Optional

from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.dispatcher import async_dispatcher_send

from .inbox import Answer, Entry, answer_transaction, new_transaction, parse_answer, parse_entries, request

_LOGGER = logging.getLogger(__name__)
ANSWER_TIMEOUT_S = 15.0  # the device answers from its model worker, which may be busy with a decision
MAX_PENDING = 16  # requests waiting for an answer, all devices together
REFRESH_S = 300.0  # a periodic list: entries expire on the device, other admins assign
DEBOUNCE_S = 1.0  # a burst of unknown-voice decisions makes one list request


def inbox_signal(entry_id: str) -> str:
    return f"edgeverify_inbox_{entry_id}"


class InboxClient:
    """Admin requests to the configured devices and the last inbox each of them listed."""

    def __init__(self, hass: HomeAssistant, entry_id: str, devices: tuple[str, ...]) -> None:
        self.hass = hass
        self.entry_id = entry_id
        self.devices = devices
        self.entries: dict[str, list[Entry]] = {}  # base -> entries, oldest first (as the device lists them)
        self.problems: dict[str, str] = {}  # base -> why its inbox could not be listed
        self.listed_at: dict[str, float] = {}
        self._pending: dict[str, tuple[str, asyncio.Future[Answer]]] = {}  # transaction -> (base, answer)
        self._scheduled: set[str] = set()
        self._again: dict[str, bool] = {}  # base -> asked again while listing; True: only by decisions
        self._running: set[str] = set()
        self._unsubs: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopped = False

    async def async_start(self) -> None:
        for base in self.devices:
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{base}/admin/response", self._answer_callback(base), qos=1, encoding=None))
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{base}/availability", self._availability_callback(base), qos=1, encoding=None))

    @callback
    def async_stop(self) -> None:
        self.stopped = True
        while self._unsubs:
            self._unsubs.pop()()
        for _, future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()

    # -- answers (every payload hostile until checked) ---------------------------------------------

    def _answer_callback(self, base: str) -> Callable[[Any], None]:
        @callback
        def on_answer(msg: Any) -> None:
            try:
                transaction = answer_transaction(msg.payload)
                waiting = self._pending.get(transaction or "")
                if waiting is None or waiting[0] != base or waiting[1].done():
                    return  # another admin's answer, a late one, or not one
                answer = parse_answer(msg.payload)
                if answer is not None:
                    waiting[1].set_result(answer)
            except Exception:  # noqa: BLE001 -- a bug here must not reach HA's MQTT client
                _LOGGER.exception("edgeverify: could not handle an admin answer on %s", msg.topic)

        return on_answer

    def _availability_callback(self, base: str) -> Callable[[Any], None]:
        @callback
        def on_availability(msg: Any) -> None:
            if isinstance(msg.payload, (bytes, bytearray)) and bytes(msg.payload[:16]).strip() == b"online":
                self.schedule_refresh(base)

        return on_availability

    # -- requests ----------------------------------------------------------------------------------

    async def async_request(self, base: str, kind: str, **fields: Any) -> dict[str, Any]:
        """The device's answer to one admin request; HomeAssistantError with the device's own message when
        it refuses, or when it does not answer."""
        if base not in self.devices:
            raise HomeAssistantError(f"{base} is not one of the configured edgeverify devices")
        if len(self._pending) >= MAX_PENDING:
            raise HomeAssistantError("too many edgeverify admin requests waiting for an answer; try again shortly")
        transaction = new_transaction()
        future: asyncio.Future[Answer] = self.hass.loop.create_future()
        self._pending[transaction] = (base, future)
        device = base.rsplit("/", 1)[-1]
        try:
            await mqtt.async_publish(self.hass, f"{base}/admin/request", request(kind, transaction, **fields), qos=1)
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                answer = await future
        except TimeoutError as exc:
            raise HomeAssistantError(
                f"edgeverify device {device} did not answer {kind} within {ANSWER_TIMEOUT_S:.0f} s (is it online, "
                "with admin.enabled and the broker ACL letting Home Assistant's user send admin requests?)") from exc
        finally:
            self._pending.pop(transaction, None)
        if not answer.ok:
            _LOGGER.info("device %s refused %s: %s", device, kind, answer.message)
            raise HomeAssistantError(f"edgeverify device {device}: {answer.message}")
        return answer.body

    # -- the entries -------------------------------------------------------------------------------

    async def async_refresh(self, base: str) -> list[Entry]:
        """List `base`'s inbox now; its entries, or HomeAssistantError (kept as the device's problem)."""
        try:
            body = await self.async_request(base, "inbox_list")
        except HomeAssistantError as exc:
            self.problems[base] = str(exc)
            self.entries.pop(base, None)
            self._changed()
            raise
        entries, dropped = parse_entries(body, base)
        if dropped:
            _LOGGER.debug("%d malformed inbox entries from %s ignored", dropped, base)
        self.entries[base] = entries
        self.problems.pop(base, None)
        self.listed_at[base] = time.time()
        self._changed()
        return entries

    @callback
    def schedule_refresh(self, base: str, on_decision: bool = False) -> None:
        """Refresh soon (a burst of calls makes one request; one more if calls came in while it ran).
        on_decision: asked by a decision that named nobody; skipped while the device's last listing failed
        (its inbox or admin API is off, or it does not answer), so that such a device is not asked after
        every stranger -- it is asked again when it comes online, every REFRESH_S, and on any action."""
        if self.stopped or base not in self.devices or (on_decision and base in self.problems):
            return
        if base in self._running:
            self._again[base] = self._again.get(base, True) and on_decision
            return
        if base in self._scheduled:
            return
        self._scheduled.add(base)
        self.hass.loop.call_later(DEBOUNCE_S, self._start_refresh, base)

    @callback
    def _start_refresh(self, base: str) -> None:
        self._scheduled.discard(base)
        if self.stopped:
            return
        task = self.hass.async_create_background_task(self._background_refresh(base), f"edgeverify inbox {base}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background_refresh(self, base: str) -> None:
        self._running.add(base)
        try:
            await self.async_refresh(base)
        except HomeAssistantError as exc:
            _LOGGER.debug("inbox of %s not listed: %s", base, exc)
        finally:
            self._running.discard(base)
        if base in self._again:  # a listing that failed is not repeated for decisions that came meanwhile
            self.schedule_refresh(base, on_decision=self._again.pop(base))

    @callback
    def refresh_all(self, *_: Any) -> None:
        for base in self.devices:
            self.schedule_refresh(base)

    def all_entries(self) -> list[Entry]:
        """Every device's entries, newest first."""
        return sorted((e for es in self.entries.values() for e in es), key=lambda e: e.at, reverse=True)

    def find(self, base: str, entry_id: int) -> Optional[Entry]:
        return next((e for e in self.entries.get(base, []) if e.id == entry_id), None)

    def _changed(self) -> None:
        async_dispatcher_send(self.hass, inbox_signal(self.entry_id))
