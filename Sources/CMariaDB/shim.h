#ifndef FIELDLOG_CMARIADB_SHIM_H
#define FIELDLOG_CMARIADB_SHIM_H
#include <mariadb/mysql.h>
#include <mariadb/errmsg.h>
#include <mariadb/mysqld_error.h>
#endif
