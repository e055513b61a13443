#ifndef FIELDLOG_CHIREDIS_SHIM_H
#define FIELDLOG_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#endif
