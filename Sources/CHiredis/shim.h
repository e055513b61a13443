#ifndef FIELDLOG_CHIREDIS_SHIM_H
#define FIELDLOG_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>

/* errstr is a fixed char array (a tuple in Swift): hand out a pointer to it. */
static inline const char *fieldlog_redis_errstr(const redisContext *c) {
    return c->errstr;
}
#endif
