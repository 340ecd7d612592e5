"""MQTT transport over aiomqtt: sessions, topic scheme, chunking, request/response, broker control."""
