// Sync: the sync protocol (spec/protocol.md): messages, codec, sans-IO state machines, transport.
