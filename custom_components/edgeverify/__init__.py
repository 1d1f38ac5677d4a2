"""edgeverify companion: Assist that knows who is speaking.

One config entry listens (through HA's MQTT integration) to the decisions of the chosen edgeverify
devices, offers a conversation agent that hands each request to the agent the user picked, with
`Context.user_id` set to the person whose voice said it when a fresh decision carries the hash of the
request's text, and a per-person "heard" binary sensor that clears on its own. The devices' inboxes
(utterances nobody was recognised in) are listed and assigned through the admin API (inbox_client.py):
actions edgeverify.inbox_list / inbox_assign / inbox_clear (services.py) and entities to do it from a
dashboard (select, button, sensor).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Callable, Optional

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ConfigEntryNotReady, HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.typing import ConfigType

from .const import CONF_VOICES, DOMAIN, MAX_VOICES, Settings
from .decisions import NAME_RE, Decision, DecisionStore, Match, parse_event
from .inbox import voice_for
from .inbox_client import REFRESH_S, InboxClient

_LOGGER = logging.getLogger(__name__)
PLATFORMS = [Platform.CONVERSATION, Platform.BINARY_SENSOR, Platform.SENSOR, Platform.SELECT, Platform.BUTTON]
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)
INBOX_SOURCES = ("microphone", "wyoming")  # the sources whose unrecognised utterances feed a device's inbox
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
        self.inbox = InboxClient(hass, entry.entry_id, settings.devices)
        self.chosen_entry: Optional[str] = None  # the inbox entities' choice: Entry.key
        self.chosen_target: Optional[str] = None  # ... and who it was: an assign_targets() label

    async def async_start(self) -> None:
        prefix = discovery_prefix(self.hass)
        for base in self.settings.devices:
            device = device_id_of(base)
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{base}/event", self._event_callback(base), qos=1, encoding=None))
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{base}/diagnostics", self._names_callback(self._names_from_diagnostics), encoding=None))
            self._unsubs.append(await mqtt.async_subscribe(
                self.hass, f"{prefix}/device/edgeverify_{device}/config",
                self._names_callback(self._names_from_discovery), encoding=None))
        await self.inbox.async_start()

    @callback
    def async_stop(self) -> None:
        while self._unsubs:
            self._unsubs.pop()()
        self.inbox.async_stop()
        self._wake()

    # -- incoming (every payload is hostile until checked) ------------------------------------------

    def _event_callback(self, base: str) -> Callable[[Any], None]:
        device = device_id_of(base)

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
                if decision.event_type == "unknown_speaker" and decision.source in INBOX_SOURCES:
                    self.inbox.schedule_refresh(base, on_decision=True)  # the device may have kept it
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

    # -- the inbox ----------------------------------------------------------------------------------

    def device_base(self, device: Optional[str]) -> str:
        """The configured device a service call means: its id or base topic; the only one when not given."""
        if not device:
            if len(self.settings.devices) == 1:
                return self.settings.devices[0]
            raise ServiceValidationError("several edgeverify devices are configured: say which one (device: "
                                         + ", ".join(device_id_of(b) for b in self.settings.devices) + ")")
        for base in self.settings.devices:
            if device in (base, device_id_of(base)):
                return base
        raise ServiceValidationError(f"{device[:80]!r} is not a configured edgeverify device (configured: "
                                     + ", ".join(device_id_of(b) for b in self.settings.devices) + ")")

    async def async_assign(self, base: str, entry_id: int, person: Optional[str] = None,
                           voice: Optional[str] = None) -> dict[str, Any]:
        """Add inbox entry `entry_id` of device `base` to a voice: the person's (mapped, or a new voice named
        after the person, then mapped to them) or the one named. HomeAssistantError with the device's
        message when it refuses (e.g. the utterance does not match the voice's other clips)."""
        if (person is None) == (voice is None):
            raise ServiceValidationError("say who it was: either a person or a voice name")
        if person is not None:
            if not person.startswith("person.") or self.hass.states.get(person) is None:
                raise ServiceValidationError(f"there is no person {person[:80]!r}")
            try:
                voice = voice_for(person, self.settings.voices, set(self.settings.voices))
            except ValueError as exc:
                raise ServiceValidationError(str(exc)) from exc
        assert voice is not None
        if not NAME_RE.match(voice) or voice in (".", ".."):
            raise ServiceValidationError("a voice name is 1-64 characters: letters, digits, _ . -")
        body = await self.inbox.async_request(base, "inbox_assign", id=entry_id, name=voice)
        self._remember(voice)
        profile = body.get("profile") if isinstance(body.get("profile"), dict) else {}
        notes = [n[:200] for n in body["notes"][:4] if isinstance(n, str)] if isinstance(body.get("notes"), list) else []
        result: dict[str, Any] = {"device": device_id_of(base), "id": entry_id, "voice": voice,
                                  "person": person or self.settings.voices.get(voice),
                                  "created": body.get("created") is True,
                                  "clips": profile.get("clips") if isinstance(profile.get("clips"), int) else None,
                                  "notes": notes}
        try:
            await self.inbox.async_refresh(base)
        except HomeAssistantError:
            pass  # the assignment is done; the list is refreshed again later
        if person is not None and self.settings.voices.get(voice) != person:
            voices = {**self.settings.voices, voice: person}
            if len(voices) > MAX_VOICES:
                result["notes"].append(f"voice {voice} was not mapped to {person}: {MAX_VOICES} voices are mapped already")
            else:  # reloads the entry (update listener): the new person's "heard" sensor appears
                self.hass.config_entries.async_update_entry(self.entry, options={**self.entry.options, CONF_VOICES: voices})
        return result

    def person_user(self, person: str) -> Optional[tuple[Optional[str], str]]:
        """(user id, display name) of a person entity (no user id when the person has no HA user), or None
        when HA has no such person (deleted since it was mapped)."""
        state = self.hass.states.get(person)
        if state is None:
            return None
        user = state.attributes.get("user_id")
        return (user if isinstance(user, str) and user else None), str(state.attributes.get("friendly_name") or state.name)


type EdgeverifyConfigEntry = ConfigEntry[Runtime]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    from .services import async_register_services  # it needs Runtime (above)

    async_register_services(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry) -> bool:
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady("the MQTT integration is not available")
    runtime = Runtime(hass, entry, Settings.from_options(entry.options))
    await runtime.async_start()
    entry.runtime_data = runtime
    entry.async_on_unload(runtime.async_stop)
    entry.async_on_unload(entry.add_update_listener(_async_options_updated))
    entry.async_on_unload(async_track_time_interval(hass, runtime.inbox.refresh_all, timedelta(seconds=REFRESH_S)))
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def _async_options_updated(hass: HomeAssistant, entry: EdgeverifyConfigEntry) -> None:
    await hass.config_entries.async_reload(entry.entry_id)


async def async_unload_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry) -> bool:
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
