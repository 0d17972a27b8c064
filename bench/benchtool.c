/*
 * benchtool: the small measuring helpers behind bench/run.
 *
 *   benchtool start-gap PORT TIMEOUT_MS -- CMD ARGS...
 *       Runs CMD (stdout/stderr to /dev/null) and, while it runs, connects
 *       to 127.0.0.1:PORT every 0.2 ms until a connection succeeds.  Prints
 *       "TOTAL_MS GAP_MS RC": how long CMD ran, and how long after the first
 *       successful connection (the app's first answer) CMD returned.  GAP_MS
 *       is "nan" when the port never answered while CMD ran.
 *
 *   benchtool answer PORT TIMEOUT_MS -- CMD ARGS...
 *       Like start-gap, but keeps polling after CMD returned until the port
 *       answers.  Prints "TOTAL_MS ANSWER_MS RC": how long CMD ran and how
 *       long after CMD began the port first answered (TOTAL < ANSWER: the
 *       command returned before the app answered).
 *
 *   benchtool crash PID PORT TIMEOUT_MS
 *       Sends SIGKILL to PID (the app, which listens on PORT), waits for its
 *       exit on a pidfd, then connects to PORT every 0.2 ms.  Prints
 *       "ANSWER_MS": from the kill to the first answer of the new app.
 *
 *   benchtool stop-gap PID TIMEOUT_MS -- CMD ARGS...
 *       Holds a pidfd on PID (the app), runs CMD and polls both pidfds.
 *       Prints "TOTAL_MS GAP_MS RC": how long CMD ran, and how long after
 *       PID exited CMD returned ("nan" when PID outlived CMD).
 *
 *   benchtool hf FILE [INDEX...]
 *       Pools the "times" of the given results (default: all) of a hyperfine
 *       --export-json file and prints "MEDIAN MIN MAX N" in milliseconds.
 *
 *   benchtool free-port
 *       Prints a TCP port that is free on 127.0.0.1 right now.
 *
 *   benchtool curl-load
 *       Loads libcurl the way chat-manager does (dlopen "libcurl.so.4", then
 *       curl_global_init) and exits: the floor under any chat-manager
 *       command that makes an HTTP request.
 *
 *   benchtool stats
 *       Reads numbers (one per whitespace-separated token) from stdin and
 *       prints "MEDIAN MIN MAX N" ("nan" tokens are skipped).
 *
 * While measuring a gap the helper asks for SCHED_FIFO (best effort, with
 * SCHED_RESET_ON_FORK so the measured command runs with the ordinary
 * policy): on a busy machine a starved poller would see the app's answer or
 * exit late and report a gap that is too small.
 *
 * Every clock is CLOCK_MONOTONIC.  Every wait is bounded by TIMEOUT_MS; a
 * command that outlives it is killed (its process group: it runs in one of
 * its own) and the helper exits 1.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void die(const char *what)
{
    fprintf(stderr, "benchtool: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Forks CMD in its own process group with stdout/stderr on /dev/null. */
static pid_t spawn(char **argv)
{
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        setpgid(0, 0);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
            if (null > 2) close(null);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    setpgid(pid, pid);
    return pid;
}

/* Reaps CMD and returns its exit code (128+signal when killed). */
static int reap(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

static void give_up(pid_t pid, const char *why)
{
    fprintf(stderr, "benchtool: %s; killing the command (pgid %d)\n", why, (int)pid);
    kill(-pid, SIGKILL);
    reap(pid);
    exit(1);
}

/* One blocking connect to 127.0.0.1:port (loopback: refused or accepted at
 * once; bounded by a send timeout anyway).  1 when it succeeded. */
static int try_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static void print_ms(double v)
{
    if (isnan(v))
        printf("nan");
    else
        printf("%.3f", v);
}

/* Runs CMD and polls PORT while it runs (with until_answer, also after it
 * returned, until the port answers). */
static int start_gap(int port, double timeout_ms, char **argv, int until_answer)
{
    double t0 = now_ms();
    pid_t pid = spawn(argv);
    int pfd = pidfd_open(pid);
    if (pfd < 0) die("pidfd_open(command)");
    double first = NAN, end = NAN;
    const struct timespec tick = {.tv_sec = 0, .tv_nsec = 200000}; /* 0.2 ms */
    for (;;) {
        if (isnan(first) && try_connect(port)) first = now_ms();
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        int n;
        if (isnan(first)) {
            n = ppoll(&p, 1, &tick, NULL);
        } else {
            double left = timeout_ms - (now_ms() - t0);
            struct timespec ts = {.tv_sec = left > 0 ? (time_t)(left / 1e3) : 0,
                                  .tv_nsec = left > 0 ? (long)(fmod(left, 1e3) * 1e6) : 0};
            n = ppoll(&p, 1, &ts, NULL);
        }
        if (n > 0) {
            end = now_ms();
            break;
        }
        if (n < 0 && errno != EINTR) die("ppoll");
        if (now_ms() - t0 > timeout_ms) give_up(pid, "the command did not finish in time");
    }
    int rc = reap(pid);
    close(pfd);
    while (until_answer && isnan(first) && now_ms() - t0 < timeout_ms) {
        const struct timespec tick = {.tv_sec = 0, .tv_nsec = 200000};
        if (try_connect(port))
            first = now_ms();
        else
            nanosleep(&tick, NULL);
    }
    print_ms(end - t0);
    putchar(' ');
    if (until_answer)
        print_ms(isnan(first) ? NAN : first - t0);
    else
        print_ms(isnan(first) ? NAN : end - first);
    printf(" %d\n", rc);
    return 0;
}

static int crash(pid_t app, int port, double timeout_ms)
{
    int afd = pidfd_open(app);
    if (afd < 0) die("pidfd_open(app)");
    double t0 = now_ms();
    if (kill(app, SIGKILL) != 0) die("kill");
    struct pollfd p = {.fd = afd, .events = POLLIN};
    int n;
    while ((n = poll(&p, 1, (int)timeout_ms)) < 0 && errno == EINTR)
        ;
    close(afd);
    if (n <= 0) {
        fprintf(stderr, "benchtool: pid %d did not exit after SIGKILL\n", (int)app);
        return 1;
    }
    const struct timespec tick = {.tv_sec = 0, .tv_nsec = 200000};
    double first = NAN;
    while (isnan(first) && now_ms() - t0 < timeout_ms) {
        if (try_connect(port))
            first = now_ms();
        else
            nanosleep(&tick, NULL);
    }
    print_ms(isnan(first) ? NAN : first - t0);
    putchar('\n');
    return 0;
}

static int stop_gap(pid_t app, double timeout_ms, char **argv)
{
    int afd = pidfd_open(app);
    if (afd < 0) die("pidfd_open(app)");
    double t0 = now_ms();
    pid_t pid = spawn(argv);
    int cfd = pidfd_open(pid);
    if (cfd < 0) die("pidfd_open(command)");
    double app_gone = NAN, end = NAN;
    while (isnan(end)) {
        struct pollfd p[2] = {{.fd = cfd, .events = POLLIN}, {.fd = afd, .events = POLLIN}};
        double left = timeout_ms - (now_ms() - t0);
        if (left <= 0) give_up(pid, "the command did not finish in time");
        struct timespec ts = {.tv_sec = (time_t)(left / 1e3),
                              .tv_nsec = (long)(fmod(left, 1e3) * 1e6)};
        int n = ppoll(p, isnan(app_gone) ? 2 : 1, &ts, NULL);
        if (n < 0 && errno != EINTR) die("ppoll");
        if (n <= 0) continue;
        double t = now_ms();
        if (isnan(app_gone) && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) app_gone = t;
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) end = t;
    }
    int rc = reap(pid);
    close(cfd);
    close(afd);
    print_ms(end - t0);
    putchar(' ');
    print_ms(isnan(app_gone) ? NAN : end - app_gone);
    printf(" %d\n", rc);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_stats(double *v, size_t n)
{
    if (n == 0) {
        printf("nan nan nan 0\n");
        return;
    }
    qsort(v, n, sizeof *v, cmp_double);
    double median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    printf("%.3f %.3f %.3f %zu\n", median, v[0], v[n - 1], n);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) die(path);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len < 2) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static int hf(const char *path, int nidx, char **idx)
{
    char *text = slurp(path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *results = cJSON_GetObjectItemCaseSensitive(root, "results");
    if (!cJSON_IsArray(results)) {
        fprintf(stderr, "benchtool: %s: not a hyperfine JSON export\n", path);
        return 1;
    }
    size_t cap = 64, n = 0;
    double *v = malloc(cap * sizeof *v);
    int count = cJSON_GetArraySize(results);
    for (int r = 0; r < count; r++) {
        int wanted = nidx == 0;
        for (int i = 0; i < nidx; i++)
            wanted |= atoi(idx[i]) == r;
        if (!wanted) continue;
        cJSON *times = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(results, r), "times");
        cJSON *t;
        cJSON_ArrayForEach(t, times)
        {
            if (!cJSON_IsNumber(t)) continue;
            if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
            v[n++] = t->valuedouble * 1e3;
        }
    }
    print_stats(v, n);
    free(v);
    cJSON_Delete(root);
    return 0;
}

static int stats(void)
{
    size_t cap = 64, n = 0;
    double *v = malloc(cap * sizeof *v);
    char tok[64];
    while (scanf("%63s", tok) == 1) {
        char *end;
        double d = strtod(tok, &end);
        if (*end != '\0' || isnan(d)) continue;
        if (n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[n++] = d;
    }
    print_stats(v, n);
    free(v);
    return 0;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("bind");
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0) die("getsockname");
    printf("%d\n", ntohs(sa.sin_port));
    close(fd);
    return 0;
}

/* Best effort: a real-time poller, children back to SCHED_OTHER. */
static void prefer_cpu(void)
{
#ifdef SCHED_RESET_ON_FORK
    struct sched_param sp = {.sched_priority = 10};
    if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) != 0)
        fprintf(stderr, "benchtool: no SCHED_FIFO (%s); gaps may read low on a busy machine\n",
                strerror(errno));
#endif
}

/* As src/curl_api.c loads it: no request, just the load and the init. */
static int curl_load(void)
{
    void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "benchtool: %s\n", dlerror());
        return 1;
    }
    CURLcode (*global_init)(long);
    void *sym = dlsym(lib, "curl_global_init");
    if (sym == NULL) return 1;
    memcpy(&global_init, &sym, sizeof sym);
    return global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: benchtool start-gap PORT TIMEOUT_MS -- CMD...\n"
                    "       benchtool answer PORT TIMEOUT_MS -- CMD...\n"
                    "       benchtool crash PID PORT TIMEOUT_MS\n"
                    "       benchtool stop-gap PID TIMEOUT_MS -- CMD...\n"
                    "       benchtool hf FILE [INDEX...]\n"
                    "       benchtool free-port\n"
                    "       benchtool curl-load\n"
                    "       benchtool stats < numbers\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2) usage();
    const char *cmd = argv[1];
    if (strcmp(cmd, "start-gap") == 0 || strcmp(cmd, "answer") == 0 ||
        strcmp(cmd, "stop-gap") == 0) {
        if (argc < 6 || strcmp(argv[4], "--") != 0) usage();
        long target = strtol(argv[2], NULL, 10);
        double timeout = strtod(argv[3], NULL);
        if (target <= 0 || timeout <= 0) usage();
        prefer_cpu();
        if (strcmp(cmd, "start-gap") == 0) return start_gap((int)target, timeout, argv + 5, 0);
        if (strcmp(cmd, "answer") == 0) return start_gap((int)target, timeout, argv + 5, 1);
        return stop_gap((pid_t)target, timeout, argv + 5);
    }
    if (strcmp(cmd, "crash") == 0 && argc == 5) {
        long pid = strtol(argv[2], NULL, 10), port = strtol(argv[3], NULL, 10);
        double timeout = strtod(argv[4], NULL);
        if (pid <= 1 || port <= 0 || port > 65535 || timeout <= 0) usage();
        prefer_cpu();
        return crash((pid_t)pid, (int)port, timeout);
    }
    if (strcmp(cmd, "hf") == 0 && argc >= 3) return hf(argv[2], argc - 3, argv + 3);
    if (strcmp(cmd, "stats") == 0) return stats();
    if (strcmp(cmd, "free-port") == 0) return free_port();
    if (strcmp(cmd, "curl-load") == 0) return curl_load();
    usage();
    return 2;
}
