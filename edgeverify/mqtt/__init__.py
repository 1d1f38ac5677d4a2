"""MQTT adapter: request/response protocol, transport with delivery guarantees, Home Assistant discovery and admin requests."""
