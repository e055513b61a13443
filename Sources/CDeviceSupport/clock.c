// adjtimex(2) in query mode (modes = 0) needs no privileges and tells whether NTP (or
// anything else) has synchronised the clock: TIME_ERROR means "not synchronised".
#include "CDeviceSupport.h"
#include <string.h>
#include <sys/timex.h>

int fieldlog_clock_unsynchronized(void) {
    struct timex tx;
    memset(&tx, 0, sizeof tx);
    int state = adjtimex(&tx);
    if (state < 0) return -1;
    return state == TIME_ERROR ? 1 : 0;
}
