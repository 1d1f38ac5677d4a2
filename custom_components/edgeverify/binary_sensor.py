"""Per-person "heard" binary sensors: on when a device recognised the person's voice, off again on their own.

One sensor per HA person that a voice is mapped to. Any confident decision of a configured device counts
(microphone, MQTT request or Wyoming), not only Assist requests. The last time heard survives a restart
(restored state); the sensor turns off `heard_for_s` after it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional

from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddEntitiesCallback
from homeassistant.helpers.event import async_track_point_in_utc_time
from homeassistant.helpers.restore_state import RestoreEntity
from homeassistant.util import dt as dt_util

from . import EdgeverifyConfigEntry, heard_signal
from .conversation import service_device
from .decisions import Decision


async def async_setup_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry, async_add_entities: AddEntitiesCallback) -> None:
    runtime = entry.runtime_data
    persons = sorted(set(runtime.settings.voices.values()))
    async_add_entities([PersonHeard(entry, p, found[1] if (found := runtime.person_user(p)) else p.split(".", 1)[-1])
                        for p in persons])


class PersonHeard(BinarySensorEntity, RestoreEntity):
    _attr_has_entity_name = True
    _attr_device_class = BinarySensorDeviceClass.SOUND
    _attr_icon = "mdi:account-voice"

    def __init__(self, entry: EdgeverifyConfigEntry, person: str, person_name: str) -> None:
        self.entry = entry
        self.person = person
        self._attr_unique_id = f"{entry.entry_id}_heard_{person}"
        self._attr_device_info = service_device(entry)
        self._attr_name = f"{person_name} heard"
        self._last: Optional[datetime] = None
        self._details: dict[str, Any] = {}
        self._expiry: Optional[CALLBACK_TYPE] = None

    @property
    def _heard_for(self) -> timedelta:
        return timedelta(seconds=self.entry.runtime_data.settings.heard_for_s)

    @property
    def is_on(self) -> bool:
        return self._last is not None and dt_util.utcnow() < self._last + self._heard_for

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        return {"person": self.person, "last_heard": self._last.isoformat() if self._last else None, **self._details}

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        if (old := await self.async_get_last_state()) is not None:
            last = dt_util.parse_datetime(str(old.attributes.get("last_heard") or ""))
            if last is not None and last <= dt_util.utcnow():
                self._last = last
                self._details = {k: old.attributes.get(k) for k in ("voice", "device", "source", "score")}
                self._schedule_expiry()
        self.async_on_remove(async_dispatcher_connect(self.hass, heard_signal(self.entry.entry_id), self._heard))
        self.async_on_remove(self._cancel_expiry)

    @callback
    def _heard(self, person: str, decision: Decision) -> None:
        if person != self.person:
            return
        self._last = dt_util.utcnow()
        self._details = {"voice": decision.speaker, "device": decision.device, "source": decision.source,
                         "score": decision.score}
        self._schedule_expiry()
        self.async_write_ha_state()

    def _schedule_expiry(self) -> None:
        self._cancel_expiry()
        if self._last is not None and self.is_on:
            self._expiry = async_track_point_in_utc_time(self.hass, self._expired, self._last + self._heard_for)

    @callback
    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry()
            self._expiry = None

    @callback
    def _expired(self, now: datetime) -> None:
        self._expiry = None
        self.async_write_ha_state()
