"""Config and options flows: which devices, which agent, what to do with unknown voices; voice -> person.

Devices are found over HA's MQTT: the device-based discovery configs whose origin or manufacturer is
edgeverify (their availability topic gives the device's base topic) and, for devices that publish no
discovery, the availability topics under the default prefix. HA also offers the integration on its own
when a device's `edgeverify/<id>/availability` appears (manifest `mqtt`). A base topic can be typed in.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import voluptuous as vol

from homeassistant.components import conversation, mqtt
from homeassistant.config_entries import ConfigEntry, ConfigFlow, ConfigFlowResult, OptionsFlow
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.selector import (
    ConversationAgentSelector,
    EntitySelector,
    EntitySelectorConfig,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
)

from . import MAX_CONFIG_PAYLOAD, discovery_prefix
from .const import (
    CONF_AGENT,
    CONF_DEVICES,
    CONF_UNKNOWN,
    CONF_VOICES,
    CONF_WAIT,
    DEFAULT_BASE,
    DOMAIN,
    MAX_DEVICES,
    MAX_VOICES,
    NUMBERS,
    UNKNOWN_PASS,
    UNKNOWN_REFUSE,
    valid_base,
)
from .decisions import NAME_RE

SCAN_S = 1.5  # retained discovery/availability messages arrive within a fraction of this
NEW_VOICE = "new voice"  # field keys with a space: no voice name can collide with them
NEW_PERSON = "new voice person"


def _edgeverify_device(body: Any) -> Optional[tuple[str, str]]:
    """(base, label) of a device-based discovery config that edgeverify published."""
    if not isinstance(body, dict):
        return None
    origin = body.get("o") or body.get("origin") or {}
    dev = body.get("dev") or body.get("device") or {}
    if not isinstance(origin, dict) or not isinstance(dev, dict):
        return None
    if origin.get("name") != "edgeverify" and (dev.get("mf") or dev.get("manufacturer")) != "edgeverify":
        return None
    avty = body.get("availability_topic") or body.get("avty_t")
    if avty is None:  # the list form (`availability` / `avty`: [{"topic": ...}, ...]) that devices publish now
        listed = body.get("availability") or body.get("avty")
        topics = [a.get("topic") or a.get("t") for a in listed[:8] if isinstance(a, dict)] if isinstance(listed, list) else []
        avty = next((t for t in topics if isinstance(t, str) and t.endswith("/availability")), None)
    if not isinstance(avty, str) or not avty.endswith("/availability"):
        return None
    base = valid_base(avty[: -len("/availability")])
    if base is None:
        return None
    name = dev.get("name")
    return base, f"{name} ({base})" if isinstance(name, str) and name else base


async def scan_devices(hass: HomeAssistant, seconds: float = SCAN_S) -> dict[str, str]:
    """{base topic: label} of the edgeverify devices that HA's MQTT broker holds retained messages for."""
    found: dict[str, str] = {}

    @callback
    def on_config(msg: Any) -> None:
        payload = msg.payload
        if len(found) >= MAX_DEVICES or not isinstance(payload, (bytes, bytearray)) or not payload or len(payload) > MAX_CONFIG_PAYLOAD:
            return
        try:
            device = _edgeverify_device(json.loads(bytes(payload).decode("utf-8")))
        except (ValueError, RecursionError):
            return
        if device is not None:
            found[device[0]] = device[1]

    @callback
    def on_availability(msg: Any) -> None:
        base = valid_base(msg.topic[: -len("/availability")])
        if base is not None and len(found) < MAX_DEVICES:
            found.setdefault(base, base)

    unsubs = [
        await mqtt.async_subscribe(hass, f"{discovery_prefix(hass)}/device/+/config", on_config, encoding=None),
        await mqtt.async_subscribe(hass, f"{DEFAULT_BASE}/+/availability", on_availability, encoding=None),
    ]
    try:
        await asyncio.sleep(seconds)
    finally:
        for unsub in unsubs:
            unsub()
    return found


def _number(key: str) -> NumberSelector:
    s = NUMBERS[key]
    step = 0.1 if key == CONF_WAIT else 1
    return NumberSelector(NumberSelectorConfig(min=s.low, max=s.high, step=step, unit_of_measurement="s",
                                               mode=NumberSelectorMode.BOX))


def settings_schema(found: dict[str, str], current: dict[str, Any]) -> vol.Schema:
    devices = list(dict.fromkeys([*current.get(CONF_DEVICES, []), *found]))
    options = [SelectOptionDict(value=b, label=found.get(b, b)) for b in devices]
    return vol.Schema({
        vol.Required(CONF_DEVICES, default=current.get(CONF_DEVICES) or list(found)[:1]): SelectSelector(
            SelectSelectorConfig(options=options, multiple=True, custom_value=True, mode=SelectSelectorMode.LIST)),
        vol.Required(CONF_AGENT, default=current.get(CONF_AGENT, conversation.HOME_ASSISTANT_AGENT)): ConversationAgentSelector(),
        vol.Required(CONF_UNKNOWN, default=current.get(CONF_UNKNOWN, UNKNOWN_PASS)): SelectSelector(
            SelectSelectorConfig(options=[UNKNOWN_PASS, UNKNOWN_REFUSE], translation_key=CONF_UNKNOWN)),
        **{vol.Required(key, default=current.get(key, NUMBERS[key].default)): _number(key) for key in NUMBERS},
    })


def check_settings(hass: HomeAssistant, user_input: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(clean settings, errors by field)."""
    errors: dict[str, str] = {}
    raw = user_input.get(CONF_DEVICES)
    devices = [valid_base(b) for b in raw] if isinstance(raw, list) else [None]
    if not devices or None in devices or len(devices) > MAX_DEVICES:
        errors[CONF_DEVICES] = "invalid_device"
    agent = user_input.get(CONF_AGENT)
    registry = er.async_get(hass)
    own = isinstance(agent, str) and (entry := registry.async_get(agent)) is not None and entry.platform == DOMAIN
    if not isinstance(agent, str) or own or conversation.async_get_agent_info(hass, agent) is None:
        errors[CONF_AGENT] = "invalid_agent"
    clean = {
        CONF_DEVICES: list(dict.fromkeys(d for d in devices if d)),
        CONF_AGENT: agent,
        CONF_UNKNOWN: UNKNOWN_REFUSE if user_input.get(CONF_UNKNOWN) == UNKNOWN_REFUSE else UNKNOWN_PASS,
    }
    for key, s in NUMBERS.items():
        try:
            value = float(user_input.get(key, s.default))
        except (TypeError, ValueError):
            value = float("nan")
        if not s.low <= value <= s.high:
            errors[key] = "out_of_range"
        clean[key] = value
    return clean, errors


class EdgeverifyConfigFlow(ConfigFlow, domain=DOMAIN):
    VERSION = 1

    def __init__(self) -> None:
        self._found: Optional[dict[str, str]] = None
        self._discovered: list[str] = []

    async def async_step_mqtt(self, discovery_info: Any) -> ConfigFlowResult:
        """HA's MQTT integration saw `edgeverify/<id>/availability` (manifest `mqtt`)."""
        topic = getattr(discovery_info, "topic", "")
        base = valid_base(topic[: -len("/availability")]) if isinstance(topic, str) and topic.endswith("/availability") else None
        if base is None:
            return self.async_abort(reason="not_edgeverify")
        await self.async_set_unique_id(DOMAIN)
        self._abort_if_unique_id_configured()
        self._discovered = [base]
        self.context["title_placeholders"] = {"name": base.rsplit("/", 1)[-1]}
        return await self.async_step_user()

    async def async_step_user(self, user_input: Optional[dict[str, Any]] = None) -> ConfigFlowResult:
        await self.async_set_unique_id(DOMAIN, raise_on_progress=False)
        self._abort_if_unique_id_configured()
        errors: dict[str, str] = {}
        current: dict[str, Any] = {CONF_DEVICES: self._discovered} if self._discovered else {}
        if user_input is not None:
            clean, errors = check_settings(self.hass, user_input)
            if not errors:
                return self.async_create_entry(title="edgeverify", data={}, options={**clean, CONF_VOICES: {}})
            current = user_input
        if self._found is None:
            self._found = await scan_devices(self.hass)
        return self.async_show_form(step_id="user", data_schema=settings_schema(self._found, current), errors=errors,
                                    description_placeholders={"found": str(len(self._found))})

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        return EdgeverifyOptionsFlow()


class EdgeverifyOptionsFlow(OptionsFlow):
    """Step 1: the settings of the first flow; step 2: which HA person each voice is."""

    def __init__(self) -> None:
        self._settings: dict[str, Any] = {}
        self._found: Optional[dict[str, str]] = None

    async def async_step_init(self, user_input: Optional[dict[str, Any]] = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        current = dict(self.config_entry.options)
        if user_input is not None:
            clean, errors = check_settings(self.hass, user_input)
            if not errors:
                self._settings = clean
                return await self.async_step_voices()
            current = user_input
        if self._found is None:
            self._found = await scan_devices(self.hass)
        return self.async_show_form(step_id="init", data_schema=settings_schema(self._found, current), errors=errors)

    def _names(self) -> list[str]:
        voices = self.config_entry.options.get(CONF_VOICES) or {}
        runtime = getattr(self.config_entry, "runtime_data", None)
        names = runtime.voice_names() if runtime is not None else list(voices)
        return [n for n in names if isinstance(n, str) and NAME_RE.match(n)][:MAX_VOICES]

    async def async_step_voices(self, user_input: Optional[dict[str, Any]] = None) -> ConfigFlowResult:
        voices: dict[str, str] = dict(self.config_entry.options.get(CONF_VOICES) or {})
        names = self._names()
        errors: dict[str, str] = {}
        if user_input is not None:
            mapped = {n: p for n in names if isinstance(p := user_input.get(n), str) and p.startswith("person.")}
            new, person = user_input.get(NEW_VOICE), user_input.get(NEW_PERSON)
            if new or person:
                if not isinstance(new, str) or not NAME_RE.match(new.strip()):
                    errors[NEW_VOICE] = "invalid_voice_name"
                elif not isinstance(person, str) or not person.startswith("person."):
                    errors[NEW_PERSON] = "person_needed"
                elif len(mapped) >= MAX_VOICES:
                    errors[NEW_VOICE] = "too_many_voices"
                else:
                    mapped[new.strip()] = person
            if not errors:
                return self.async_create_entry(data={**self._settings, CONF_VOICES: mapped})
            voices = {**voices, **{k: v for k, v in user_input.items() if k in names}}
        person_selector = EntitySelector(EntitySelectorConfig(domain="person"))
        fields: dict[Any, Any] = {
            vol.Optional(name, description={"suggested_value": voices.get(name)}): person_selector for name in names
        }
        fields[vol.Optional(NEW_VOICE)] = TextSelector()
        fields[vol.Optional(NEW_PERSON)] = person_selector
        return self.async_show_form(step_id="voices", data_schema=vol.Schema(fields), errors=errors,
                                    description_placeholders={"count": str(len(names))})
