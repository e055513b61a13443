#ifndef FIELDLOG_CMARIADB_SHIM_H
#define FIELDLOG_CMARIADB_SHIM_H
#include <stddef.h>
#include <mariadb/mysql.h>
#include <mariadb/errmsg.h>
#include <mariadb/mysqld_error.h>

/* mysql_library_init is a macro (for mysql_server_init); Swift cannot call macros. */
static inline int fieldlog_mysql_library_init(void) {
    return mysql_library_init(0, NULL, NULL);
}
#endif
