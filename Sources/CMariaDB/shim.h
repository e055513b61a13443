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

/* The server status flags of the last OK or EOF packet (SERVER_STATUS_IN_TRANS, ...), through
   mariadb_get_infov (variadic, so not callable from Swift). */
static inline unsigned int fieldlog_mysql_server_status(MYSQL *mysql) {
    unsigned int status = 0;
    if (mariadb_get_infov(mysql, MARIADB_CONNECTION_SERVER_STATUS, &status)) return 0;
    return status;
}

/* Whether the server takes array binding (COM_STMT_BULK_EXECUTE, MariaDB >= 10.2): the same test
   as Connector/C's MARIADB_STMT_BULK_SUPPORTED, through mariadb_get_infov (variadic, so not
   callable from Swift). */
static inline int fieldlog_mariadb_bulk_supported(MYSQL *mysql) {
    unsigned long caps = 0, extended = 0;
    if (mariadb_get_infov(mysql, MARIADB_CONNECTION_SERVER_CAPABILITIES, &caps)) return 0;
    if (mariadb_get_infov(mysql, MARIADB_CONNECTION_EXTENDED_SERVER_CAPABILITIES, &extended)) return 0;
    return !(caps & CLIENT_MYSQL) && (extended & (MARIADB_CLIENT_STMT_BULK_OPERATIONS >> 32)) ? 1 : 0;
}
#endif
