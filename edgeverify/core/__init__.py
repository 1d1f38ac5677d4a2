"""The core: audio, VAD, features, embedding, scoring and metrics on numpy arrays. Imports no adapter."""
