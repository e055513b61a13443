#ifndef FIELDLOG_CSQLITE_SHIM_H
#define FIELDLOG_CSQLITE_SHIM_H
#include <sqlite3.h>

/* SQLITE_TRANSIENT is a macro casting -1 to a function pointer; Swift cannot import it. */
static inline sqlite3_destructor_type fieldlog_sqlite_transient(void) { return SQLITE_TRANSIENT; }
static inline sqlite3_destructor_type fieldlog_sqlite_static(void) { return SQLITE_STATIC; }

/* sqlite3_config is variadic: one typed helper per option we use. */
static inline int fieldlog_sqlite_config_log(void (*fn)(void *, int, const char *), void *ctx) {
    return sqlite3_config(SQLITE_CONFIG_LOG, fn, ctx);
}
static inline int fieldlog_sqlite_db_config_defensive(sqlite3 *db, int on) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, on, (int *)0);
}
#endif
