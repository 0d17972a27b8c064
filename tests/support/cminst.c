/*
 * Test support (see cminst.h): an instance root as the supervisor leaves it,
 * and processes as /proc shows them.
 */
#include "cminst.h"
#include "cmtest.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Reads a whole (small or /proc) file; NULL when it cannot be opened. */
static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        close(fd);
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            char *bigger = realloc(buf, cap * 2 + 1);
            if (bigger == NULL) break;
            buf = bigger;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        n += (size_t)got;
    }
    close(fd);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void cmi_instance_id(const char *root, char out[17])
{
    struct stat st;
    if (stat(root, &st) != 0) memset(&st, 0, sizeof st);
    char key[PATH_MAX + 64];
    snprintf(key, sizeof key, "%lld:%lld:%s", (long long)st.st_dev, (long long)st.st_ino, root);
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

cJSON *cmi_read_state(const char *root)
{
    char *path = join(root, "run/state.json");
    char *text = path ? slurp(path, NULL) : NULL;
    free(path);
    if (text == NULL) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

const char *cmi_state_str(const cJSON *st, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(st, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

long long cmi_state_int(const cJSON *st, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(st, key);
    return cJSON_IsNumber(v) ? (long long)v->valuedouble : -1;
}

int cmi_wait_state(const char *root, const char *want, int timeout_ms)
{
    double t0 = now_ms();
    do {
        cJSON *st = cmi_read_state(root);
        if (st != NULL && strcmp(cmi_state_str(st, "state"), want) == 0) {
            long long pid = cmi_state_int(st, "pid");
            cJSON_Delete(st);
            return pid > 0 ? (int)pid : 0;
        }
        cJSON_Delete(st);
        usleep(10000);
    } while (now_ms() - t0 < timeout_ms);
    return -1;
}

/* The text of /proc/PID/stat after the command's closing parenthesis. */
static char *stat_tail(pid_t pid, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0) return NULL;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p + 2 : NULL;
}

char cmi_proc_state(pid_t pid)
{
    if (pid <= 0) return 0;
    char buf[1024];
    char *tail = stat_tail(pid, buf, sizeof buf);
    return tail ? tail[0] : 0;
}

int cmi_pid_alive(pid_t pid)
{
    char s = cmi_proc_state(pid);
    return s != 0 && s != 'Z' && s != 'X';
}

int cmi_wait_dead(pid_t pid, int timeout_ms)
{
    double t0 = now_ms();
    do {
        if (!cmi_pid_alive(pid)) return 1;
        usleep(5000);
    } while (now_ms() - t0 < timeout_ms);
    return !cmi_pid_alive(pid);
}

unsigned long long cmi_start_time(pid_t pid)
{
    char buf[1024];
    char *tail = stat_tail(pid, buf, sizeof buf);
    if (tail == NULL) return 0;
    /* tail starts at field 3 (state); start time is field 22. */
    int field = 3;
    char *save = NULL;
    for (char *tok = strtok_r(tail, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++)
        if (field == 22) return strtoull(tok, NULL, 10);
    return 0;
}

void cmi_comm(pid_t pid, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    char *text = slurp(path, NULL);
    snprintf(buf, size, "%s", text ? text : "?");
    free(text);
    buf[strcspn(buf, "\n")] = '\0';
}

int cmi_environ_has(pid_t pid, const char *entry)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    size_t len = 0;
    char *env = slurp(path, &len);
    if (env == NULL) return 0;
    int found = 0;
    for (size_t i = 0; i < len && !found; i += strlen(env + i) + 1)
        if (strcmp(env + i, entry) == 0) found = 1;
    free(env);
    return found;
}

int cmi_has_marker(pid_t pid, const char *id)
{
    char want[96];
    snprintf(want, sizeof want, "CHAT_MANAGER_INSTANCE=%s", id);
    return cmi_environ_has(pid, want);
}

int cmi_marked_pids(const char *id, pid_t *out, int max)
{
    DIR *d = opendir("/proc");
    if (d == NULL) return 0;
    int n = 0;
    pid_t me = getpid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || pid == me) continue;
        if (!cmi_pid_alive((pid_t)pid) || !cmi_has_marker((pid_t)pid, id)) continue;
        if (n < max) out[n] = (pid_t)pid;
        n++;
    }
    closedir(d);
    return n;
}

int cmi_lock_held(const char *root)
{
    char *path = join(root, "run/lock");
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    free(path);
    if (fd < 0) return 0;
    int held = flock(fd, LOCK_SH | LOCK_NB) != 0;
    close(fd);
    return held;
}

int cmi_wait_lock_released(const char *root, int timeout_ms)
{
    double t0 = now_ms();
    do {
        if (!cmi_lock_held(root)) return 1;
        usleep(5000);
    } while (now_ms() - t0 < timeout_ms);
    return !cmi_lock_held(root);
}

pid_t cmi_supervisor_pid(const char *root)
{
    char *path = join(root, "run/supervisor.pid");
    char *text = path ? slurp(path, NULL) : NULL;
    free(path);
    if (text == NULL) return -1;
    long pid = strtol(text, NULL, 10);
    free(text);
    return pid > 0 ? (pid_t)pid : -1;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_log(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 4 && strcmp(e->d_name + n - 4, ".log") == 0;
}

char *cmi_logs_text(const char *root)
{
    char *dir = join(root, "logs");
    struct dirent **names = NULL;
    int n = dir ? scandir(dir, &names, is_log, by_name) : -1;
    size_t len = 0;
    char *all = calloc(1, 1);
    for (int i = 0; i < n; i++) {
        char *path = join(dir, names[i]->d_name);
        size_t got = 0;
        char *text = path ? slurp(path, &got) : NULL;
        if (text != NULL && all != NULL) {
            char *bigger = realloc(all, len + got + 1);
            if (bigger != NULL) {
                all = bigger;
                memcpy(all + len, text, got);
                len += got;
                all[len] = '\0';
            }
        }
        free(text);
        free(path);
        free(names[i]);
    }
    free(names);
    free(dir);
    /* The app's output may hold NULs (a partial write): make it one text. */
    for (size_t i = 0; all && i < len; i++)
        if (all[i] == '\0') all[i] = ' ';
    return all;
}

int cmi_count(const char *text, const char *needle)
{
    if (text == NULL || needle == NULL || *needle == '\0') return 0;
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

int cmi_logs_count(const char *root, const char *needle)
{
    char *text = cmi_logs_text(root);
    int n = cmi_count(text, needle);
    free(text);
    return n;
}

/* One request to 127.0.0.1:port (bounded).  head_only: stop at the status
 * line.  Returns the HTTP status or -1; *body gets the malloc'd body (when
 * body is not NULL and an answer came). */
static int http_request(int port, const char *method, const char *path, const char *json,
                        int timeout_ms, int head_only, char **body)
{
    double t0 = now_ms();
    if (body != NULL) *body = NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int status = -1;
    char *resp = NULL;
    size_t got = 0, cap = 4096;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) goto out;
    struct pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, timeout_ms) != 1) goto out;
    int err = 0;
    socklen_t elen = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) goto out;
    char req[8192];
    int rl = snprintf(req, sizeof req,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                      method, path, json ? strlen(json) : 0, json ? json : "");
    if (rl <= 0 || rl >= (int)sizeof req) goto out;
    size_t sent = 0;
    while (sent < (size_t)rl) {
        int left = timeout_ms - (int)(now_ms() - t0);
        if (left <= 0 || poll(&p, 1, left) != 1) goto out;
        ssize_t n = send(fd, req + sent, (size_t)rl - sent, MSG_NOSIGNAL);
        if (n <= 0 && errno != EAGAIN) goto out;
        if (n > 0) sent += (size_t)n;
    }
    resp = malloc(cap);
    if (resp == NULL) goto out;
    for (;;) {
        if (got + 1 >= cap) {
            char *more = realloc(resp, cap * 2);
            if (more == NULL) break;
            resp = more;
            cap *= 2;
        }
        int left = timeout_ms - (int)(now_ms() - t0);
        p.events = POLLIN;
        if (left <= 0 || poll(&p, 1, left) != 1) break;
        ssize_t n = read(fd, resp + got, cap - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        resp[got] = '\0';
        if (head_only && strstr(resp, "\r\n")) break;
    }
    resp[got] = '\0';
    int code;
    if (sscanf(resp, "HTTP/1.%*d %d", &code) == 1) status = code;
    if (body != NULL && status > 0) {
        const char *start = strstr(resp, "\r\n\r\n");
        *body = strdup(start ? start + 4 : "");
    }
out:
    free(resp);
    close(fd);
    return status;
}

int cmi_http_status(int port, const char *path, int timeout_ms)
{
    return http_request(port, "GET", path, NULL, timeout_ms, 1, NULL);
}

int cmi_http(int port, const char *method, const char *path, const char *json, int timeout_ms,
             char **body)
{
    return http_request(port, method, path, json, timeout_ms, 0, body);
}

void cmi_write_config(const char *root, int port, const char *manager_extra)
{
    char *app = cmt_fixture("fake-app");
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "{\n"
             "  \"backend\": {\"active\": \"ollama\", \"auto_fallback\": false,"
             " \"health_check_interval\": 3600},\n"
             "  \"ollama\": {\"base_url\": \"http://127.0.0.1:1\"},\n"
             "  \"server\": {\"port\": %d},\n"
             "  \"manager\": {\"app\": {\"command\": [\"%s\"]}%s%s}\n"
             "}\n",
             port, app, manager_extra ? ", " : "", manager_extra ? manager_extra : "");
    free(app);
    char *path = cmt_path(root, "config.json");
    cmt_write_file(path, cfg);
    free(path);
}
