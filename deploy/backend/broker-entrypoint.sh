#!/bin/sh
# Entry point of the Fieldlog broker image: makes sure the password file exists and holds the
# backend's user (FIELDLOG_MQTT_BACKEND_USER / FIELDLOG_MQTT_BACKEND_PASSWORD, the same
# variables fieldlog-backend reads), then runs mosquitto. Device users are added at run time:
#   docker compose exec broker mosquitto_passwd -b /mosquitto/passwd/fieldlog.passwd DEVICE PASSWORD
#   docker compose kill -s HUP broker
set -eu
file=/mosquitto/passwd/fieldlog.passwd
user="${FIELDLOG_MQTT_BACKEND_USER:-fieldlog-backend}"
if [ -z "${FIELDLOG_MQTT_BACKEND_PASSWORD:-}" ]; then
  echo "broker: FIELDLOG_MQTT_BACKEND_PASSWORD is not set (the backend's broker password)" >&2
  exit 78
fi
[ -f "$file" ] || { touch "$file"; }
mosquitto_passwd -b "$file" "$user" "$FIELDLOG_MQTT_BACKEND_PASSWORD"
chown mosquitto:mosquitto "$file" 2>/dev/null || true
chmod 0600 "$file"
exec "$@"
