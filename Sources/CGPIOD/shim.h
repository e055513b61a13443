#ifndef FIELDLOG_CGPIOD_SHIM_H
#define FIELDLOG_CGPIOD_SHIM_H
#include <gpiod.h>
#endif
