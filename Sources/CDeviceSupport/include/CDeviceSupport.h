// CDeviceSupport: small C helpers for the device node that Swift's Glibc module does not export.
#ifndef CDEVICESUPPORT_H
#define CDEVICESUPPORT_H

/// 1 when the kernel reports the system clock as unsynchronised (adjtimex() == TIME_ERROR),
/// 0 when synchronised, -1 when the query failed (treat as unknown).
int fieldlog_clock_unsynchronized(void);

#endif
