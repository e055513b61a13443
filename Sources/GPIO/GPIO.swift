// GPIO: a thin, safe wrapper over libgpiod v1.6 for one edge-event input line.
