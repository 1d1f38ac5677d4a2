"""The "Voice inbox" sensor: how many unrecognised utterances wait on the devices to be assigned.

The state is the count (recorded: it says nothing about what was said); the entries -- with their
transcripts -- are an unrecorded attribute, so HA's recorder never stores them (they live in HA's memory
for as long as the device keeps them).
"""

from __future__ import annotations

from typing import Any, Optional

from homeassistant.components.sensor import SensorEntity
from homeassistant.core import HomeAssistant
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddEntitiesCallback
from homeassistant.util import dt as dt_util

from . import EdgeverifyConfigEntry, device_id_of
from .conversation import service_device
from .inbox import entry_details
from .inbox_client import inbox_signal


async def async_setup_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry, async_add_entities: AddEntitiesCallback) -> None:
    async_add_entities([InboxSensor(entry)])


class InboxSensor(SensorEntity):
    _attr_has_entity_name = True
    _attr_name = "Voice inbox"
    _attr_icon = "mdi:account-question"
    _attr_should_poll = False
    _attr_native_unit_of_measurement = "utterances"
    _unrecorded_attributes = frozenset({"entries"})

    def __init__(self, entry: EdgeverifyConfigEntry) -> None:
        self.entry = entry
        self._attr_unique_id = f"{entry.entry_id}_inbox"
        self._attr_device_info = service_device(entry)

    @property
    def native_value(self) -> Optional[int]:
        inbox = self.entry.runtime_data.inbox
        if not inbox.entries:
            return None  # no device has listed its inbox (yet): unknown, not "empty"
        return sum(len(es) for es in inbox.entries.values())

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        runtime = self.entry.runtime_data
        tz = dt_util.get_default_time_zone()
        devices = {device_id_of(b): runtime.inbox.problems.get(b, "ok" if b in runtime.inbox.entries else "not listed yet")
                   for b in runtime.settings.devices}
        return {"devices": devices,
                "entries": [{**entry_details(e, tz), "nearest_person": runtime.settings.voices.get(e.nearest or "")}
                            for e in runtime.inbox.all_entries()]}

    async def async_added_to_hass(self) -> None:
        self.async_on_remove(async_dispatcher_connect(self.hass, inbox_signal(self.entry.entry_id), self.async_write_ha_state))
