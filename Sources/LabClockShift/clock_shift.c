// LabClockShift: moves CLOCK_REALTIME of the process it is preloaded into (see the header).
//
// clock_gettime is interposed: the real one (found with dlsym(RTLD_NEXT)) answers, and for
// CLOCK_REALTIME the offset read from FIELDLOG_LAB_CLOCK_OFFSET_FILE is added. The file is read
// again at most every 250 ms (by the monotonic clock), under a mutex; a missing or unreadable
// file keeps the last offset (0 at first). Other clocks, time() and gettimeofday() are left
// alone: the device reads its wall clock through clock_gettime only (FieldlogCore's WallClock).
#define _GNU_SOURCE
#include "LabClockShift.h"
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static clock_gettime_fn real_clock_gettime;
static const char *offset_file;
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static int64_t offset_seconds;
static int64_t read_at_ns = -1;

static int syscall_clock_gettime(clockid_t id, struct timespec *ts) { return (int)syscall(SYS_clock_gettime, id, ts); }

static void setup(void) {
    real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    if (real_clock_gettime == NULL) real_clock_gettime = syscall_clock_gettime;
    offset_file = getenv("FIELDLOG_LAB_CLOCK_OFFSET_FILE");
}

/// The offset in seconds, re-read from the file at most every 250 ms.
static int64_t current_offset(void) {
    struct timespec mono;
    if (real_clock_gettime(CLOCK_MONOTONIC, &mono) != 0) return offset_seconds;
    int64_t now_ns = (int64_t)mono.tv_sec * 1000000000 + mono.tv_nsec;
    pthread_mutex_lock(&mutex);
    if (read_at_ns < 0 || now_ns - read_at_ns > 250000000) {
        read_at_ns = now_ns;
        int fd = open(offset_file, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char text[32];
            ssize_t n = read(fd, text, sizeof text - 1);
            close(fd);
            if (n > 0) {
                text[n] = 0;
                const char *start = text[0] == '+' ? text + 1 : text;
                char *end = NULL;
                long long value = strtoll(start, &end, 10);
                if (end != start) offset_seconds = value;
            }
        }
    }
    int64_t offset = offset_seconds;
    pthread_mutex_unlock(&mutex);
    return offset;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    pthread_once(&once, setup);
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && id == CLOCK_REALTIME && offset_file != NULL) ts->tv_sec += (time_t)current_offset();
    return rc;
}
