"""MQTT transport over aiomqtt: sessions, topic scheme, chunking, request/response, broker control."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "session": ["Session", "Received", "RemoteError", "RequestTimeout"],
    "messages": ["Error", "Ping", "Status"],
    "mosquitto": ["BrokerError", "BrokerSettings", "LocalMosquitto"],
    "topics": ["TopicError"],
    "chunking": ["ChunkError"],
})
