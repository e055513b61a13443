// MQTT: a thin, safe wrapper over libmosquitto (MQTT v5).
