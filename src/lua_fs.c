/*
 * cm.fs: the file operations the manager needs.  Local files are small and
 * fast, so most calls are synchronous; only the ones that wait for another
 * process (a lock held elsewhere, the next change of a followed log) park
 * their task on the loop.
 */
#include "cm_modules.h"
#include "fsutil.h"
#include "runtime.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOCK_MT "cm.lock"
#define WATCH_MT "cm.watch"

static int fail_errno(lua_State *L, const char *path, int err)
{
    return cm_fail(L, cm_errno_code(err), "%s: %s", path, strerror(err));
}

/* Fails for a path that cm_open_regular/cm_read_file refused (errno). */
static int fail_read(lua_State *L, const char *path, int err, lua_Integer max)
{
    if (err == CM_ENOTREG) return cm_fail(L, "type", "%s: not a regular file", path);
    if (err == EFBIG)
        return cm_fail(L, "too_large", "%s: larger than %lld bytes", path, (long long)max);
    return fail_errno(L, path, err);
}

static int l_read(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, 64 * 1024 * 1024);
    luaL_argcheck(L, max >= 0, 2, "max_bytes must not be negative");
    size_t len;
    char *data = cm_read_file(path, (size_t)max, &len);
    if (data == NULL) return fail_read(L, path, errno, max);
    lua_pushlstring(L, data, len);
    free(data);
    return 1;
}

/* Reads up to `max` bytes from `offset` on (following a growing log). */
static int l_read_from(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer offset = luaL_checkinteger(L, 2);
    lua_Integer max = luaL_optinteger(L, 3, 1024 * 1024);
    luaL_argcheck(L, offset >= 0 && max >= 0, 2, "offset and max_bytes must not be negative");
    /* The buffer first: it may raise (out of memory), which must not leak
     * an open fd. */
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)max);
    int fd = cm_open_regular(path, NULL);
    if (fd < 0) return fail_read(L, path, errno, max);
    ssize_t n = pread(fd, p, (size_t)max, (off_t)offset);
    int err = errno;
    close(fd);
    if (n < 0) return fail_errno(L, path, err);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* write_atomic(path, data [, mode [, sync]]): see cm_replace_file.  An
 * existing file keeps its mode. */
static int l_write_atomic(lua_State *L)
{
    size_t len;
    const char *path = luaL_checkstring(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    mode_t mode = (mode_t)luaL_optinteger(L, 3, 0644);
    /* Runtime state (state.json, pid files) is rewritten on every
     * transition and is stale after a power loss anyway: the rename alone
     * keeps it whole, and skipping fsync keeps transitions fast. */
    int sync = lua_isnoneornil(L, 4) ? 1 : lua_toboolean(L, 4);
    struct stat st;
    if (stat(path, &st) == 0) mode = st.st_mode & 07777;
    char what[PATH_MAX + 64];
    if (cm_replace_file(path, data, len, mode, (uid_t)-1, (gid_t)-1, sync, what, sizeof what) !=
        0) {
        int err = errno;
        return cm_fail(L, cm_errno_code(err), "%s: %s (%s)", path, strerror(err), what);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_append(lua_State *L)
{
    size_t len;
    const char *path = luaL_checkstring(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return fail_errno(L, path, errno);
    if (cm_write_all(fd, data, len) != 0) {
        int err = errno;
        close(fd);
        return fail_errno(L, path, err);
    }
    close(fd);
    lua_pushboolean(L, 1);
    return 1;
}

/* truncate(path, size): cuts a file to size bytes in place (the same
 * inode, so a writer with O_APPEND goes on at the new end). */
static int l_truncate(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer size = luaL_checkinteger(L, 2);
    if (size < 0) return luaL_argerror(L, 2, "negative size");
    if (truncate(path, (off_t)size) != 0) return fail_errno(L, path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* rename(from, to): rename(2), replacing `to`. */
static int l_rename(lua_State *L)
{
    const char *from = luaL_checkstring(L, 1);
    const char *to = luaL_checkstring(L, 2);
    if (rename(from, to) != 0) return fail_errno(L, from, errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int push_stat(lua_State *L, const char *path, int follow)
{
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) != 0) return fail_errno(L, path, errno);
    lua_createtable(L, 0, 5);
    const char *type = S_ISREG(st.st_mode)                          ? "file"
                       : S_ISDIR(st.st_mode)                        ? "dir"
                       : S_ISLNK(st.st_mode)                        ? "link"
                       : S_ISFIFO(st.st_mode)                       ? "fifo"
                       : S_ISSOCK(st.st_mode)                       ? "socket"
                       : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "device"
                                                                    : "other";
    cm_set_str(L, "type", type);
    cm_set_int(L, "size", (lua_Integer)st.st_size);
    cm_set_num(L, "mtime", (lua_Number)st.st_mtim.tv_sec + (lua_Number)st.st_mtim.tv_nsec / 1e9);
    cm_set_int(L, "mode", (lua_Integer)(st.st_mode & 07777));
    cm_set_int(L, "ino", (lua_Integer)st.st_ino);
    cm_set_int(L, "dev", (lua_Integer)st.st_dev);
    cm_set_int(L, "uid", (lua_Integer)st.st_uid);
    return 1;
}

static int l_stat(lua_State *L)
{
    return push_stat(L, luaL_checkstring(L, 1), 1);
}

static int l_lstat(lua_State *L)
{
    return push_stat(L, luaL_checkstring(L, 1), 0);
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* True when name ends with suffix, ignoring ASCII case. */
static int has_suffix(const char *name, const char *suffix, size_t slen)
{
    size_t n = strlen(name);
    return n >= slen && strcasecmp(name + n - slen, suffix) == 0;
}

/* list(dir [, suffix, limit]) -> {names...}, matched | nil, msg, code.
 * With suffix, names ending in it (any case, hidden names aside) are counted
 * (matched) and only the first `limit` of them, in sorted order, are listed:
 * a folder of 10,000 model files costs no 10,000 Lua strings. */
static int l_list(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t slen = 0;
    const char *suffix = luaL_optlstring(L, 2, NULL, &slen);
    lua_Integer limit = luaL_optinteger(L, 3, LUA_MAXINTEGER);
    DIR *d = opendir(path);
    if (d == NULL) return fail_errno(L, path, errno);
    size_t n = 0, cap = 0;
    char **names = NULL;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            char **grown = realloc(names, cap * sizeof *names);
            if (grown == NULL) break;
            names = grown;
        }
        names[n] = strdup(e->d_name);
        if (names[n] != NULL) n++;
    }
    closedir(d);
    if (n > 1) qsort(names, n, sizeof *names, compare_names);
    /* Copy into Lua only after the C side is complete (no raise mid-way). */
    lua_createtable(L, suffix != NULL ? 0 : (int)n, 0);
    lua_Integer out = 0, matched = 0;
    for (size_t i = 0; i < n; i++) {
        int counted = suffix != NULL && names[i][0] != '.' && has_suffix(names[i], suffix, slen);
        if (counted) matched++;
        if (!counted || matched <= limit) {
            lua_pushstring(L, names[i]);
            lua_rawseti(L, -2, ++out);
        }
        free(names[i]);
    }
    free(names);
    if (suffix == NULL) return 1;
    lua_pushinteger(L, matched);
    return 2;
}

static int l_mkdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    mode_t mode = (mode_t)luaL_optinteger(L, 2, 0755);
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return cm_fail(L, "ENAMETOOLONG", "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return fail_errno(L, buf, errno);
        *p = '/';
    }
    if (mkdir(buf, mode) != 0) {
        if (errno != EEXIST) return fail_errno(L, path, errno);
        struct stat st;
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) return fail_errno(L, path, ENOTDIR);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_chmod(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (chmod(path, (mode_t)luaL_checkinteger(L, 2)) != 0) return fail_errno(L, path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_remove(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (unlink(path) != 0) return fail_errno(L, path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_exists(lua_State *L)
{
    struct stat st;
    lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0);
    return 1;
}

static int l_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char buf[PATH_MAX];
    if (realpath(path, buf) == NULL) return fail_errno(L, path, errno);
    lua_pushstring(L, buf);
    return 1;
}

static int l_access(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *how = luaL_optstring(L, 2, "r");
    int mode = 0;
    if (strchr(how, 'r')) mode |= R_OK;
    if (strchr(how, 'w')) mode |= W_OK;
    if (strchr(how, 'x')) mode |= X_OK;
    lua_pushboolean(L, access(path, mode ? mode : F_OK) == 0);
    return 1;
}

static int l_open_append(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return fail_errno(L, path, errno);
    lua_pushinteger(L, fd);
    return 1;
}

static int l_close(lua_State *L)
{
    close((int)luaL_checkinteger(L, 1));
    return 0;
}

/* ---- locks ------------------------------------------------------------- */

typedef struct lock_obj {
    int fd; /* -1 once unlocked */
} lock_obj_t;

typedef struct lock_wait {
    cm_owner_t owner;
    uv_timer_t timer;
    cm_waiter_t waiter;
    int fd;
    int op;
    double deadline;
} lock_wait_t;

static void lock_wait_free_cb(uv_handle_t *h)
{
    lock_wait_t *w = h->data;
    if (w->fd >= 0) close(w->fd);
    free(w);
}

static void lock_wait_teardown(cm_owner_t *owner)
{
    lock_wait_t *w = (lock_wait_t *)owner;
    if (!uv_is_closing((uv_handle_t *)&w->timer))
        uv_close((uv_handle_t *)&w->timer, lock_wait_free_cb);
}

static void push_lock(lua_State *L, int fd)
{
    lock_obj_t *o = lua_newuserdatauv(L, sizeof *o, 0);
    o->fd = fd;
    luaL_setmetatable(L, LOCK_MT);
}

/* Another process may hold the lock for a while (a start in progress): try
 * again every few milliseconds until the deadline. */
static void lock_retry_cb(uv_timer_t *t)
{
    lock_wait_t *w = t->data;
    int got = cm_flock_now(w->fd, w->op) == 0;
    if (!got && cm_now_ms() < w->deadline) return;
    uv_timer_stop(t);
    lua_State *co = cm_waiter_thread(&w->waiter);
    if (co != NULL) {
        if (got) {
            push_lock(co, w->fd);
            w->fd = -1; /* owned by the userdata now */
            uv_close((uv_handle_t *)t, lock_wait_free_cb);
            cm_waiter_resume(&w->waiter, 1);
            return;
        }
        cm_fail(co, "busy", "lock is held by another process");
        uv_close((uv_handle_t *)t, lock_wait_free_cb);
        cm_waiter_resume(&w->waiter, 3);
        return;
    }
    uv_close((uv_handle_t *)t, lock_wait_free_cb);
}

static int l_lock(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int shared = cm_opt_bool_field(L, 2, "shared", 0);
    uint64_t timeout = cm_ms(L, 2, cm_opt_num_field(L, 2, "timeout", 0));
    int op = shared ? LOCK_SH : LOCK_EX;
    cm_waiter_t waiter;
    if (timeout > 0) cm_waiter_begin(L, &waiter); /* may raise: before the fd */

    /* flock needs no write access: an existing lock file on a read-only
     * directory or file system still locks (a stop must still work). */
    int held = -1;
    int fd = cm_lock_now(path, op, timeout > 0 ? &held : NULL);
    if (fd >= 0) {
        push_lock(L, fd);
        return 1;
    }
    if (held < 0) {
        if (errno == EWOULDBLOCK) return cm_fail(L, "busy", "%s: held by another process", path);
        return fail_errno(L, path, errno);
    }
    fd = held;
    lock_wait_t *w = malloc(sizeof *w);
    if (w == NULL) {
        close(fd);
        return luaL_error(L, "out of memory");
    }
    w->owner.teardown = lock_wait_teardown;
    w->waiter = waiter;
    w->fd = fd;
    w->op = op;
    w->deadline = cm_now_ms() + (double)timeout;
    uv_timer_init(cm_loop(L), &w->timer);
    w->timer.data = w;
    cm_timer_start(&w->timer, lock_retry_cb, 5, 5);
    return cm_waiter_yield(L);
}

static int l_unlock(lua_State *L)
{
    lock_obj_t *o = luaL_checkudata(L, 1, LOCK_MT);
    if (o->fd >= 0) close(o->fd); /* closing the fd releases the flock */
    o->fd = -1;
    return 0;
}

static int l_lock_fd(lua_State *L)
{
    lock_obj_t *o = luaL_checkudata(L, 1, LOCK_MT);
    lua_pushinteger(L, o->fd);
    return 1;
}

/* True when some process holds the file locked exclusively.  The probe takes
 * a shared lock and drops it at once, so it never blocks the holder. */
static int l_probe_lock(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    int held = cm_flock_now(fd, LOCK_SH) != 0 && errno == EWOULDBLOCK;
    close(fd);
    lua_pushboolean(L, held);
    return 1;
}

/* ---- watching a file --------------------------------------------------- */

typedef struct watch_obj {
    cm_owner_t owner;
    uv_fs_event_t event;
    uv_timer_t timer;
    cm_waiter_t waiter;
    int pending;            /* a change arrived while nobody waited */
    int open_handles;       /* freed when both handles have closed */
    struct watch_obj **box; /* the userdata slot, or NULL */
} watch_obj_t;

static void watch_free_cb(uv_handle_t *h)
{
    watch_obj_t *w = h->data;
    /* Two handles share the struct: free it when the second one closes. */
    if (--w->open_handles == 0) free(w);
}

static void watch_close(watch_obj_t *w)
{
    if (w->box != NULL) *w->box = NULL;
    w->box = NULL;
    if (!uv_is_closing((uv_handle_t *)&w->event)) uv_close((uv_handle_t *)&w->event, watch_free_cb);
    if (!uv_is_closing((uv_handle_t *)&w->timer)) uv_close((uv_handle_t *)&w->timer, watch_free_cb);
}

static void watch_teardown(cm_owner_t *owner)
{
    watch_close((watch_obj_t *)owner);
}

static void watch_wake(watch_obj_t *w, const char *what)
{
    uv_timer_stop(&w->timer);
    lua_State *co = cm_waiter_thread(&w->waiter);
    if (co == NULL) return;
    lua_pushstring(co, what);
    cm_waiter_resume(&w->waiter, 1);
}

static void watch_event_cb(uv_fs_event_t *h, const char *name, int events, int status)
{
    (void)name;
    (void)events;
    watch_obj_t *w = h->data;
    if (cm_waiter_thread(&w->waiter) == NULL) {
        w->pending = 1;
        return;
    }
    watch_wake(w, status < 0 ? "error" : "change");
}

static void watch_timeout_cb(uv_timer_t *t)
{
    watch_wake(t->data, "timeout");
}

static int l_watch(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    watch_obj_t **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, WATCH_MT);
    watch_obj_t *w = calloc(1, sizeof *w);
    if (w == NULL) return luaL_error(L, "out of memory");
    w->owner.teardown = watch_teardown;
    w->open_handles = 2;
    uv_fs_event_init(cm_loop(L), &w->event);
    uv_timer_init(cm_loop(L), &w->timer);
    w->event.data = w;
    w->timer.data = w;
    int rc = uv_fs_event_start(&w->event, watch_event_cb, path, 0);
    if (rc != 0) {
        watch_close(w);
        return cm_fail(L, uv_err_name(rc), "%s: %s", path, uv_strerror(rc));
    }
    w->box = box;
    *box = w;
    return 1;
}

static int l_watch_wait(lua_State *L)
{
    watch_obj_t **box = luaL_checkudata(L, 1, WATCH_MT);
    lua_Number timeout = luaL_optnumber(L, 2, -1);
    uint64_t ms = cm_ms(L, 2, timeout);
    if (*box == NULL) return luaL_error(L, "watcher is closed");
    watch_obj_t *w = *box;
    if (w->pending) {
        w->pending = 0;
        lua_pushliteral(L, "change");
        return 1;
    }
    cm_waiter_begin(L, &w->waiter);
    if (!(timeout < 0)) cm_timer_start(&w->timer, watch_timeout_cb, ms, 0);
    return cm_waiter_yield(L);
}

/* Closing wakes a task parked in wait() with "closed", so it can end. */
static int l_watch_close(lua_State *L)
{
    watch_obj_t **box = luaL_checkudata(L, 1, WATCH_MT);
    watch_obj_t *w = *box;
    if (w == NULL) return 0;
    watch_close(w);
    lua_State *co = cm_waiter_thread(&w->waiter);
    if (co != NULL) {
        lua_pushliteral(co, "closed");
        cm_waiter_resume(&w->waiter, 1);
    }
    return 0;
}

int cm__open_fs(lua_State *L)
{
    static const luaL_Reg lock_methods[] = {{"unlock", l_unlock}, {"fd", l_lock_fd}, {NULL, NULL}};
    if (luaL_newmetatable(L, LOCK_MT)) {
        luaL_newlib(L, lock_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_unlock);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg watch_methods[] = {
        {"wait", l_watch_wait}, {"close", l_watch_close}, {NULL, NULL}};
    if (luaL_newmetatable(L, WATCH_MT)) {
        luaL_newlib(L, watch_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_watch_close);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"read", l_read},
                                   {"read_from", l_read_from},
                                   {"write_atomic", l_write_atomic},
                                   {"append", l_append},
                                   {"truncate", l_truncate},
                                   {"rename", l_rename},
                                   {"stat", l_stat},
                                   {"lstat", l_lstat},
                                   {"list", l_list},
                                   {"mkdir", l_mkdir},
                                   {"chmod", l_chmod},
                                   {"remove", l_remove},
                                   {"exists", l_exists},
                                   {"realpath", l_realpath},
                                   {"access", l_access},
                                   {"lock", l_lock},
                                   {"probe_lock", l_probe_lock},
                                   {"watch", l_watch},
                                   {"open_append", l_open_append},
                                   {"close", l_close},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
