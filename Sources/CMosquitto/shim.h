#ifndef FIELDLOG_CMOSQUITTO_SHIM_H
#define FIELDLOG_CMOSQUITTO_SHIM_H
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <poll.h>
#include <sys/eventfd.h>
#endif
