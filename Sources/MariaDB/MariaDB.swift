// MariaDB: a thin, safe wrapper over MariaDB Connector/C.
