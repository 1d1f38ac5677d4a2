"""Buttons for the inbox: assign the chosen utterance to the chosen person or voice, discard it, refresh.

A press by a logged-in user who is not an administrator is refused (an assignment changes whom the
device recognises); automations and scripts, which run with no user, may press them. A device's refusal
reaches the user as the error HA shows for the press, with the device's message.
"""

from __future__ import annotations

from homeassistant.components.button import ButtonEntity
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError, Unauthorized
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import EdgeverifyConfigEntry, Runtime
from .conversation import service_device
from .inbox import Entry
from .select import assign_targets, chosen_entry


async def async_setup_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry, async_add_entities: AddEntitiesCallback) -> None:
    async_add_entities([AssignButton(entry), DiscardButton(entry), RefreshButton(entry)])


class _InboxButton(ButtonEntity):
    _attr_has_entity_name = True

    def __init__(self, entry: EdgeverifyConfigEntry, key: str) -> None:
        self.entry = entry
        self._attr_unique_id = f"{entry.entry_id}_{key}"
        self._attr_device_info = service_device(entry)

    @property
    def runtime(self) -> Runtime:
        return self.entry.runtime_data

    async def _check_admin(self) -> None:
        context = self._context
        if context is not None and context.user_id:
            user = await self.hass.auth.async_get_user(context.user_id)
            if user is None or not user.is_admin:
                raise Unauthorized(context=context)

    def _chosen(self) -> Entry:
        entry = chosen_entry(self.runtime)
        if entry is None:
            raise ServiceValidationError("the voice inbox is empty: there is no utterance to assign or discard")
        return entry


class AssignButton(_InboxButton):
    _attr_name = "Assign utterance"
    _attr_icon = "mdi:account-check"

    def __init__(self, entry: EdgeverifyConfigEntry) -> None:
        super().__init__(entry, "inbox_assign")

    async def async_press(self) -> None:
        await self._check_admin()
        entry = self._chosen()
        target = assign_targets(self.hass, self.runtime).get(self.runtime.chosen_target or "")
        if target is None:
            raise ServiceValidationError("choose who it was first (Inbox: who was it)")
        person, voice = target
        await self.runtime.async_assign(entry.device, entry.id, person=person, voice=voice)
        self.runtime.chosen_entry = None


class DiscardButton(_InboxButton):
    _attr_name = "Discard utterance"
    _attr_icon = "mdi:delete-outline"

    def __init__(self, entry: EdgeverifyConfigEntry) -> None:
        super().__init__(entry, "inbox_discard")

    async def async_press(self) -> None:
        await self._check_admin()
        entry = self._chosen()
        await self.runtime.inbox.async_request(entry.device, "inbox_clear", id=entry.id)
        self.runtime.chosen_entry = None
        try:
            await self.runtime.inbox.async_refresh(entry.device)
        except HomeAssistantError:
            pass


class RefreshButton(_InboxButton):
    _attr_name = "Refresh inbox"
    _attr_icon = "mdi:refresh"

    def __init__(self, entry: EdgeverifyConfigEntry) -> None:
        super().__init__(entry, "inbox_refresh")

    async def async_press(self) -> None:
        await self._check_admin()
        errors: list[HomeAssistantError] = []
        for base in self.runtime.settings.devices:
            try:
                await self.runtime.inbox.async_refresh(base)
            except HomeAssistantError as exc:
                errors.append(exc)
        if errors and len(errors) == len(self.runtime.settings.devices):
            raise errors[0]
