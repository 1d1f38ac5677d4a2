"""The inbox on a dashboard: pick an unrecognised utterance and who it was (then press "Assign").

"Inbox utterance" lists the entries as `19:02 Wyoming, margin -2.3 (nearest alice) #3`: when, where
from, how close to whom -- never the words, because HA's recorder stores a select's state and the
service call that picks an option. What was said is the `transcript` attribute of the chosen entry,
which is unrecorded (it stays in HA's memory). "Inbox: who was it" lists HA's persons (an utterance of
a person whose voice is not mapped yet starts a voice named after them, mapped to them) and the devices'
voices that no person is mapped to.
"""

from __future__ import annotations

from typing import Any, Optional

from homeassistant.components.select import SelectEntity
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddEntitiesCallback
from homeassistant.helpers.event import async_track_state_added_domain, async_track_state_removed_domain
from homeassistant.util import dt as dt_util

from . import EdgeverifyConfigEntry, Runtime, device_id_of
from .conversation import service_device
from .inbox import Entry, entry_details, label
from .inbox_client import inbox_signal

MAX_TARGETS = 200


def entry_labels(runtime: Runtime) -> dict[str, Entry]:
    """{label: entry}, newest first; the device is named when several are configured."""
    tz, now = dt_util.get_default_time_zone(), dt_util.now()
    several = len(runtime.settings.devices) > 1
    return {label(e, tz, now, device_id_of(e.device) if several else None): e for e in runtime.inbox.all_entries()}


def chosen_entry(runtime: Runtime) -> Optional[Entry]:
    """The chosen utterance, else the newest one (what the select shows)."""
    entries = runtime.inbox.all_entries()
    return next((e for e in entries if e.key == runtime.chosen_entry), entries[0] if entries else None)


def assign_targets(hass: HomeAssistant, runtime: Runtime) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """{label: (person entity id, None) or (None, voice name)}: HA's persons, then unmapped device voices."""
    targets: dict[str, tuple[Optional[str], Optional[str]]] = {}
    persons = sorted(hass.states.async_all("person"), key=lambda s: (s.name.casefold(), s.entity_id))
    names = [s.name for s in persons]
    for state in persons[:MAX_TARGETS]:
        shown = state.name if names.count(state.name) == 1 else f"{state.name} ({state.entity_id})"
        targets[shown] = (state.entity_id, None)
    mapped = set(runtime.settings.voices)
    for voice in runtime.voice_names():
        if voice not in mapped and len(targets) < 2 * MAX_TARGETS:
            targets[f"voice {voice} (no person)"] = (None, voice)
    return targets


async def async_setup_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry, async_add_entities: AddEntitiesCallback) -> None:
    async_add_entities([UtteranceSelect(entry), TargetSelect(entry)])


class _InboxSelect(SelectEntity):
    _attr_has_entity_name = True
    _attr_should_poll = False

    def __init__(self, entry: EdgeverifyConfigEntry, key: str) -> None:
        self.entry = entry
        self._attr_unique_id = f"{entry.entry_id}_{key}"
        self._attr_device_info = service_device(entry)

    @property
    def runtime(self) -> Runtime:
        return self.entry.runtime_data

    async def async_added_to_hass(self) -> None:
        self.async_on_remove(async_dispatcher_connect(self.hass, inbox_signal(self.entry.entry_id), self.async_write_ha_state))


class UtteranceSelect(_InboxSelect):
    _attr_name = "Inbox utterance"
    _attr_icon = "mdi:account-voice"
    _unrecorded_attributes = frozenset({"transcript"})

    def __init__(self, entry: EdgeverifyConfigEntry) -> None:
        super().__init__(entry, "inbox_utterance")

    @property
    def options(self) -> list[str]:
        return list(entry_labels(self.runtime))

    @property
    def current_option(self) -> Optional[str]:
        chosen = chosen_entry(self.runtime)
        return next((text for text, e in entry_labels(self.runtime).items() if chosen is not None and e.key == chosen.key), None)

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        chosen = chosen_entry(self.runtime)
        if chosen is None:
            return {"transcript": None}
        details = entry_details(chosen, dt_util.get_default_time_zone())
        return {**details, "nearest_person": self.runtime.settings.voices.get(chosen.nearest or "")}

    async def async_select_option(self, option: str) -> None:
        self.runtime.chosen_entry = entry_labels(self.runtime)[option].key  # HA checked option is in options
        self.async_write_ha_state()

    async def async_added_to_hass(self) -> None:
        self.async_on_remove(async_dispatcher_connect(self.hass, inbox_signal(self.entry.entry_id), self._listed))

    @callback
    def _listed(self) -> None:
        """A new list: keep the chosen utterance; when it is gone (or none was chosen), pin the newest, so
        that an utterance arriving later never changes what "Assign" assigns under the user's eyes."""
        chosen = chosen_entry(self.runtime)
        self.runtime.chosen_entry = None if chosen is None else chosen.key
        self.async_write_ha_state()


class TargetSelect(_InboxSelect):
    _attr_name = "Inbox: who was it"
    _attr_icon = "mdi:account-arrow-left"

    def __init__(self, entry: EdgeverifyConfigEntry) -> None:
        super().__init__(entry, "inbox_target")

    @property
    def options(self) -> list[str]:
        return list(assign_targets(self.hass, self.runtime)) if self.hass else []

    @property
    def current_option(self) -> Optional[str]:
        return self.runtime.chosen_target if self.runtime.chosen_target in self.options else None

    async def async_select_option(self, option: str) -> None:
        self.runtime.chosen_target = option
        self.async_write_ha_state()

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()

        @callback
        def persons_changed(_: Any) -> None:
            self.async_write_ha_state()

        self.async_on_remove(async_track_state_added_domain(self.hass, "person", persons_changed))
        self.async_on_remove(async_track_state_removed_domain(self.hass, "person", persons_changed))
