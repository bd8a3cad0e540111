// Moves the wall clock (CLOCK_REALTIME and its kin) of a process loaded with it (LD_PRELOAD)
// by a number of seconds; monotonic clocks, and so every timeout and sleep, are untouched.
// The shift is the 8-byte integer in the file TIME_SHIFT_FILE, mapped shared: the one who
// writes it moves the clocks of the tests, the processes they start and the PostgreSQL
// server at once (tests/at_hour.py). Without the file, TIME_SHIFT_SECONDS, or no shift.
// libfaketime does more and was tried first: with monotonic clocks left alone, its
// clock_nanosleep fails (EINVAL, Python's time.sleep), and with them moved, Python's
// Event.wait (sem_clockwait, which it does not wrap) waits out the whole shift.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long fixed;
static volatile long *shared;
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_gettimeofday)(struct timeval *, void *);

__attribute__((constructor)) static void init(void) {
    if (real_clock_gettime) return;
    const char *s = getenv("TIME_SHIFT_SECONDS");
    fixed = s ? atol(s) : 0;
    const char *f = getenv("TIME_SHIFT_FILE");
    if (f) {
        int fd = open(f, O_RDONLY);
        if (fd >= 0) {
            void *p = mmap(NULL, 8, PROT_READ, MAP_SHARED, fd, 0);
            if (p != MAP_FAILED) shared = p;
            close(fd);
        }
    }
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_gettimeofday = dlsym(RTLD_NEXT, "gettimeofday");
}

static long shift(void) { return shared ? *shared : fixed; }

static int wall(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) init();
    int r = real_clock_gettime(id, ts);
    if (r == 0 && wall(id)) ts->tv_sec += shift();
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    if (!real_gettimeofday) init();
    int r = real_gettimeofday(tv, tz);
    if (r == 0 && tv) tv->tv_sec += shift();
    return r;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
