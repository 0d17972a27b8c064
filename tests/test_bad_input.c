/*
 * Runs spec/bad_input.lua, the bad-input matrix: one cmocka test per row (a
 * `truncate` row gives one test per prefix length of its fixture), built at
 * run time.  Every test runs the real binary (built with ASan+UBSan) in a
 * fresh temporary root and checks the exit code, the message, that nothing
 * on disk changed (run/ and logs/ aside) and that no sanitizer spoke.  The
 * row format is documented at the top of the spec.
 *
 * A row marked expect_fail = "diagnosis" describes a product bug: its test
 * passes while the row fails (printing what failed and the diagnosis) and
 * fails once the row passes, so the mark is removed with the fix.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define RUN_MS 30000   /* default bound on one run of the binary */
#define AFTER_MS 30000 /* bound on each `after` command and the final force-stop */
#define SHOW_MAX 3000  /* bytes of stdout/stderr shown in a failure */

static lua_State *S; /* the spec, loaded once */
static int rows_ref; /* registry ref of the rows table */
static int xfails;   /* rows that failed as their diagnosis says */
static int xfail_rows[4096];

/* ---- small string helpers ------------------------------------------------ */

typedef struct sbuf {
    char *data;
    size_t len, cap;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
        assert_non_null(b->data);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *tmp = malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(tmp, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_add(b, tmp, (size_t)n);
    free(tmp);
}

/* ---- one test's context ---------------------------------------------------- */

typedef struct tcase {
    int row;   /* 1-based index into the spec's rows */
    int trunc; /* prefix length for a truncate row, else -1 */
    char name[300];
} tcase_t;

typedef struct ctx {
    const tcase_t *tc;
    char *root; /* real path */
    char *aux;  /* a second temp dir: port files, TMP_FILE */
    char *tmp_file;
    char port[16], http_port[16];
    pid_t fake_http; /* fixtures' fake-http (own process group) */
    pid_t server;    /* our one-answer server (a forked child) */
    int force_stop;  /* the row may have started something */
    const char *vars[16][2];
    int nvars;
} ctx_t;

static void var(ctx_t *c, const char *name, const char *value)
{
    c->vars[c->nvars][0] = name;
    c->vars[c->nvars][1] = value;
    c->nvars++;
}

/* Replaces every ${NAME} of the context's variables; malloc'd, *out_len set. */
static char *subst(ctx_t *c, const char *s, size_t len, size_t *out_len)
{
    sbuf_t b = {0};
    sb_add(&b, "", 0);
    size_t i = 0;
    while (i < len) {
        const char *dollar = memchr(s + i, '$', len - i);
        size_t stop = dollar ? (size_t)(dollar - s) : len;
        sb_add(&b, s + i, stop - i);
        i = stop;
        if (i >= len) break;
        int done = 0;
        for (int v = 0; v < c->nvars && !done; v++) {
            size_t nl = strlen(c->vars[v][0]);
            if (i + nl + 3 <= len && s[i + 1] == '{' && memcmp(s + i + 2, c->vars[v][0], nl) == 0 &&
                s[i + 2 + nl] == '}') {
                sb_add(&b, c->vars[v][1], strlen(c->vars[v][1]));
                i += nl + 3;
                done = 1;
            }
        }
        if (!done) sb_add(&b, s + i++, 1);
    }
    if (out_len) *out_len = b.len;
    return b.data;
}

static char *subst_z(ctx_t *c, const char *s)
{
    return subst(c, s, strlen(s), NULL);
}

/* ---- the spec -------------------------------------------------------------- */

/* Pushes the row of the current test; the caller pops it. */
static void push_row(const tcase_t *tc)
{
    lua_settop(S, 0);
    lua_rawgeti(S, LUA_REGISTRYINDEX, rows_ref);
    lua_rawgeti(S, -1, tc->row);
    lua_remove(S, -2);
}

/* Field of the table at the top of the stack as a string, or NULL. */
static const char *field_str(const char *key, size_t *len)
{
    lua_getfield(S, -1, key);
    const char *s = lua_type(S, -1) == LUA_TSTRING ? lua_tolstring(S, -1, len) : NULL;
    lua_pop(S, 1); /* the row keeps the string alive */
    return s;
}

static int field_int(const char *key, int dflt)
{
    lua_getfield(S, -1, key);
    int v = lua_isinteger(S, -1) ? (int)lua_tointeger(S, -1) : dflt;
    lua_pop(S, 1);
    return v;
}

static int field_bool(const char *key)
{
    lua_getfield(S, -1, key);
    int v = lua_toboolean(S, -1);
    lua_pop(S, 1);
    return v;
}

/* The value at the top (a string or a list of strings) substituted into a
 * NULL-terminated malloc'd array; pops it.  A table inside the list is a set
 * of alternatives, kept as one string with ALT between them. */
#define ALT '\x01'

static char **strings_at_top(ctx_t *c)
{
    char **out = calloc(64, sizeof *out);
    int n = 0;
    if (lua_type(S, -1) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(S, -1, &len);
        out[n++] = subst(c, s, len, NULL);
    } else if (lua_istable(S, -1)) {
        for (lua_Integer i = 1; n < 63; i++) {
            lua_rawgeti(S, -1, i);
            if (lua_istable(S, -1)) {
                sbuf_t alts = {0};
                sb_add(&alts, "", 0);
                for (lua_Integer k = 1;; k++) {
                    lua_rawgeti(S, -1, k);
                    if (lua_type(S, -1) != LUA_TSTRING) {
                        lua_pop(S, 1);
                        break;
                    }
                    char *one = subst_z(c, lua_tostring(S, -1));
                    if (k > 1) sb_add(&alts, (char[]){ALT}, 1);
                    sb_add(&alts, one, strlen(one));
                    free(one);
                    lua_pop(S, 1);
                }
                out[n++] = alts.data;
                lua_pop(S, 1);
                continue;
            }
            if (lua_type(S, -1) != LUA_TSTRING) {
                lua_pop(S, 1);
                break;
            }
            size_t len;
            const char *s = lua_tolstring(S, -1, &len);
            out[n++] = subst(c, s, len, NULL);
            lua_pop(S, 1);
        }
    }
    lua_pop(S, 1);
    return out;
}

static void free_strings(char **v)
{
    for (int i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* Does `text` hold `want`, or one of its ALT-separated alternatives? */
static int holds(const char *text, const char *want)
{
    const char *p = want;
    for (;;) {
        const char *end = strchr(p, ALT);
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char *one = strndup(p, n);
        int found = strstr(text, one) != NULL;
        free(one);
        if (found) return 1;
        if (!end) return 0;
        p = end + 1;
    }
}

/* ---- files ------------------------------------------------------------------ */

static void mkdirs_for(const char *path)
{
    char *p = strdup(path);
    for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) fail_msg("mkdir %s: %s", p, strerror(errno));
        *s = '/';
    }
    free(p);
}

static void write_bytes(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail_msg("open %s: %s", path, strerror(errno));
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fail_msg("write %s: %s", path, strerror(errno));
        off += (size_t)w;
    }
    assert_int_equal(close(fd), 0);
}

/* Copies $CM_FIXTURES/<fixture> (its first `limit` bytes when limit >= 0). */
static void copy_fixture(const char *fixture, const char *dst, long limit)
{
    char *src = cmt_fixture(fixture);
    size_t len;
    char *data = cmt_read_file(src, &len);
    if (data == NULL) fail_msg("fixture %s is missing", src);
    if (limit >= 0 && (size_t)limit < len) len = (size_t)limit;
    write_bytes(dst, data, len);
    free(data);
    free(src);
}

static int compare_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Creates row.files (the table at the top of the stack) in the root. */
static void make_files(ctx_t *c, int trunc)
{
    lua_getfield(S, -1, "files");
    if (!lua_istable(S, -1)) {
        lua_pop(S, 1);
        return;
    }
    char *keys[64];
    int n = 0;
    lua_pushnil(S);
    while (lua_next(S, -2) != 0 && n < 64) {
        keys[n++] = strdup(lua_tostring(S, -2));
        lua_pop(S, 1);
    }
    qsort(keys, (size_t)n, sizeof *keys, compare_cstr);
    for (int i = 0; i < n; i++) {
        char *path = cmt_path(c->root, keys[i]);
        mkdirs_for(path);
        lua_getfield(S, -1, keys[i]);
        if (lua_type(S, -1) == LUA_TSTRING) {
            size_t len, out_len;
            const char *s = lua_tolstring(S, -1, &len);
            char *text = subst(c, s, len, &out_len);
            write_bytes(path, text, out_len);
            free(text);
        } else {
            size_t len;
            const char *s;
            if ((s = field_str("raw", &len)) != NULL) {
                write_bytes(path, s, len);
            } else if ((s = field_str("fixture", NULL)) != NULL) {
                copy_fixture(s, path, trunc);
            } else if (field_bool("dir")) {
                assert_int_equal(mkdir(path, 0755), 0);
            } else if ((s = field_str("symlink", NULL)) != NULL) {
                char *target = subst_z(c, s);
                assert_int_equal(symlink(target, path), 0);
                free(target);
            } else if (field_bool("fifo")) {
                assert_int_equal(mkfifo(path, 0644), 0);
            } else {
                fail_msg("files[%s]: unknown kind", keys[i]);
            }
            int mode = field_int("mode", -1);
            if (mode >= 0) assert_int_equal(chmod(path, (mode_t)mode), 0);
        }
        lua_pop(S, 1);
        free(path);
        free(keys[i]);
    }
    lua_pop(S, 1);
}

/* ---- the root's snapshot ----------------------------------------------------- */

typedef struct snap {
    char **lines; /* "relpath\tdescription", sorted */
    size_t n, cap;
} snap_t;

static uint64_t hash_file(const char *path, int *ok)
{
    uint64_t h = 1469598103934665603ull;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    *ok = fd >= 0;
    if (fd < 0) return 0;
    static char buf[1 << 16];
    ssize_t got;
    while ((got = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < got; i++)
            h = (h ^ (unsigned char)buf[i]) * 1099511628211ull;
    close(fd);
    return h;
}

static void snap_add(snap_t *s, const char *rel, const char *desc)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->lines = realloc(s->lines, s->cap * sizeof *s->lines);
    }
    size_t n = strlen(rel) + strlen(desc) + 2;
    s->lines[s->n] = malloc(n);
    snprintf(s->lines[s->n], n, "%s\t%s", rel, desc);
    s->n++;
}

static void snap_walk(snap_t *s, const char *dir, const char *rel)
{
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        /* Commands may create run/ and logs/ in the root. */
        if (rel[0] == '\0' && (strcmp(e->d_name, "run") == 0 || strcmp(e->d_name, "logs") == 0))
            continue;
        char *path = cmt_path(dir, e->d_name);
        char *r = rel[0] ? cmt_path(rel, e->d_name) : strdup(e->d_name);
        struct stat st;
        char desc[4200];
        if (lstat(path, &st) != 0) {
            snprintf(desc, sizeof desc, "gone");
        } else if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t n = readlink(path, target, sizeof target - 1);
            target[n > 0 ? n : 0] = '\0';
            snprintf(desc, sizeof desc, "link -> %s", target);
        } else if (S_ISDIR(st.st_mode)) {
            snprintf(desc, sizeof desc, "dir %04o", (unsigned)(st.st_mode & 07777));
        } else if (S_ISREG(st.st_mode)) {
            int ok;
            uint64_t h = hash_file(path, &ok);
            snprintf(desc, sizeof desc, "file %04o %lld bytes %s%016llx",
                     (unsigned)(st.st_mode & 07777), (long long)st.st_size,
                     ok ? "hash " : "unreadable ", (unsigned long long)h);
        } else {
            snprintf(desc, sizeof desc, "special %06o", (unsigned)st.st_mode);
        }
        snap_add(s, r, desc);
        if (S_ISDIR(st.st_mode)) snap_walk(s, path, r);
        free(path);
        free(r);
    }
    closedir(d);
}

static snap_t snap_take(const char *root)
{
    snap_t s = {0};
    snap_walk(&s, root, "");
    if (s.n > 0) qsort(s.lines, s.n, sizeof *s.lines, compare_cstr);
    return s;
}

static void snap_free(snap_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->lines[i]);
    free(s->lines);
    s->lines = NULL;
    s->n = s->cap = 0;
}

static int path_is(const char *line, const char *path)
{
    size_t n = strlen(path);
    return strncmp(line, path, n) == 0 && line[n] == '\t';
}

/* Differences between the snapshots into *out, except for paths in `allowed`
 * (which must still exist). */
static void snap_diff(const snap_t *a, const snap_t *b, char **allowed, sbuf_t *out)
{
    size_t i = 0, j = 0;
    while (i < a->n || j < b->n) {
        const char *x = i < a->n ? a->lines[i] : NULL, *y = j < b->n ? b->lines[j] : NULL;
        size_t xl = x ? strcspn(x, "\t") : 0, yl = y ? strcspn(y, "\t") : 0;
        int cmp = !x ? 1 : !y ? -1 : strncmp(x, y, xl < yl ? xl + 1 : yl + 1);
        if (x && y && xl == yl && strncmp(x, y, xl) == 0) cmp = 0;
        if (cmp == 0) {
            int ok = strcmp(x, y) == 0;
            for (int k = 0; allowed && allowed[k] && !ok; k++)
                ok = path_is(x, allowed[k]);
            if (!ok) sb_printf(out, "  changed: %s\n       now: %s\n", x, y);
            i++;
            j++;
        } else if (cmp < 0) {
            sb_printf(out, "  removed: %s\n", x);
            i++;
        } else {
            sb_printf(out, "  created: %s\n", y);
            j++;
        }
    }
}

/* ---- HTTP servers ------------------------------------------------------------ */

static void start_fake_http(ctx_t *c, const char *mode, int delay_ms)
{
    char *bin = cmt_fixture("fake-http");
    char *port_file = cmt_path(c->aux, "http.port");
    char delay[16];
    snprintf(delay, sizeof delay, "%d", delay_ms);
    const char *argv[] = {bin,       "--port", "0",  "--port-file",
                          port_file, "--mode", mode, delay_ms > 0 ? "--delay-ms" : NULL,
                          delay,     NULL};
    c->fake_http = cmt_spawn(argv, NULL, NULL);
    if (cmt_wait_file(port_file, 10000) != 0) fail_msg("fake-http --mode %s did not start", mode);
    char *text = cmt_read_file(port_file, NULL);
    snprintf(c->http_port, sizeof c->http_port, "%d", atoi(text));
    free(text);
    free(bin);
    free(port_file);
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

/* A server that answers every request with the same status and body (with
 * `short_body`, Content-Length claims 1000 bytes more than it sends, then
 * the connection closes).  A forked child; dies with us. */
static void start_server(ctx_t *c, const char *status, const char *body, size_t len, int short_body)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 64), 0);
    socklen_t alen = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &alen);
    snprintf(c->http_port, sizeof c->http_port, "%d", ntohs(a.sin_port));
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      status, short_body ? len + 1000 : len);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;) {
            int cfd = accept(fd, NULL, NULL);
            if (cfd < 0) {
                if (errno == EINTR) continue;
                _exit(1);
            }
            struct timeval tv = {2, 0};
            setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            tv.tv_sec = 5;
            setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            char req[8192];
            size_t got = 0;
            while (got < sizeof req - 1) {
                ssize_t r = recv(cfd, req + got, sizeof req - 1 - got, 0);
                if (r <= 0) break;
                got += (size_t)r;
                req[got] = '\0';
                if (strstr(req, "\r\n\r\n")) break;
            }
            send_all(cfd, head, (size_t)hn);
            send_all(cfd, body, len);
            shutdown(cfd, SHUT_WR);
            close(cfd);
        }
    }
    close(fd);
    c->server = pid;
}

static void stop_servers(ctx_t *c)
{
    if (c->fake_http > 0) cmt_kill_group(c->fake_http);
    c->fake_http = 0;
    if (c->server > 0) {
        kill(c->server, SIGKILL);
        waitpid(c->server, NULL, 0);
    }
    c->server = 0;
}

/* ---- running the binary ---------------------------------------------------- */

/* The environment of every run: the row's env over the defaults. */
static char **run_env(ctx_t *c)
{
    char **env = calloc(64, sizeof *env);
    int n = 0;
    int has_llama = 0, has_root = 0;
    lua_getfield(S, -1, "env");
    if (lua_istable(S, -1)) {
        lua_pushnil(S);
        while (lua_next(S, -2) != 0 && n < 56) {
            const char *k = lua_tostring(S, -2);
            char *v = subst_z(c, lua_tostring(S, -1));
            size_t len = strlen(k) + strlen(v) + 2;
            env[n] = malloc(len);
            snprintf(env[n++], len, "%s=%s", k, v);
            free(v);
            has_llama |= strcmp(k, "FAKE_PYTHON_LLAMA") == 0;
            has_root |= strcmp(k, "CHAT_MANAGER_ROOT") == 0;
            lua_pop(S, 1);
        }
    }
    lua_pop(S, 1);
    if (!has_llama) env[n++] = strdup("FAKE_PYTHON_LLAMA=missing");
    if (!has_root) env[n++] = strdup("CHAT_MANAGER_ROOT=");
    env[n++] = strdup("CONFIG_FILE=");
    env[n++] = strdup("NO_COLOR=1");
    env[n] = NULL;
    return env;
}

/* argv: the binary, --root ROOT (unless no_root), then the list at the top
 * of the stack (substituted); pops it. */
static cmt_result_t run_list(ctx_t *c, char **env, int with_root, int timeout_ms, sbuf_t *cmdline)
{
    const char *argv[80];
    char *owned[80];
    int n = 0, k = 0;
    argv[n++] = cmt_env("CM_BINARY");
    if (with_root) {
        argv[n++] = "--root";
        argv[n++] = c->root;
    }
    for (lua_Integer i = 1; n < 78; i++) {
        lua_rawgeti(S, -1, i);
        if (lua_type(S, -1) != LUA_TSTRING) {
            lua_pop(S, 1);
            break;
        }
        owned[k] = subst_z(c, lua_tostring(S, -1));
        argv[n++] = owned[k++];
        lua_pop(S, 1);
    }
    lua_pop(S, 1);
    argv[n] = NULL;
    if (cmdline) {
        for (int i = 1; i < n; i++)
            sb_printf(cmdline, "%s'%s'", i > 1 ? " " : "", argv[i]);
    }
    cmt_result_t r = cmt_run(argv, (const char *const *)env, timeout_ms);
    for (int i = 0; i < k; i++)
        free(owned[i]);
    return r;
}

static const char *const sanitizer_marks[] = {"AddressSanitizer", "LeakSanitizer",
                                              "runtime error:", "UndefinedBehaviorSanitizer", NULL};

static void find_sanitizer(const char *what, const char *text, sbuf_t *out)
{
    for (int i = 0; text && sanitizer_marks[i]; i++) {
        const char *hit = strstr(text, sanitizer_marks[i]);
        if (hit) {
            const char *from = hit - text > 200 ? hit - 200 : text;
            sb_printf(out, "sanitizer report in %s:\n%.1500s\n", what, from);
            return;
        }
    }
}

static void show(sbuf_t *b, const char *label, const char *text)
{
    size_t n = strlen(text);
    if (n <= SHOW_MAX)
        sb_printf(b, "---- %s (%zu bytes)\n%s\n", label, n, text);
    else
        sb_printf(b, "---- %s (%zu bytes, first %d)\n%.*s\n...\n", label, n, SHOW_MAX, SHOW_MAX,
                  text);
}

/* ---- the test ---------------------------------------------------------------- */

static int setup(void **state)
{
    ctx_t *c = calloc(1, sizeof *c);
    c->tc = *state;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    ctx_t *c = *state;
    if (c->force_stop && c->root) {
        char **env = calloc(4, sizeof *env);
        env[0] = strdup("FAKE_PYTHON_LLAMA=missing");
        env[1] = strdup("CONFIG_FILE=");
        const char *argv[] = {cmt_env("CM_BINARY"), "--root", c->root, "force-stop", NULL};
        cmt_result_t r = cmt_run(argv, (const char *const *)env, AFTER_MS);
        cmt_result_free(&r);
        free_strings(env);
    }
    stop_servers(c);
    cmt_rmtree(c->root);
    cmt_rmtree(c->aux);
    free(c->root);
    free(c->aux);
    free(c->tmp_file);
    *state = (void *)c->tc;
    free(c);
    lua_settop(S, 0);
    return 0;
}

static void run_row(void **state)
{
    ctx_t *c = *state;
    const tcase_t *tc = c->tc;
    push_row(tc);

    const char *requires = field_str("requires", NULL);
    if (requires && access(requires, F_OK) != 0) {
        print_message("[  SKIP    ] %s: %s does not exist here\n", tc->name, requires);
        skip();
    }
    if (field_bool("skip_as_root") && geteuid() == 0) {
        print_message("[  SKIP    ] %s: meaningless as root\n", tc->name);
        skip();
    }

    char *tmp = cmt_tempdir();
    c->root = realpath(tmp, NULL);
    free(tmp);
    c->aux = cmt_tempdir();
    c->tmp_file = cmt_path(c->aux, "regular-file");
    cmt_write_file(c->tmp_file, "not a directory\n");
    snprintf(c->port, sizeof c->port, "%d", cmt_free_port());
    strcpy(c->http_port, "1");
    char *fixtures = strdup(cmt_env("CM_FIXTURES"));
    char *python = cmt_fixture("fake-python");
    char *app = cmt_fixture("fake-app");
    var(c, "ROOT", c->root);
    var(c, "PORT", c->port);
    var(c, "HTTP_PORT", c->http_port);
    var(c, "FIXTURES", fixtures);
    var(c, "PYTHON", python);
    var(c, "APP", app);
    var(c, "TMP_FILE", c->tmp_file);

    /* The HTTP server first: configs name its port. */
    lua_getfield(S, -1, "http");
    if (lua_istable(S, -1)) {
        size_t blen;
        const char *mode = field_str("mode", NULL);
        const char *body = field_str("body", &blen);
        if (mode) {
            start_fake_http(c, mode, field_int("delay_ms", 0));
        } else if (body) {
            const char *status = field_str("status", NULL);
            start_server(c, status ? status : "200 OK", body, blen, field_bool("short"));
        }
    }
    lua_pop(S, 1);

    /* config.json, then the row's files. */
    size_t len;
    const char *text;
    char *config_path = cmt_path(c->root, "config.json");
    if ((text = field_str("config_raw", &len)) != NULL) {
        write_bytes(config_path, text, len);
    } else if ((text = field_str("config", &len)) != NULL) {
        size_t out_len;
        char *cfg = subst(c, text, len, &out_len);
        write_bytes(config_path, cfg, out_len);
        free(cfg);
    }
    free(config_path);
    const char *trunc_file = NULL;
    lua_getfield(S, -1, "truncate");
    if (lua_istable(S, -1)) {
        const char *fixture = field_str("fixture", NULL);
        trunc_file = field_str("file", NULL);
        char *path = cmt_path(c->root, trunc_file);
        mkdirs_for(path);
        copy_fixture(fixture, path, tc->trunc);
        free(path);
    }
    lua_pop(S, 1);
    make_files(c, -1);

    /* Does the row start anything? Then force-stop at teardown. */
    lua_getfield(S, -1, "argv");
    lua_rawgeti(S, -1, 1);
    const char *first = lua_tostring(S, -1);
    c->force_stop = first && (strcmp(first, "start") == 0 || strcmp(first, "restart") == 0 ||
                              strcmp(first, "run") == 0);
    lua_pop(S, 2);
    lua_getfield(S, -1, "after");
    if (lua_istable(S, -1)) c->force_stop = 1;
    lua_pop(S, 1);

    snap_t before = snap_take(c->root);
    char **env = run_env(c);
    sbuf_t cmdline = {0};
    sb_add(&cmdline, "", 0);
    int timeout = field_int("timeout", RUN_MS);
    int with_root = !field_bool("no_root");
    lua_getfield(S, -1, "argv");
    cmt_result_t r = run_list(c, env, with_root, timeout, &cmdline);

    sbuf_t problems = {0}, sanitizer = {0}, extra = {0};
    sb_add(&problems, "", 0);
    sb_add(&sanitizer, "", 0);
    sb_add(&extra, "", 0);
    find_sanitizer("stdout", r.out, &sanitizer);
    find_sanitizer("stderr", r.err, &sanitizer);

    /* The `after` commands (cleanup such as stop); their failures count. */
    lua_getfield(S, -1, "after");
    if (lua_istable(S, -1)) {
        for (lua_Integer i = 1;; i++) {
            lua_rawgeti(S, -1, i);
            if (!lua_istable(S, -1)) {
                lua_pop(S, 1);
                break;
            }
            sbuf_t line = {0};
            sb_add(&line, "", 0);
            cmt_result_t a = run_list(c, env, 1, AFTER_MS, &line);
            find_sanitizer(line.data, a.out, &sanitizer);
            find_sanitizer(line.data, a.err, &sanitizer);
            if (a.code != 0) {
                sb_printf(&problems, "after-command %s: exit %d\n", line.data, a.code);
                show(&extra, "after stdout", a.out);
                show(&extra, "after stderr", a.err);
            }
            cmt_result_free(&a);
            free(line.data);
        }
    }
    lua_pop(S, 1);
    char *sup_log_path = cmt_path(c->root, "run/supervisor.log");
    char *sup_log = cmt_read_file(sup_log_path, NULL);
    find_sanitizer("run/supervisor.log", sup_log, &sanitizer);
    free(sup_log);
    free(sup_log_path);

    /* The exit code. */
    int want = field_int("exit", -999);
    if (r.code == -1)
        sb_printf(&problems, "timed out after %d ms (expected exit %d)\n", timeout, want);
    else if (r.code != want)
        sb_printf(&problems, "exit %d, expected %d\n", r.code, want);

    /* The messages. */
    sbuf_t all = {0};
    sb_add(&all, r.out, strlen(r.out));
    sb_add(&all, "\n", 1);
    sb_add(&all, r.err, strlen(r.err));
    lua_getfield(S, -1, "message");
    if (lua_isfunction(S, -1)) {
        lua_pushinteger(S, tc->trunc);
        lua_call(S, 1, 1);
    }
    char **messages = strings_at_top(c);
    for (int i = 0; messages[i]; i++)
        if (!holds(all.data, messages[i]))
            sb_printf(&problems, "missing message: %s\n", messages[i]);
    lua_getfield(S, -1, "absent");
    char **absent = strings_at_top(c);
    for (int i = 0; absent[i]; i++)
        if (strstr(all.data, absent[i]) != NULL)
            sb_printf(&problems, "unexpected text: %s\n", absent[i]);
    if (!field_bool("traceback_ok") && strstr(all.data, "stack traceback") != NULL)
        sb_printf(&problems, "a Lua traceback instead of a clear message\n");
    if (field_bool("stdout_json")) {
        cJSON *j = cJSON_Parse(r.out);
        if (j == NULL) sb_printf(&problems, "stdout is not one JSON document\n");
        cJSON_Delete(j);
    }

    /* Nothing on disk changed, except `changes`. */
    snap_t after = snap_take(c->root);
    char *allowed[17] = {0};
    int na = 0;
    lua_getfield(S, -1, "changes");
    if (lua_istable(S, -1)) {
        lua_pushnil(S);
        while (lua_next(S, -2) != 0 && na < 16) {
            const char *rel = lua_tostring(S, -2);
            allowed[na++] = strdup(rel);
            char *path = cmt_path(c->root, rel);
            size_t clen;
            char *content = cmt_read_file(path, &clen);
            if (content == NULL) {
                sb_printf(&problems, "%s should have been rewritten, but is gone\n", rel);
            } else {
                if (lua_istable(S, -1)) {
                    const char *prefix = field_str("prefix", NULL);
                    if (prefix && strncmp(content, prefix, strlen(prefix)) != 0)
                        sb_printf(&problems, "%s does not start as expected\n", rel);
                }
                lua_pushvalue(S, -1);
                char **wants = strings_at_top(c);
                for (int i = 0; wants[i]; i++)
                    if (!holds(content, wants[i]))
                        sb_printf(&problems, "%s lacks %s\n", rel, wants[i]);
                free_strings(wants);
                show(&extra, rel, content);
            }
            free(content);
            free(path);
            lua_pop(S, 1);
        }
    }
    lua_pop(S, 1);
    sbuf_t diff = {0};
    sb_add(&diff, "", 0);
    snap_diff(&before, &after, allowed, &diff);
    if (diff.len > 0) sb_printf(&problems, "the root changed on disk:\n%s", diff.data);
    for (int i = 0; i < na; i++)
        free(allowed[i]);

    const char *expect_fail = field_str("expect_fail", NULL);
    sbuf_t report = {0};
    sb_add(&report, "", 0);
    sb_printf(&report, "command: %s (%.0f ms)\n", cmdline.data, r.ms);
    show(&report, "stdout", r.out);
    show(&report, "stderr", r.err);
    sb_add(&report, extra.data, extra.len);

    int failed = 0;
    if (sanitizer.len > 0) {
        cmt_print_long("%s\n%s", sanitizer.data, report.data);
        failed = 1;
    } else if (expect_fail != NULL) {
        if (problems.len == 0) {
            print_error("%s: the row is marked expect_fail but passes now: remove the mark.\n"
                        "(the diagnosis was: %s)\n",
                        tc->name, expect_fail);
            failed = 1;
        } else {
            print_message("[  XFAIL   ] %s\n%s    diagnosis: %s\n", tc->name, problems.data,
                          expect_fail);
            if (xfails < (int)(sizeof xfail_rows / sizeof xfail_rows[0]))
                xfail_rows[xfails] = tc->row;
            xfails++;
        }
    } else if (problems.len > 0) {
        cmt_print_long("%s\n%s", problems.data, report.data);
        failed = 1;
    }

    free(report.data);
    free(diff.data);
    snap_free(&before);
    snap_free(&after);
    free_strings(messages);
    free_strings(absent);
    free(all.data);
    free(problems.data);
    free(sanitizer.data);
    free(extra.data);
    free(cmdline.data);
    free_strings(env);
    cmt_result_free(&r);
    free(fixtures);
    free(python);
    free(app);
    if (failed) fail();
}

/* Every key of lua/settings.lua's schema has a wrong-type row. */
static void schema_coverage(void **state)
{
    (void)state;
    char *settings = cmt_source("lua/settings.lua");
    lua_settop(S, 0);
    static const char code[] =
        "local path, rows = ...\n"
        "local f = assert(io.open(path))\n"
        "local src = f:read('a')\n"
        "f:close()\n"
        "local block = assert(src:match('local schema = (%b{})'), 'no schema table found')\n"
        "local covered, missing, n = {}, {}, 0\n"
        "for _, r in ipairs(rows) do if r.key then covered[r.key] = true end end\n"
        "for key in block:gmatch('%[\"([%w_.]+)\"%]%s*=%s*{') do\n"
        "  n = n + 1\n"
        "  if not covered[key] then missing[#missing + 1] = key end\n"
        "end\n"
        "assert(n > 20, 'the schema parse found only ' .. n .. ' keys')\n"
        "return table.concat(missing, ', ')\n";
    assert_int_equal(luaL_loadstring(S, code), LUA_OK);
    lua_pushstring(S, settings);
    lua_rawgeti(S, LUA_REGISTRYINDEX, rows_ref);
    if (lua_pcall(S, 2, 1, 0) != LUA_OK) fail_msg("%s", lua_tostring(S, -1));
    const char *missing = lua_tostring(S, -1);
    if (missing[0] != '\0')
        fail_msg("schema keys without a wrong-type row in spec/bad_input.lua: %s", missing);
    lua_settop(S, 0);
    free(settings);
}

int main(void)
{
    char *spec = cmt_source("spec/bad_input.lua");
    S = luaL_newstate();
    luaL_openlibs(S);
    if (luaL_dofile(S, spec) != LUA_OK) {
        fprintf(stderr, "cannot load %s: %s\n", spec, lua_tostring(S, -1));
        return 1;
    }
    if (!lua_istable(S, -1)) {
        fprintf(stderr, "%s must return the list of rows\n", spec);
        return 1;
    }
    rows_ref = luaL_ref(S, LUA_REGISTRYINDEX);
    lua_rawgeti(S, LUA_REGISTRYINDEX, rows_ref);
    int nrows = (int)lua_rawlen(S, -1);

    /* One test per row; a truncate row gives one per prefix length.
     * CM_BAD_INPUT_ONLY=text: only the rows whose "group: name" has it.
     * CM_BAD_INPUT_SHARD=K/N: only every Nth row from the Kth (ctest runs
     * the matrix as N suites, so that a loaded machine runs them side by
     * side and none comes near the per-suite time limit). */
    const char *only = getenv("CM_BAD_INPUT_ONLY");
    int shard = 1, shards = 1;
    const char *shard_spec = getenv("CM_BAD_INPUT_SHARD");
    if (shard_spec != NULL && *shard_spec &&
        (sscanf(shard_spec, "%d/%d", &shard, &shards) != 2 || shards < 1 || shard < 1 ||
         shard > shards)) {
        fprintf(stderr, "CM_BAD_INPUT_SHARD must be K/N with 1 <= K <= N, not '%s'\n",
                shard_spec);
        return 1;
    }
    size_t cap = 64, n = 0;
    tcase_t *cases = NULL;
    struct CMUnitTest *tests = malloc(cap * sizeof *tests);
    tcase_t **owned = NULL;
    size_t nowned = 0;
    for (int i = 1; i <= nrows; i++) {
        lua_rawgeti(S, -1, i);
        lua_getfield(S, -1, "group");
        lua_getfield(S, -2, "name");
        char name[260];
        snprintf(name, sizeof name, "%s: %s", lua_tostring(S, -2), lua_tostring(S, -1));
        lua_pop(S, 2);
        if ((only != NULL && *only && strstr(name, only) == NULL) ||
            (i - 1) % shards != shard - 1) {
            lua_pop(S, 1); /* the row */
            continue;
        }
        int count = 1;
        lua_getfield(S, -1, "truncate");
        if (lua_istable(S, -1)) {
            lua_getfield(S, -1, "fixture");
            char *path = cmt_fixture(lua_tostring(S, -1));
            lua_pop(S, 1);
            struct stat st;
            if (stat(path, &st) != 0) {
                fprintf(stderr, "fixture %s is missing\n", path);
                return 1;
            }
            count = (int)st.st_size;
            free(path);
        }
        lua_pop(S, 2);
        cases = malloc((size_t)count * sizeof *cases);
        owned = realloc(owned, (nowned + 1) * sizeof *owned);
        owned[nowned++] = cases;
        for (int k = 0; k < count; k++) {
            tcase_t *tc = &cases[k];
            tc->row = i;
            tc->trunc = count > 1 ? k : -1;
            if (count > 1)
                snprintf(tc->name, sizeof tc->name, "%s to %d bytes", name, k);
            else
                snprintf(tc->name, sizeof tc->name, "%s", name);
            if (n + 2 > cap) {
                cap *= 2;
                tests = realloc(tests, cap * sizeof *tests);
            }
            tests[n++] = (struct CMUnitTest){tc->name, run_row, setup, teardown, tc};
        }
    }
    lua_pop(S, 1);
    if (shard == 1)
        tests[n++] =
            (struct CMUnitTest){"spec covers every schema key", schema_coverage, NULL, NULL, NULL};

    int failed = _cmocka_run_group_tests("bad_input", tests, n, NULL, NULL);

    printf(
        "\nbad-input matrix: %d rows, %zu tests, %d failed, %d expected failures (product bugs)\n",
        nrows, n, failed, xfails);
    lua_rawgeti(S, LUA_REGISTRYINDEX, rows_ref);
    for (int i = 0; i < xfails && i < (int)(sizeof xfail_rows / sizeof xfail_rows[0]); i++) {
        lua_rawgeti(S, -1, xfail_rows[i]);
        lua_getfield(S, -1, "group");
        lua_getfield(S, -2, "name");
        printf("  XFAIL %s: %s\n", lua_tostring(S, -2), lua_tostring(S, -1));
        lua_pop(S, 3);
    }
    lua_pop(S, 1);
    for (size_t i = 0; i < nowned; i++)
        free(owned[i]);
    free(owned);
    free(tests);
    lua_close(S);
    free(spec);
    return failed;
}
