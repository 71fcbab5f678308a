"""The claudemesh peer: connection, handshake, crypto, send queue, topic poller, roster."""
