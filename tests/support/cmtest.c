/*
 * Test support (see cmtest.h): everything a suite needs to run real
 * processes on loopback with bounded waits.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"
#include "runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

double cmt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

const char *cmt_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        fail_msg("environment variable %s is not set (run via ctest)", name);
    return v;
}

char *cmt_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    assert_non_null(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

char *cmt_fixture(const char *name)
{
    return cmt_path(cmt_env("CM_FIXTURES"), name);
}

char *cmt_source(const char *rel)
{
    return cmt_path(cmt_env("CM_SOURCE_DIR"), rel);
}

char *cmt_tempdir(void)
{
    char tmpl[] = "/tmp/cmtest.XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    chmod(path, 0700);
    return remove(path);
}

void cmt_rmtree(const char *path)
{
    if (path == NULL) return;
    chmod(path, 0700);
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void cmt_write_file(const char *path, const char *data)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, strlen(data), f), strlen(data));
    assert_int_equal(fclose(f), 0);
}

char *cmt_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
    }
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

/* Builds envp: the current environment plus the extra "K=V" entries (which
 * replace variables of the same name). */
static char **make_env(const char *const extra[])
{
    size_t n = 0, m = 0;
    while (environ[n])
        n++;
    while (extra && extra[m])
        m++;
    char **envp = calloc(n + m + 1, sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int replaced = 0;
        for (size_t j = 0; j < m; j++) {
            size_t kl = strcspn(extra[j], "=");
            if (strncmp(environ[i], extra[j], kl) == 0 && environ[i][kl] == '=') replaced = 1;
        }
        if (!replaced) envp[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++)
        envp[k++] = (char *)extra[j];
    envp[k] = NULL;
    return envp;
}

typedef struct buf {
    char *data;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

cmt_result_t cmt_run(const char *const argv[], const char *const env[], int timeout_ms)
{
    return cmt_run_in(NULL, argv, env, timeout_ms);
}

cmt_result_t cmt_run_in(const char *cwd, const char *const argv[], const char *const env[],
                        int timeout_ms)
{
    cmt_result_t r = {0};
    int out[2], err[2];
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    assert_int_equal(pipe2(err, O_CLOEXEC), 0);
    char **envp = make_env(env);
    double t0 = cmt_now_ms();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        if (cwd != NULL && chdir(cwd) != 0) {
            fprintf(stderr, "chdir %s: %s\n", cwd, strerror(errno));
            _exit(126);
        }
        execve(argv[0], (char *const *)argv, envp);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    free(envp);
    close(out[1]);
    close(err[1]);
    buf_t bo = {0}, be = {0};
    buf_add(&bo, "", 0);
    buf_add(&be, "", 0);
    struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_fds = 2, timed_out = 0;
    while (open_fds > 0) {
        int left = timeout_ms - (int)(cmt_now_ms() - t0);
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int n = poll(fds, 2, left);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char chunk[8192];
            ssize_t got = read(fds[i].fd, chunk, sizeof chunk);
            if (got <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            } else {
                buf_add(i == 0 ? &bo : &be, chunk, (size_t)got);
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0) close(fds[i].fd);
    int status = 0;
    if (timed_out) {
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
        r.code = -1;
    } else {
        /* Output closed; the child may still be exiting: bounded wait. */
        for (;;) {
            pid_t w = waitpid(pid, &status, WNOHANG);
            if (w == pid) break;
            if (cmt_now_ms() - t0 > timeout_ms) {
                kill(-pid, SIGKILL);
                waitpid(pid, &status, 0);
                timed_out = 1;
                break;
            }
            usleep(1000);
        }
        r.code = timed_out ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    r.out = bo.data;
    r.err = be.data;
    r.ms = cmt_now_ms() - t0;
    /* Every run of the binary closes its event loop empty (src/runtime.c
     * warns otherwise). */
    if (strstr(r.err, "event loop closed busy") != NULL)
        fail_msg("%s left its event loop busy:\n%s", argv[0], r.err);
    return r;
}

void cmt_result_free(cmt_result_t *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

cmt_result_t cmt_cm(const char *root, const char *const env[], int timeout_ms, ...)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = cmt_env("CM_BINARY");
    if (root != NULL) {
        argv[n++] = "--root";
        argv[n++] = root;
    }
    va_list ap;
    va_start(ap, timeout_ms);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 62)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return cmt_run(argv, env, timeout_ms);
}

pid_t cmt_spawn(const char *const argv[], const char *const env[], const char *out_path)
{
    char **envp = make_env(env);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        execve(argv[0], (char *const *)argv, envp);
        _exit(127);
    }
    setpgid(pid, pid);
    free(envp);
    return pid;
}

int cmt_wait_child(pid_t pid, int timeout_ms)
{
    double t0 = cmt_now_ms();
    int status = 0;
    while (cmt_now_ms() - t0 < timeout_ms) {
        if (waitpid(pid, &status, WNOHANG) == pid) return status;
        usleep(5000);
    }
    return -1;
}

void cmt_kill_group(pid_t pgid)
{
    if (pgid <= 1) return;
    kill(-pgid, SIGKILL);
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < 5000) {
        pid_t w = waitpid(pgid, NULL, WNOHANG);
        if (w == pgid || (w < 0 && errno == ECHILD)) break;
        usleep(1000);
    }
}

int cmt_wait_file(const char *path, int timeout_ms)
{
    double t0 = cmt_now_ms();
    struct stat st;
    while (cmt_now_ms() - t0 < timeout_ms) {
        if (stat(path, &st) == 0 && st.st_size > 0) return 0;
        usleep(2000);
    }
    return -1;
}

/* Can /proc/PID/environ be read, with something in it? */
static int environ_ready(pid_t pid)
{
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n > 0;
}

int cmt_wait_exec(pid_t pid, const char *path, int timeout_ms)
{
    char link[64], target[4096], want[4096];
    snprintf(link, sizeof link, "/proc/%d/exe", (int)pid);
    if (realpath(path, want) == NULL) snprintf(want, sizeof want, "%s", path); /* /bin -> usr/bin */
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = '\0';
            /* exe changes early in execve, the environment is in place only
             * once the new image is set up: wait for both. */
            if (strcmp(target, want) == 0 && environ_ready(pid)) return 0;
        }
        usleep(1000);
    }
    return -1;
}

int cmt_wait_fd_to(pid_t pid, const char *target, int timeout_ms)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        for (int fd = 0; fd < 256; fd++) {
            char link[96], got[256];
            snprintf(link, sizeof link, "%s/%d", dir, fd);
            ssize_t n = readlink(link, got, sizeof got - 1);
            if (n <= 0) continue;
            got[n] = '\0';
            if (strcmp(got, target) == 0) return 0;
        }
        usleep(2000);
    }
    return -1;
}

static int try_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

int cmt_wait_port(int port, int timeout_ms)
{
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        if (try_connect(port)) return 0;
        usleep(2000);
    }
    return -1;
}

/* The low end of the kernel's ephemeral port range (bind to port 0 and
 * outgoing connections take ports from there up). */
static int ephemeral_low(void)
{
    int low = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &low) != 1) low = 32768;
        fclose(f);
    }
    return low;
}

int cmt_free_port(void)
{
    /* Below the ephemeral range: a port handed out here can never be the
     * one a fixture's bind to port 0 or an outgoing connection gets later.
     * Each call takes the next port from a start that differs per process,
     * so a suite's own ports never repeat; bind proves the port free now. */
    static int next = -1;
    int high = ephemeral_low() - 1, low = high - 12000;
    if (low < 1024) low = 1024;
    if (next < 0) next = low + (int)(((unsigned)getpid() * 2654435761u) % (unsigned)(high - low));
    for (int tries = 0; tries <= high - low; tries++) {
        int port = next;
        next = next >= high ? low : next + 1;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        if (fd >= 0) close(fd);
        if (ok) return port;
    }
    fail_msg("no free loopback port below %d", high + 1);
    return -1;
}

/* What running a trivial program costs here now (fork, exec /bin/true,
 * wait): the median of five, measured at each call, since the load of a
 * shared machine changes from one moment to the next. */
static double floor_ms(void)
{
    double t[5];
    for (int i = 0; i < 5; i++) {
        double t0 = cmt_now_ms();
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        if (pid > 0) waitpid(pid, NULL, 0);
        t[i] = cmt_now_ms() - t0;
    }
    for (int i = 1; i < 5; i++) /* insertion sort, five values */
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    return t[2];
}

double cmt_slack(void)
{
    double s = floor_ms() / CMT_FLOOR_NOMINAL_MS;
    return s > 1 ? s : 1;
}

double cmt_bound_ms(double nominal_ms)
{
    return nominal_ms * cmt_slack();
}

int cmt_lua(const char *code)
{
    /* Measured before the loop exists: a first measurement takes a while,
     * and the loop's idea of "now" is taken when it is created. */
    double slack = cmt_slack();
    cm_runtime_t *rt = cm_runtime_new();
    assert_non_null(rt);
    lua_State *L = cm_runtime_lua(rt);
    lua_pushnumber(L, slack); /* [slack] */
    lua_setglobal(L, "SLACK");
    int rc;
    /* User code runs in a child of chat-manager, not of this test binary. */
    if (luaL_dostring(L, "require('usercode').exe = os.getenv('CM_BINARY')") != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    if (luaL_loadbufferx(L, code, strlen(code), "=test", "t") != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        rc = 1;
    } else {
        rc = cm_runtime_run(rt, 0);
    }
    assert_int_equal(cm_runtime_free(rt), 0); /* the loop closed empty */
    return rc;
}

int cmt_pid_alive(int pid)
{
    if (pid <= 1) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *paren = strrchr(buf, ')'); /* the name may hold spaces and parens */
    return paren != NULL && paren[1] == ' ' && paren[2] != 'Z';
}

int cmt_wait_dead(int pid, int timeout_ms)
{
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        if (!cmt_pid_alive(pid)) return 1;
        usleep(5000);
    }
    return 0;
}

/* A TCP socket bound to 127.0.0.1 on a kernel-chosen port, listening when
 * backlog >= 0.  No SO_REUSEADDR: a bound socket then keeps others off. */
int cmt_bound_loopback(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    if (backlog >= 0) assert_int_equal(listen(fd, backlog), 0);
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

/* A loopback port where a TCP connect never completes: a listener with a
 * backlog of 0 that nobody accepts from, filled until Linux starts dropping
 * SYNs (it does so when the accept queue is full).  Returns the port, with
 * the sockets to close in fds, or -1 when this kernel does not behave so. */
int cmt_blackhole_port(int *fds, int *nfds)
{
    int port = 0;
    *nfds = 0;
    fds[(*nfds)++] = cmt_bound_loopback(0, &port);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    while (*nfds < CMT_BLACKHOLE_MAX_FDS) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(c >= 0);
        fds[(*nfds)++] = c;
        if (connect(c, (struct sockaddr *)&a, sizeof a) == 0) continue;
        if (errno != EINPROGRESS) break;
        struct pollfd p = {.fd = c, .events = POLLOUT};
        if (poll(&p, 1, 150) == 0) return port; /* this SYN was dropped: full */
    }
    for (int i = 0; i < *nfds; i++)
        close(fds[i]);
    *nfds = 0;
    return -1;
}

void cmt_print_long(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    vfprintf(stderr, fmt, ap);
    fflush(stderr);
    va_end(ap);
}
