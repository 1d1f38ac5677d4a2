"""Wyoming adapter: a speech-to-text proxy for Home Assistant Assist that identifies the speaker on the streamed audio."""
