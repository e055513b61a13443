// Redis: a thin, safe wrapper over hiredis (binary-safe commands by argument vector).
