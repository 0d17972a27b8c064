/*
 * TCP checks (see net.h): a bounded connect on the loop, and port probes.
 *
 * A connect attempt owns up to two handles (a timer for the deadline, the
 * TCP socket) and up to two requests (a name lookup, the connect).  It ends
 * the first time one of them reports; every handle is then closed and the
 * attempt's memory is freed only when the last close callback or request
 * callback has run, so libuv never writes into freed memory whichever way it
 * ends (connected, refused, deadline, loop teardown).
 *
 * The port probes read the kernel's socket tables instead of trusting what a
 * process says about itself: /proc/net/tcp{,6} for LISTEN sockets and their
 * inodes, /proc/PID/fd for which process holds an inode.
 */
#include "net.h"

#include "proc.h"
#include "owner.h"

#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- connect ------------------------------------------------------------ */

typedef struct net_connect {
    cm_owner_t owner; /* first: the data of both handles (runtime.h) */
    uv_loop_t *loop;
    uv_timer_t timer; /* the deadline; also delivers early errors */
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_getaddrinfo_t resolve_req;
    int port;
    int refs;        /* open handles + pending requests; freed at 0 */
    int tcp_open;    /* the tcp handle was initialised */
    int resolving;   /* the name lookup is pending */
    int done;        /* the result was delivered: later reports are ignored */
    int early_error; /* an error to deliver from the timer (never synchronously) */
    cm_net_connect_cb cb;
    void *data;
} net_connect_t;

static void connect_release(net_connect_t *c)
{
    if (--c->refs == 0) free(c);
}

static void on_connect_handle_close(uv_handle_t *handle)
{
    connect_release(handle->data);
}

/* Closes what is still open and cancels the lookup; idempotent. */
static void connect_close(net_connect_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_connect_handle_close);
    if (c->tcp_open && !uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_connect_handle_close);
    if (c->resolving) uv_cancel((uv_req_t *)&c->resolve_req);
}

/* Delivers the result once.  The handles close first; the memory stays valid
 * until their close callbacks, so the callback may do anything. */
static void connect_finish(net_connect_t *c, int status)
{
    if (c->done) return;
    c->done = 1;
    connect_close(c);
    c->cb(status, c->data);
}

/* The runtime is closing with this attempt in flight. */
static void connect_teardown(cm_owner_t *owner)
{
    connect_finish((net_connect_t *)owner, UV_ECANCELED);
}

static void on_connect_timer(uv_timer_t *timer)
{
    net_connect_t *c = timer->data;
    connect_finish(c, c->early_error != 0 ? c->early_error : UV_ETIMEDOUT);
}

/* Reports an error from a later loop iteration, so that the callback never
 * runs inside cm_net_connect (its caller may not be ready for it yet). */
static void connect_fail_soon(net_connect_t *c, int status)
{
    c->early_error = status;
    cm_timer_start(&c->timer, on_connect_timer, 0, 0);
}

static void on_connected(uv_connect_t *req, int status)
{
    net_connect_t *c = req->data;
    /* UV_ECANCELED here means we closed the socket ourselves: already done. */
    connect_finish(c, status);
    connect_release(c);
}

static void connect_start_tcp(net_connect_t *c, const struct sockaddr *addr)
{
    int rc = uv_tcp_init(c->loop, &c->tcp);
    if (rc != 0) {
        connect_fail_soon(c, rc);
        return;
    }
    c->tcp_open = 1;
    c->refs++;
    c->tcp.data = c;
    c->connect_req.data = c;
    rc = uv_tcp_connect(&c->connect_req, &c->tcp, addr, on_connected);
    if (rc != 0) {
        connect_fail_soon(c, rc);
        return;
    }
    c->refs++;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    net_connect_t *c = req->data;
    c->resolving = 0;
    if (!c->done) {
        if (status < 0) {
            connect_finish(c, status);
        } else {
            struct sockaddr_storage addr;
            memset(&addr, 0, sizeof addr);
            memcpy(&addr, res->ai_addr, res->ai_addrlen);
            if (addr.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&addr)->sin6_port = htons((uint16_t)c->port);
            else
                ((struct sockaddr_in *)&addr)->sin_port = htons((uint16_t)c->port);
            connect_start_tcp(c, (const struct sockaddr *)&addr);
        }
    }
    uv_freeaddrinfo(res);
    connect_release(c);
}

int cm_net_parse_addr(const char *host, int port, struct sockaddr_storage *addr)
{
    memset(addr, 0, sizeof *addr);
    if (host == NULL || port < 0 || port > 65535) return UV_EINVAL;
    /* "localhost" is the loopback address, whatever /etc/hosts says: the
     * checks are about this machine, and a lookup could block or lie. */
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)addr) == 0) return 0;
    char buf[INET6_ADDRSTRLEN + 2];
    size_t len = strlen(host);
    if (len >= 2 && len < sizeof buf && host[0] == '[' && host[len - 1] == ']') {
        memcpy(buf, host + 1, len - 2); /* "[::1]" as in URLs */
        buf[len - 2] = '\0';
        host = buf;
    }
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)addr) == 0) return 0;
    memset(addr, 0, sizeof *addr);
    return UV_EINVAL;
}

int cm_net_connect(uv_loop_t *loop, const char *host, int port, uint64_t timeout_ms,
                   cm_net_connect_cb cb, void *data)
{
    if (loop == NULL || host == NULL || *host == '\0' || cb == NULL || port < 1 || port > 65535)
        return UV_EINVAL;
    net_connect_t *c = calloc(1, sizeof *c);
    if (c == NULL) return UV_ENOMEM;
    c->owner.teardown = connect_teardown;
    c->loop = loop;
    c->port = port;
    c->cb = cb;
    c->data = data;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->refs = 1;
    cm_timer_start(&c->timer, on_connect_timer, timeout_ms, 0);

    struct sockaddr_storage addr;
    if (cm_net_parse_addr(host, port, &addr) == 0) {
        connect_start_tcp(c, (const struct sockaddr *)&addr);
        return 0;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->resolve_req.data = c;
    int rc = uv_getaddrinfo(loop, &c->resolve_req, on_resolved, host, NULL, &hints);
    if (rc != 0) {
        c->done = 1; /* the caller hears of it from the return value */
        connect_close(c);
        return rc;
    }
    c->resolving = 1;
    c->refs++;
    return 0;
}

/* ---- port probes -------------------------------------------------------- */

int cm_net_port_free(const char *host, int port)
{
    struct sockaddr_storage addr;
    if (cm_net_parse_addr(host != NULL ? host : "0.0.0.0", port, &addr) != 0) return -EINVAL;
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    /* The app will bind with SO_REUSEADDR too (every server does), so a port
     * held only by connections in TIME_WAIT is free for it. */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len =
        addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int rc = bind(fd, (struct sockaddr *)&addr, len) == 0 ? 1 : -errno;
    close(fd);
    if (rc == -EADDRINUSE) return 0;
    return rc;
}

#define MAX_LISTEN_INODES 32
#define TCP_LISTEN 0x0A /* the "st" column of /proc/net/tcp */

/* Adds the inodes of the LISTEN sockets on `port` (any port when 0) found
 * in one /proc/net table, and their ports when `ports` is not NULL; at most
 * `max` in all.  Returns 0, or -errno when the table cannot be read. */
static int scan_tcp_table(const char *path, int port, unsigned long *inodes, int *ports, size_t *n,
                          size_t max)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) return -errno;
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) { /* the header */
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned int local_port = 0, state = 0;
        unsigned long inode = 0;
        /* sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode */
        int got = sscanf(
            line, " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x %*x:%*x %*x:%*x %*x %*u %*u %lu",
            &local_port, &state, &inode);
        if (got != 3 || state != TCP_LISTEN || (port != 0 && (int)local_port != port)) continue;
        if (*n >= max) continue;
        if (ports != NULL) ports[*n] = (int)local_port;
        inodes[(*n)++] = inode;
    }
    fclose(f);
    return 0;
}

/* The inodes of every LISTEN socket on `port`, IPv4 and IPv6.  Returns how
 * many, or -errno when neither table can be read. */
static int listening_inodes(int port, unsigned long *inodes)
{
    size_t n = 0;
    int rc4 = scan_tcp_table("/proc/net/tcp", port, inodes, NULL, &n, MAX_LISTEN_INODES);
    /* One listener is enough to answer: tcp6 is read only when IPv4 has
     * none (each table can take milliseconds to read on a busy host). */
    if (n > 0) return (int)n;
    int rc6 = scan_tcp_table("/proc/net/tcp6", port, inodes, NULL, &n, MAX_LISTEN_INODES);
    if (rc4 < 0 && rc6 < 0) return rc4; /* a kernel without IPv6 has no tcp6: fine */
    return (int)n;
}

int cm_net_port_listening(int port)
{
    unsigned long inodes[MAX_LISTEN_INODES];
    int n = listening_inodes(port, inodes);
    return n < 0 ? n : n > 0;
}

/* Marks (held[i] = 1) which of the sockets `pid`'s descriptors hold; with
 * `first_only` it stops at the first one.  Returns how many it marked, or
 * -EACCES when its fd directory is not ours to read. */
static int mark_held(const char *pid, const unsigned long *inodes, int n, char *held,
                     int first_only)
{
    char dir_path[sizeof "/proc//fd" + NAME_MAX];
    snprintf(dir_path, sizeof dir_path, "/proc/%s/fd", pid);
    DIR *dir = opendir(dir_path);
    if (dir == NULL) return errno == EACCES || errno == EPERM ? -EACCES : 0;
    int found = 0;
    struct dirent *de;
    while (!(first_only && found) && (de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char target[64];
        ssize_t len = readlinkat(dirfd(dir), de->d_name, target, sizeof target - 1);
        if (len <= 0) continue;
        target[len] = '\0';
        unsigned long inode;
        if (sscanf(target, "socket:[%lu]", &inode) != 1) continue;
        for (int i = 0; i < n; i++) {
            if (inodes[i] != inode) continue;
            if (!held[i]) found++;
            held[i] = 1;
            break;
        }
    }
    closedir(dir);
    return found;
}

/* Whether one of `pid`'s descriptors is one of the sockets.  Returns 1, 0,
 * or -EACCES when its fd directory is not ours to read. */
static int process_holds(const char *pid, const unsigned long *inodes, int n)
{
    char held[MAX_LISTEN_INODES] = {0};
    int rc = mark_held(pid, inodes, n, held, 1);
    return rc < 0 ? rc : rc > 0;
}

/* Reads /proc/PID/comm into name (without its newline). */
static void read_comm(const char *pid, char *name, size_t name_size)
{
    if (name == NULL || name_size == 0) return;
    name[0] = '\0';
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/comm", pid);
    FILE *f = fopen(path, "re");
    if (f == NULL) return;
    if (fgets(name, (int)name_size, f) != NULL) name[strcspn(name, "\n")] = '\0';
    fclose(f);
}

static int compare_pids_descending(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

int cm_net_port_owner(int port, pid_t *pid, char *name, size_t name_size)
{
    unsigned long inodes[MAX_LISTEN_INODES];
    int n = listening_inodes(port, inodes);
    if (n <= 0) return n;
    DIR *proc = opendir("/proc");
    if (proc == NULL) return -errno;
    /* Newest processes first: the listener asked about is most often one
     * just started (the app being probed), and reading every process's fd
     * links costs milliseconds on a busy machine. */
    size_t count = 0, cap = 256;
    long *pids = malloc(cap * sizeof *pids);
    struct dirent *de;
    while (pids != NULL && (de = readdir(proc)) != NULL) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9') continue;
        if (strspn(de->d_name, "0123456789") != strlen(de->d_name)) continue;
        if (count == cap) {
            long *grown = realloc(pids, (cap *= 2) * sizeof *pids);
            if (grown == NULL) break;
            pids = grown;
        }
        pids[count++] = strtol(de->d_name, NULL, 10);
    }
    closedir(proc);
    if (pids == NULL) return -ENOMEM;
    qsort(pids, count, sizeof *pids, compare_pids_descending);
    int hidden = 0, found = 0;
    for (size_t i = 0; i < count && !found; i++) {
        char pid_text[24];
        snprintf(pid_text, sizeof pid_text, "%ld", pids[i]);
        int rc = process_holds(pid_text, inodes, n);
        if (rc < 0) hidden = 1;
        if (rc > 0) {
            found = 1;
            if (pid != NULL) *pid = (pid_t)pids[i];
            read_comm(pid_text, name, name_size);
        }
    }
    free(pids);
    if (found) return 1;
    return hidden ? -EACCES : 0;
}

/* ---- the ports a process group listens on -------------------------------- */

#define MAX_GROUP_LISTENERS 4096

typedef struct group_scan {
    pid_t pgid;
    const unsigned long *inodes;
    int n;
    char *held;
} group_scan_t;

static int mark_group_member(pid_t pid, void *arg)
{
    group_scan_t *g = arg;
    cm_proc_stat_t st;
    if (cm_proc_read_stat(pid, &st) != 0 || st.pgid != g->pgid || st.state == 'Z') return 0;
    char pid_text[24];
    snprintf(pid_text, sizeof pid_text, "%ld", (long)pid);
    mark_held(pid_text, g->inodes, g->n, g->held, 0);
    return 0;
}

static int compare_ints(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int cm_net_group_ports(pid_t pgid, int *ports, int max)
{
    if (pgid <= 0 || max <= 0) return -EINVAL;
    unsigned long *inodes = malloc(MAX_GROUP_LISTENERS * sizeof *inodes);
    int *all = malloc(MAX_GROUP_LISTENERS * sizeof *all);
    char *held = calloc(MAX_GROUP_LISTENERS, 1);
    if (inodes == NULL || all == NULL || held == NULL) {
        free(inodes);
        free(all);
        free(held);
        return -ENOMEM;
    }
    size_t n = 0;
    int rc4 = scan_tcp_table("/proc/net/tcp", 0, inodes, all, &n, MAX_GROUP_LISTENERS);
    int rc6 = scan_tcp_table("/proc/net/tcp6", 0, inodes, all, &n, MAX_GROUP_LISTENERS);
    int count = rc4 < 0 && rc6 < 0 ? rc4 : 0;
    if (count == 0 && n > 0) {
        group_scan_t g = {pgid, inodes, (int)n, held};
        cm_proc_foreach(mark_group_member, &g);
        int *found = all; /* compacted in place: j <= i */
        for (size_t i = 0; i < n; i++)
            if (held[i]) found[count++] = all[i];
        qsort(found, (size_t)count, sizeof *found, compare_ints);
        int unique = 0;
        for (int i = 0; i < count; i++)
            if (unique == 0 || found[unique - 1] != found[i]) found[unique++] = found[i];
        count = unique < max ? unique : max;
        memcpy(ports, found, (size_t)count * sizeof *ports);
    }
    free(inodes);
    free(all);
    free(held);
    return count;
}
