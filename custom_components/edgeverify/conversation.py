"""The conversation agent: the user's chosen agent, told who is speaking when a device recognised the voice.

HA has no speaker field in a conversation request; what it has is `Context.user_id` (which LLM agents
read for the user's name and which intents and automations can see) and `extra_system_prompt` (which
LLM agents add to their instructions). This agent fills both for a recognised, mapped voice and hands
the request, text unchanged, to the wrapped agent through `conversation.async_converse`, so HA's own
intent matching keeps working. A request that already carries a user (typed in the UI by someone who
is logged in) is passed on as it is: HA knows that user better than a voice match does.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections import OrderedDict
from typing import Any, Literal, Optional

from homeassistant.components import conversation
from homeassistant.const import MATCH_ALL
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import intent
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import EdgeverifyConfigEntry, Runtime
from .const import DOMAIN, REFUSAL, UNKNOWN_REFUSE

_LOGGER = logging.getLogger(__name__)
MAX_CONVERSATIONS = 256  # conversations whose speaker line we remember (to withdraw it on an unknown turn)
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("edgeverify_agent_depth", default=0)
_CONVERSE_PARAMS = set(inspect.signature(conversation.async_converse).parameters)  # satellite_id: HA >= 2025.7


def service_device(entry: EdgeverifyConfigEntry) -> DeviceInfo:
    return DeviceInfo(identifiers={(DOMAIN, entry.entry_id)}, name="edgeverify", manufacturer="edgeverify",
                      model="Voice recognition for Assist", entry_type=DeviceEntryType.SERVICE)


async def async_setup_entry(hass: HomeAssistant, entry: EdgeverifyConfigEntry, async_add_entities: AddEntitiesCallback) -> None:
    async_add_entities([VoiceAgent(entry)])


def speaker_line(name: str) -> str:
    return f"The person speaking is {name} (recognised by their voice)."


UNRECOGNISED_LINE = "The voice of the person speaking now was not recognised; do not assume who it is."


class VoiceAgent(conversation.ConversationEntity):
    """Wraps the configured agent; adds the recognised person's user to the request's context."""

    _attr_has_entity_name = True
    _attr_name = None

    def __init__(self, entry: EdgeverifyConfigEntry) -> None:
        self.entry = entry
        self._attr_unique_id = f"{entry.entry_id}_agent"
        self._attr_device_info = service_device(entry)
        self._named: OrderedDict[str, Optional[str]] = OrderedDict()  # conversation id -> caller's extra prompt

    @property
    def runtime(self) -> Runtime:
        return self.entry.runtime_data

    @property
    def supported_languages(self) -> list[str] | Literal["*"]:
        return MATCH_ALL

    @property
    def supported_features(self) -> conversation.ConversationEntityFeature:
        """The wrapped agent's features (e.g. CONTROL), so pipelines treat us as they would it."""
        state = self.hass.states.get(self.runtime.settings.agent_id) if self.hass else None
        try:
            return conversation.ConversationEntityFeature(int(state.attributes.get("supported_features", 0)) if state else 0)
        except (TypeError, ValueError):
            return conversation.ConversationEntityFeature(0)

    @property
    def supports_streaming(self) -> bool:
        """As the wrapped agent: it writes into the pipeline's chat log, which streams to TTS (HA >= 2025.7)."""
        agent = self.runtime.settings.agent_id
        if self.hass is None or agent == self.entity_id or _DEPTH.get() > 0:
            return False
        return bool(getattr(conversation.async_get_agent_info(self.hass, agent), "supports_streaming", False))

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        return {"wrapped_agent": self.runtime.settings.agent_id, "ignored_messages": self.runtime.ignored}

    async def async_process(self, user_input: conversation.ConversationInput) -> conversation.ConversationResult:
        settings = self.runtime.settings
        if settings.agent_id == self.entity_id or _DEPTH.get() > 0:
            return self._answer(user_input, "This voice agent cannot wrap itself: choose another agent in its options.", error=True)
        context: Context = user_input.context
        extra = user_input.extra_system_prompt
        if context.user_id:
            _LOGGER.debug("request from logged-in user %s: passed on unchanged", context.user_id)
        else:
            match = await self.runtime.async_match(user_input.text)
            person = settings.voices.get(match.decision.speaker or "") if match.decision else None
            found = self.runtime.person_user(person) if person else None
            if match.decision is not None and found is not None:
                user_id, name = found
                _LOGGER.debug("voice %s (device %s) -> %s (user %s)", match.decision.speaker, match.decision.device, person, user_id)
                context = Context(user_id=user_id, parent_id=user_input.context.id)
                extra = self._prompt(user_input, speaker_line(name))
            else:
                why = "not mapped to a person" if match.decision is not None else match.reason
                _LOGGER.debug("no recognised person for this request (%s)", why)
                if settings.unknown_voice == UNKNOWN_REFUSE:
                    return self._answer(user_input, REFUSAL)
                extra = self._prompt(user_input, None)
        return await self._delegate(user_input, context, extra)

    def _prompt(self, user_input: conversation.ConversationInput, line: Optional[str]) -> Optional[str]:
        """The caller's extra prompt plus who is speaking. A conversation that named a speaker before gets
        an explicit 'not recognised' on a turn nobody was recognised for, since LLM agents keep the last
        extra prompt of a conversation for its next turns."""
        cid = user_input.conversation_id
        caller = user_input.extra_system_prompt
        if cid is not None and cid in self._named:
            caller = caller or self._named[cid]
            self._named.move_to_end(cid)
        if line is None:
            if cid is None or cid not in self._named:
                return caller
            line = UNRECOGNISED_LINE
        if cid is not None:
            self._named[cid] = caller
            while len(self._named) > MAX_CONVERSATIONS:
                self._named.popitem(last=False)
        return f"{caller}\n{line}" if caller else line

    async def _delegate(self, user_input: conversation.ConversationInput, context: Context,
                        extra: Optional[str]) -> conversation.ConversationResult:
        kwargs: dict[str, Any] = {
            "hass": self.hass, "text": user_input.text, "conversation_id": user_input.conversation_id,
            "context": context, "language": user_input.language, "agent_id": self.runtime.settings.agent_id,
            "device_id": user_input.device_id, "extra_system_prompt": extra,
        }
        if "satellite_id" in _CONVERSE_PARAMS:
            kwargs["satellite_id"] = getattr(user_input, "satellite_id", None)
        token = _DEPTH.set(_DEPTH.get() + 1)
        try:
            return await conversation.async_converse(**kwargs)
        except ValueError as exc:  # the wrapped agent is gone (integration removed or not loaded yet)
            _LOGGER.error("the conversation agent %s is not available: %s", self.runtime.settings.agent_id, exc)
            return self._answer(user_input, "The conversation agent behind voice recognition is not available.", error=True)
        finally:
            _DEPTH.reset(token)

    @staticmethod
    def _answer(user_input: conversation.ConversationInput, speech: str, error: bool = False) -> conversation.ConversationResult:
        response = intent.IntentResponse(language=user_input.language)
        if error:
            response.async_set_error(intent.IntentResponseErrorCode.UNKNOWN, speech)
        else:
            response.async_set_speech(speech)
        return conversation.ConversationResult(response=response, conversation_id=user_input.conversation_id)
