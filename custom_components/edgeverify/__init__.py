"""edgeverify companion: Assist that knows who is speaking.

One config entry listens (through HA's MQTT integration) to the decisions of the chosen edgeverify
devices, offers a conversation agent that hands each request to the agent the user picked, with
`Context.user_id` set to the person whose voice said it when a fresh decision carries the hash of the
request's text, and a per-person "heard" binary sensor that clears on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Optional

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ConfigEntryNotReady
from homeassistant.helpers.dispatcher import async_dispatcher_send

from .const import DOMAIN, Settings
from .decisions import NAME_RE, Decision, DecisionStore, Match, parse_event

_LOGGER = logging.getLogger(__name__)
PLATFORMS = [Platform.CONVERSATION, Platform.BINARY_SENSOR]
MAX_NAMES = 200  # voice names remembered for the mapping form
MAX_CONFIG_PAYLOAD = 256 * 1024  # a device discovery config (grows with per-person event types)


def heard_signal(entry_id: str) -> str:
    return f"{DOMAIN}_heard_{entry_id}"


def discovery_prefix(hass: HomeAssistant) -> str:
    """HA's MQTT discovery prefix (options in current HA, data in older entries)."""
    for entry in hass.config_entries.async_entries("mqtt"):
        for source in (entry.options, entry.data):
            prefix = source.get("discovery_prefix")
            if isinstance(prefix, str) and prefix:
                return prefix
    return "homeassistant"


def device_id_of(base: str) -> str:
    return base.rstrip("/").rsplit("/", 1)[-1]


class Runtime:
    """The entry's live state: subscriptions, recent decisions, names seen, waiting requests."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry, settings: Settings) -> None:
        self.hass = hass
        self.entry = entry
        self.settings = settings
        self.store = DecisionStore(settings.window_s)
        self._names: OrderedDict[str, None] = OrderedDict()
        self._unsubs: list[Callable[[], None]] = []
        self._arrived = asyncio.Event()
        self.ignored = 0  # payloads that were not decisions (hostile or foreign), for diagnostics

    async def async_start(self) -> None:
        prefix = discovery_prefix(self.hass)
        for base in self.settings.devices:
            device = device_id_of(base)
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{base}/event", self._event_callback(device), qos=1, encoding=None))
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{base}/diagnostics", self._names_callback(self._names_from_diagnostics), encoding=None))
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{prefix}/device/edgeverify_{device}/config",
                self._names_callback(self._names_from_discovery), encoding=None))

    @callback
    def async_stop(self) -> None:
        while self._unsubs:
            self._unsubs.pop()()
        self._wake()

    # -- incoming (every payload is hostile until checked) ------------------------------------------

    def _event_callback(self, device: str) -> Callable[[Any], None]:
        @callback
        def on_event(msg: Any) -> None:
            try:
                if msg.retain:  # a decision is news or nothing: a retained one is old by definition
                    return
                decision, why = parse_event(msg.payload, device, time.monotonic())
                if decision is None:
                    self.ignored += 1
                    _LOGGER.debug("ignoring a message on %s: %s", msg.topic, why)
                    return
                self._on_decision(decision)
            except Exception:  # noqa: BLE001 -- a bug here must not reach HA's MQTT client
                _LOGGER.exception("edgeverify: could not handle a message on %s", msg.topic)

        return on_event

    def _on_decision(self, decision: Decision) -> None:
        for name in decision.voices:
            self._remember(name)
        if decision.transcript_sha256 is not None:
            self.store.add(decision)
            self._wake()
        if decision.confident and (person := self.settings.voices.get(decision.speaker or "")):
            async_dispatcher_send(self.hass, heard_signal(self.entry.entry_id), person, decision)

    def _names_callback(self, extract: Callable[[Any], list[Any]]) -> Callable[[Any], None]:
        @callback
        def on_message(msg: Any) -> None:
            payload = msg.payload
            if not isinstance(payload, (bytes, bytearray)) or not payload or len(payload) > MAX_CONFIG_PAYLOAD:
                return
            try:
                body = json.loads(bytes(payload).decode("utf-8"))
                for name in extract(body) if isinstance(body, dict) else []:
                    if isinstance(name, str) and NAME_RE.match(name):
                        self._remember(name)
            except (ValueError, RecursionError):
                return
            except Exception:  # noqa: BLE001
                _LOGGER.exception("edgeverify: could not read names on %s", msg.topic)

        return on_message

    @staticmethod
    def _names_from_discovery(body: dict[str, Any]) -> list[Any]:
        """Per-person event types (`identified_<name>`) of the device's event entity, where it offers them."""
        cmps = body.get("cmps") if isinstance(body.get("cmps"), dict) else body.get("components")
        names: list[Any] = []
        for cmp in list(cmps.values())[:64] if isinstance(cmps, dict) else []:
            types = cmp.get("event_types") if isinstance(cmp, dict) else None
            for t in types[:2 * MAX_NAMES] if isinstance(types, list) else []:
                if isinstance(t, str) and t.startswith("identified_"):
                    names.append(t[len("identified_"):])
        return names

    @staticmethod
    def _names_from_diagnostics(body: dict[str, Any]) -> list[Any]:
        for key in ("profile_names", "profiles"):
            if isinstance(body.get(key), list):
                return body[key][:MAX_NAMES]
        return []

    def _remember(self, name: str) -> None:
        self._names[name] = None
        self._names.move_to_end(name)
        while len(self._names) > MAX_NAMES:
            self._names.popitem(last=False)

    def voice_names(self) -> list[str]:
        """Names for the mapping form: mapped ones, then those the devices published or decided."""
        return list(dict.fromkeys([*self.settings.voices, *sorted(self._names)]))

    # -- correlation --------------------------------------------------------------------------------

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def async_match(self, text: str) -> Match:
        """The decision for this text; waits up to wait_s for one still on its way over MQTT."""
        deadline = time.monotonic() + self.settings.wait_s
        while True:
            arrived = self._arrived
            found = self.store.match(text, time.monotonic(), time.time())
            left = deadline - time.monotonic()
            if found.reason != "no_decision" or left <= 0:
                return found
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except TimeoutError:
                pass

    def person_user(self, person: str) -> Optional[tuple[Optional[str], str]]:
        """(user id, display name) of a person entity (no user id when the person has no HA user), or None
        when HA has no such person (deleted since it was mapped)."""
        state = self.hass.states.get(person)
        if state is None:
            return None
        user = state.attributes.get("user_id")
        return (user if isinstance(user, str) and user else None), str(state.attributes.get("friendly_name") or state.name)


type EdgeverifyConfigEntry = ConfigEntry[Runtime]


async def async_setup_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry) -> bool:
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady("the MQTT integration is not available")
    runtime = Runtime(hass, entry, Settings.from_options(entry.options))
    await runtime.async_start()
    entry.runtime_data = runtime
    entry.async_on_unload(runtime.async_stop)
    entry.async_on_unload(entry.add_update_listener(_async_options_updated))
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def _async_options_updated(hass: HomeAssistant, entry: EdgeverifyConfigEntry) -> None:
    await hass.config_entries.async_reload(entry.entry_id)


async def async_unload_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry) -> bool:
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
