/*
 * relink bench: the smallest app that can time a deploy's signal.
 *
 *   usage: app -c CFGFILE        (CFGFILE has a line "stamp=PATH")
 *
 * On SIGHUP the handler reads CLOCK_MONOTONIC and appends "<nanoseconds>\n"
 * to PATH, so the time is taken when the kernel delivers the signal, not
 * when some event loop gets round to it. clock_gettime() and write() are
 * both async-signal-safe (POSIX.1-2008). Node's process.hrtime reads the
 * same clock, so the bench subtracts the two directly. SIGTERM ends it.
 *
 * Linux only, libc only. Build: cc -O2 -Wall -o stamp stamp.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int stamp_fd = -1;

static void on_hup(int sig)
{
    (void)sig;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long ns = (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
    /* snprintf is not async-signal-safe: format by hand, right to left. */
    char buf[32];
    int i = (int)sizeof buf;
    buf[--i] = '\n';
    do {
        buf[--i] = (char)('0' + ns % 10);
        ns /= 10;
    } while (ns > 0);
    ssize_t w = write(stamp_fd, buf + i, sizeof buf - (size_t)i);
    (void)w;
}

int main(int argc, char **argv)
{
    const char *cfg = NULL;
    for (int i = 1; i < argc - 1; i++)
        if (!strcmp(argv[i], "-c")) cfg = argv[i + 1];
    if (!cfg) {
        fprintf(stderr, "usage: %s -c CFGFILE\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(cfg, "re");
    if (!f) {
        perror(cfg);
        return 2;
    }
    char line[4096], path[4096] = "";
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!strncmp(line, "stamp=", 6)) snprintf(path, sizeof path, "%s", line + 6);
    }
    fclose(f);
    if (!path[0]) {
        fprintf(stderr, "%s: no stamp= line\n", cfg);
        return 2;
    }
    stamp_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (stamp_fd < 0) {
        perror(path);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
    fprintf(stderr, "stamp: pid %d, appending SIGHUP times to %s\n", (int)getpid(), path);
    for (;;) pause();
}
