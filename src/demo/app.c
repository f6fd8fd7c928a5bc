/*
 * relink demo/test app: a tiny single-threaded HTTP server.
 *
 *   usage: app -c CFGFILE
 *
 * The same binary is copied to several release files (release/app.1.0, ...);
 * it tells them apart by the basename of readlink("/proc/self/exe"). Every
 * request gets one JSON line describing which release/pid/generation served it.
 *
 * SIGHUP, mode=reexec: fork + exec argv[0] (normally ./app.bin, so the exec
 *   follows the relinked symlink), handing the listening socket over in
 *   RELINK_FIXTURE_FD. The new process SIGTERMs the old one once it is ready.
 * SIGHUP, mode=inplace: re-read the config and update `message` (PID stays).
 *
 * Config (key=value lines): port (required), mode=reexec|inplace, message,
 * workers=N (forked children with the same exe, like nginx's workers),
 * pidfile=PATH, and for failure tests: fail_start=1 (exit 4 at once),
 * exit_after_ms=N (exit 3 N ms after start), unhealthy=1 (/healthz -> 503),
 * unhealthy_after_ms=N (/healthz -> 503 from N ms after start or an in-place
 * reload: healthy at first, then not, like new workers that die or an app
 * that wedges). An in-place reload takes message and both health keys.
 *
 * Linux only, libc only. Build: cc -O2 -Wall -Wextra -o app app.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG_MAX 2048
#define REQ_MAX 8192

struct config {
    int port;                 /* required */
    int inplace;              /* 0 = reexec (default), 1 = inplace */
    char message[MSG_MAX];
    int workers;
    long exit_after_ms;       /* -1 = never */
    int fail_start;
    int unhealthy;            /* 1 = /healthz answers 503 (a release that never becomes healthy) */
    long unhealthy_after_ms;  /* -1 = never; else /healthz answers 503 this long after (re)load */
    char pidfile[PATH_MAX];
};

static volatile sig_atomic_t got_hup, got_term, got_chld;
/* When the config was last (re)loaded (ms, CLOCK_MONOTONIC): unhealthy_after_ms counts from here. */
static long long loaded_at;
static int sig_pipe[2] = {-1, -1};
static char release[NAME_MAX + 1] = "unknown";

/* One line to stderr, flushed at once (stderr may be a pipe or a file). */
static void __attribute__((format(printf, 1, 2))) logmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("app: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
}

/* Handlers only set a flag and poke the self-pipe so poll() wakes up. */
static void on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGHUP) got_hup = 1;
    else if (sig == SIGCHLD) got_chld = 1;
    else got_term = 1;
    if (sig_pipe[1] >= 0) {
        ssize_t r = write(sig_pipe[1], "x", 1);
        (void)r; /* pipe full is fine: a wakeup is already pending */
    }
    errno = saved;
}

static void set_handler(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* Returns 0 on success, -1 if the file can't be opened or port is missing. */
static int read_config(const char *path, struct config *c)
{
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    memset(c, 0, sizeof *c);
    c->port = -1;
    c->exit_after_ms = -1;
    c->unhealthy_after_ms = -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0 || line[0] == '#') continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        const char *k = line, *v = eq + 1;
        if (!strcmp(k, "port")) c->port = atoi(v);
        else if (!strcmp(k, "mode")) c->inplace = !strcmp(v, "inplace");
        else if (!strcmp(k, "message")) snprintf(c->message, sizeof c->message, "%s", v);
        else if (!strcmp(k, "workers")) c->workers = atoi(v);
        else if (!strcmp(k, "exit_after_ms")) c->exit_after_ms = atol(v);
        else if (!strcmp(k, "fail_start")) c->fail_start = atoi(v) != 0;
        else if (!strcmp(k, "unhealthy")) c->unhealthy = atoi(v) != 0;
        else if (!strcmp(k, "unhealthy_after_ms")) c->unhealthy_after_ms = atol(v);
        else if (!strcmp(k, "pidfile")) snprintf(c->pidfile, sizeof c->pidfile, "%s", v);
    }
    free(line);
    fclose(f);
    return c->port > 0 && c->port < 65536 ? 0 : -1;
}

static void detect_release(void)
{
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return;
    buf[n] = '\0';
    const char *suffix = " (deleted)"; /* the kernel appends this once the file is unlinked */
    size_t len = strlen(buf), sl = strlen(suffix);
    if (len > sl && !strcmp(buf + len - sl, suffix)) buf[len - sl] = '\0';
    const char *base = strrchr(buf, '/');
    snprintf(release, sizeof release, "%s", base ? base + 1 : buf);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Appends s to out as JSON string contents; out must hold 6*strlen(s)+1. */
static char *json_escape(char *out, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { *out++ = '\\'; *out++ = (char)ch; }
        else if (ch == '\n') { *out++ = '\\'; *out++ = 'n'; }
        else if (ch == '\r') { *out++ = '\\'; *out++ = 'r'; }
        else if (ch == '\t') { *out++ = '\\'; *out++ = 't'; }
        else if (ch < 0x20 || ch == 0x7f) out += sprintf(out, "\\u%04x", ch);
        else *out++ = (char)ch;
    }
    *out = '\0';
    return out;
}

static void write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* EAGAIN here means SO_SNDTIMEO expired: give up */
        p += w;
        len -= (size_t)w;
    }
}

static void serve(int fd, const struct config *c, int gen)
{
    /* The listener is non-blocking but accepted sockets are blocking; the
       timeouts bound how long one slow client can stall this single thread. */
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    char req[REQ_MAX + 1];
    req[0] = '\0';
    size_t got = 0;
    while (got < REQ_MAX) {
        ssize_t r = recv(fd, req + got, REQ_MAX - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break; /* EOF, error or timeout: answer anyway */
        got += (size_t)r;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n")) break;
    }
    /* Every path gets the same answer; /healthz says 503 when unhealthy=1, or
       once unhealthy_after_ms has passed since the config was loaded. */
    int wedged = c->unhealthy_after_ms >= 0 && now_ms() - loaded_at >= c->unhealthy_after_ms;
    int sick = (c->unhealthy || wedged) && strncmp(req, "GET /healthz", 12) == 0;
    static char rel_esc[6 * sizeof release + 1], msg_esc[6 * MSG_MAX + 1];
    static char body[sizeof rel_esc + sizeof msg_esc + 256], resp[sizeof body + 256];
    json_escape(rel_esc, release);
    json_escape(msg_esc, c->message);
    int blen = snprintf(body, sizeof body,
        "{\"release\":\"%s\",\"message\":\"%s\",\"pid\":%d,\"mode\":\"%s\",\"generation\":%d}\n",
        rel_esc, msg_esc, (int)getpid(), c->inplace ? "inplace" : "reexec", gen);
    int rlen = snprintf(resp, sizeof resp,
        "HTTP/1.1 %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
        "Content-Length: %d\r\n\r\n%s", sick ? "503 Service Unavailable" : "200 OK", blen, body);
    write_all(fd, resp, (size_t)rlen);
}

static int open_listener(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 512) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Accepts an inherited fd only if it really is a listening socket. */
static int inherited_listener(const char *s)
{
    if (!s || !*s) return -1;
    int fd = atoi(s), on = 0;
    socklen_t len = sizeof on;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) < 0 || !on) return -1;
    return fd;
}

static void write_pidfile(const char *path)
{
    char tmp[PATH_MAX + 32], buf[32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) { logmsg("pidfile %s: %s", tmp, strerror(errno)); return; }
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    ssize_t w = write(fd, buf, (size_t)n);
    close(fd);
    /* rename() is atomic: readers never see an empty or half-written pidfile. */
    if (w != n || rename(tmp, path) < 0) {
        logmsg("pidfile %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

static void spawn_workers(int n, int listener)
{
    pid_t main_pid = getpid();
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) { logmsg("fork worker: %s", strerror(errno)); return; }
        if (p > 0) continue;
        /* Worker: default signal actions, no sockets; dies with the main process.
           PDEATHSIG covers the future; the getppid check covers the race where
           the main process died before prctl() ran. */
        set_handler(SIGTERM, SIG_DFL);
        set_handler(SIGINT, SIG_DFL);
        set_handler(SIGCHLD, SIG_DFL);
        set_handler(SIGHUP, SIG_IGN); /* only the main process reloads */
        close(listener);
        close(sig_pipe[0]);
        close(sig_pipe[1]);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != main_pid) _exit(0);
        for (;;) pause();
    }
}

int main(int argc, char **argv)
{
    long long start = now_ms();
    loaded_at = start;
    const char *cfg_path = NULL;
    for (int i = 1; i < argc - 1; i++)
        if (!strcmp(argv[i], "-c")) cfg_path = argv[i + 1];
    if (!cfg_path) {
        fprintf(stderr, "usage: %s -c CFGFILE\n", argv[0]);
        return 2;
    }

    /* Install handlers first: a SIGHUP/SIGTERM arriving before this would use
       the default action (terminate). */
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) { perror("app: pipe2"); return 1; }
    set_handler(SIGHUP, on_signal);
    set_handler(SIGTERM, on_signal);
    set_handler(SIGINT, on_signal);
    set_handler(SIGCHLD, on_signal);
    set_handler(SIGPIPE, SIG_IGN);

    detect_release();
    const char *gen_env = getenv("RELINK_FIXTURE_GEN");
    int gen = gen_env ? atoi(gen_env) : 0;

    struct config cfg;
    if (read_config(cfg_path, &cfg) < 0) {
        logmsg("release=%s: cannot read %s or port= missing/invalid", release, cfg_path);
        return 2;
    }
    if (cfg.fail_start) {
        logmsg("release=%s pid=%d: fail_start=1, exiting with status 4", release, (int)getpid());
        exit(4);
    }

    int lfd = inherited_listener(getenv("RELINK_FIXTURE_FD"));
    const char *parent_env = getenv("RELINK_FIXTURE_PARENT");
    if (lfd < 0) {
        gen = 0; /* not a handoff (or a stale env): fresh start */
        lfd = open_listener(cfg.port);
        if (lfd < 0) {
            logmsg("listen on 127.0.0.1:%d: %s", cfg.port, strerror(errno));
            return 1;
        }
    }
    /* Non-blocking: during a handoff both processes poll the same socket and
       one of them may win the accept(); the loser must get EAGAIN, not hang. */
    fcntl(lfd, F_SETFD, FD_CLOEXEC);
    fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);

    spawn_workers(cfg.workers, lfd);
    if (cfg.pidfile[0]) write_pidfile(cfg.pidfile);

    struct sockaddr_in bound;
    socklen_t blen = sizeof bound;
    int port = cfg.port;
    if (getsockname(lfd, (struct sockaddr *)&bound, &blen) == 0) port = ntohs(bound.sin_port);
    logmsg("release=%s pid=%d gen=%d listening on 127.0.0.1:%d", release, (int)getpid(), gen, port);

    /* Handoff: we are ready to accept, so tell the old process to go. Only if
       it is still our parent, so a stale env can never kill an unrelated pid. */
    if (parent_env && gen > 0) {
        pid_t parent = (pid_t)atoi(parent_env);
        if (parent > 1 && parent == getppid()) {
            kill(parent, SIGTERM);
            logmsg("took over from pid=%d", (int)parent);
        }
    }
    unsetenv("RELINK_FIXTURE_FD");
    unsetenv("RELINK_FIXTURE_GEN");
    unsetenv("RELINK_FIXTURE_PARENT");

    long long deadline = cfg.exit_after_ms >= 0 ? start + cfg.exit_after_ms : -1;
    pid_t handoff_pid = 0;

    for (;;) {
        if (got_term) {
            /* During a handoff this SIGTERM comes from the new process, which
               already accepts on the same socket: anything still queued in the
               kernel backlog is served by it, so closing our copy drops nothing. */
            close(lfd);
            logmsg("pid=%d: SIGTERM%s, exiting", (int)getpid(), handoff_pid ? " from new process" : "");
            return 0;
        }
        if (got_chld) {
            got_chld = 0;
            int st;
            pid_t p;
            while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                if (p == handoff_pid) {
                    handoff_pid = 0;
                    logmsg("pid=%d: new process %d died (status %d) before taking over; still serving release=%s",
                          (int)getpid(), (int)p, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), release);
                } else {
                    logmsg("pid=%d: worker %d exited", (int)getpid(), (int)p);
                }
            }
        }
        if (got_hup) {
            got_hup = 0;
            if (handoff_pid) {
                logmsg("pid=%d: SIGHUP ignored, handoff to %d in progress", (int)getpid(), (int)handoff_pid);
            } else if (cfg.inplace) {
                struct config nc;
                if (read_config(cfg_path, &nc) < 0) {
                    logmsg("pid=%d: reload failed, cannot read %s; keeping old config", (int)getpid(), cfg_path);
                } else {
                    memcpy(cfg.message, nc.message, sizeof cfg.message); /* port changes ignored */
                    cfg.unhealthy = nc.unhealthy;
                    cfg.unhealthy_after_ms = nc.unhealthy_after_ms;
                    loaded_at = now_ms();
                    logmsg("pid=%d: reloaded %s in place, message=%s", (int)getpid(), cfg_path, cfg.message);
                }
            } else {
                /* The listening socket itself is passed to the new process, so the
                   port is never unbound: connections arriving during the handoff
                   queue in the shared backlog instead of being refused. */
                pid_t p = fork();
                if (p == 0) {
                    char buf[32];
                    fcntl(lfd, F_SETFD, 0);
                    snprintf(buf, sizeof buf, "%d", lfd);
                    setenv("RELINK_FIXTURE_FD", buf, 1);
                    snprintf(buf, sizeof buf, "%d", gen + 1);
                    setenv("RELINK_FIXTURE_GEN", buf, 1);
                    snprintf(buf, sizeof buf, "%d", (int)getppid());
                    setenv("RELINK_FIXTURE_PARENT", buf, 1);
                    execv(argv[0], argv); /* argv[0] is e.g. ./app.bin: follows the new symlink */
                    _exit(127);
                }
                if (p < 0) logmsg("pid=%d: fork for re-exec: %s", (int)getpid(), strerror(errno));
                else {
                    handoff_pid = p;
                    logmsg("pid=%d: SIGHUP, re-executing %s as pid=%d (gen=%d)", (int)getpid(), argv[0], (int)p, gen + 1);
                }
            }
        }

        int timeout = -1;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            if (left <= 0) {
                logmsg("pid=%d: exit_after_ms=%ld reached, exiting with status 3", (int)getpid(), cfg.exit_after_ms);
                exit(3);
            }
            timeout = left > INT_MAX ? INT_MAX : (int)left;
        }

        struct pollfd pf[2] = {{lfd, POLLIN, 0}, {sig_pipe[0], POLLIN, 0}};
        int n = poll(pf, 2, timeout);
        if (n < 0 && errno != EINTR) { logmsg("poll: %s", strerror(errno)); return 1; }
        if (n <= 0) continue;
        if (pf[1].revents) {
            char drain[64];
            while (read(sig_pipe[0], drain, sizeof drain) > 0) {}
        }
        if (pf[0].revents & POLLIN) {
            /* Bounded batch so pending signals are looked at regularly. */
            for (int i = 0; i < 64 && !got_term; i++) {
                int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0) {
                    if (errno == EINTR || errno == ECONNABORTED) continue;
                    break; /* EAGAIN: queue empty (or the other process took it) */
                }
                serve(c, &cfg, gen);
                close(c);
            }
        }
    }
}
