"""Microphone adapter: PortAudio capture and the streaming utterance cutter feeding the core."""
