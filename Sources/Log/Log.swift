// Log: the device's durable, sequence-numbered log (SQLite) and its Redis hot-state mirror.
