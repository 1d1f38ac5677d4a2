"""Actions for the devices' inboxes: list (with a response), assign an utterance to a person or voice, clear.

Admin actions (HA refuses them to a non-admin user): the list holds what people said, an assignment
changes who the device recognises. A device's refusal -- the inbox is off, the entry is gone, the
utterance fails enrollment's checks -- reaches the caller as a HomeAssistantError with the device's
message; the response is never an empty success.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import voluptuous as vol

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError, Unauthorized, UnknownUser
from homeassistant.helpers import config_validation as cv
from homeassistant.util import dt as dt_util

from . import Runtime, device_id_of
from .const import DOMAIN
from .inbox import MAX_ENTRY_ID, entry_details

SERVICE_LIST = "inbox_list"
SERVICE_ASSIGN = "inbox_assign"
SERVICE_CLEAR = "inbox_clear"
ATTR_DEVICE = "device"
ATTR_ID = "id"
ATTR_PERSON = "person"
ATTR_VOICE = "voice"

_DEVICE = vol.All(cv.string, vol.Length(min=1, max=300))
_ID = vol.All(vol.Coerce(int), vol.Range(min=1, max=MAX_ENTRY_ID))
LIST_SCHEMA = vol.Schema({vol.Optional(ATTR_DEVICE): _DEVICE})
ASSIGN_SCHEMA = vol.Schema({
    vol.Optional(ATTR_DEVICE): _DEVICE,
    vol.Required(ATTR_ID): _ID,
    vol.Exclusive(ATTR_PERSON, "who"): cv.entity_domain("person"),
    vol.Exclusive(ATTR_VOICE, "who"): vol.All(cv.string, vol.Length(min=1, max=64)),
})
CLEAR_SCHEMA = vol.Schema({vol.Optional(ATTR_DEVICE): _DEVICE, vol.Optional(ATTR_ID): _ID})


def runtime_of(hass: HomeAssistant) -> Runtime:
    for entry in hass.config_entries.async_entries(DOMAIN):
        if entry.state is ConfigEntryState.LOADED:
            return entry.runtime_data
    raise ServiceValidationError("edgeverify voice recognition is not set up (or not loaded)")


def _admin_only(hass: HomeAssistant, func: Callable[[ServiceCall], Awaitable[Any]]) -> Callable[[ServiceCall], Awaitable[Any]]:
    """What HA's async_register_admin_service does (which takes no supports_response before HA 2025.x):
    a call by a logged-in user who is not an administrator is refused; scripts and automations (no user) pass."""
    async def handler(call: ServiceCall) -> Any:
        if call.context.user_id:
            user = await hass.auth.async_get_user(call.context.user_id)
            if user is None:
                raise UnknownUser(context=call.context)
            if not user.is_admin:
                raise Unauthorized(context=call.context)
        return await func(call)

    return handler


def async_register_services(hass: HomeAssistant) -> None:
    async def inbox_list(call: ServiceCall) -> ServiceResponse:
        runtime = runtime_of(hass)
        bases = [runtime.device_base(call.data[ATTR_DEVICE])] if call.data.get(ATTR_DEVICE) else list(runtime.settings.devices)
        tz = dt_util.get_default_time_zone()
        devices: dict[str, Any] = {}
        errors: list[HomeAssistantError] = []
        entries: list[dict[str, Any]] = []
        for base in bases:
            try:
                listed = await runtime.inbox.async_refresh(base)
            except HomeAssistantError as exc:
                errors.append(exc)
                devices[device_id_of(base)] = str(exc)
                continue
            devices[device_id_of(base)] = "ok"
            for e in reversed(listed):  # newest first
                entries.append({**entry_details(e, tz), "nearest_person": runtime.settings.voices.get(e.nearest or "")})
        if errors and len(errors) == len(bases):
            raise errors[0]
        return {"entries": entries, "devices": devices}

    async def inbox_assign(call: ServiceCall) -> ServiceResponse:
        runtime = runtime_of(hass)
        base = runtime.device_base(call.data.get(ATTR_DEVICE))
        return await runtime.async_assign(base, call.data[ATTR_ID], person=call.data.get(ATTR_PERSON),
                                          voice=call.data.get(ATTR_VOICE))

    async def inbox_clear(call: ServiceCall) -> None:
        runtime = runtime_of(hass)
        bases = [runtime.device_base(call.data[ATTR_DEVICE])] if call.data.get(ATTR_DEVICE) else list(runtime.settings.devices)
        if call.data.get(ATTR_ID) is not None and len(bases) != 1:
            raise ServiceValidationError("an entry id belongs to one device: say which (device)")
        for base in bases:
            await runtime.inbox.async_request(base, "inbox_clear", id=call.data.get(ATTR_ID))
            try:
                await runtime.inbox.async_refresh(base)
            except HomeAssistantError:
                pass

    register = hass.services.async_register
    register(DOMAIN, SERVICE_LIST, _admin_only(hass, inbox_list), LIST_SCHEMA, SupportsResponse.ONLY)
    register(DOMAIN, SERVICE_ASSIGN, _admin_only(hass, inbox_assign), ASSIGN_SCHEMA, SupportsResponse.OPTIONAL)
    register(DOMAIN, SERVICE_CLEAR, _admin_only(hass, inbox_clear), CLEAR_SCHEMA)
