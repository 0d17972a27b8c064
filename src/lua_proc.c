/*
 * cm.proc: signalling processes, /proc facts, the PATH lookup, orphans, and
 * the module table (the Lua API is in docs/lua-api.md; the /proc parsing is
 * in proc.c).  run and spawn are in lua_proc_run.c, the waits on processes
 * and pipes in lua_proc_wait.c; what they share is lua_proc.h.
 *
 * Safety: kill() and kill_group() refuse pids and groups <= 1, so a bad pid
 * file can never signal init or "every process"; a child userdata refuses
 * to signal once its child has been reaped, since its pid may then belong
 * to someone else.
 */
#include "cm_modules.h"
#include "lua_proc.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- signals ------------------------------------------------------------- */

static int do_kill(lua_State *L, int group)
{
    lua_Integer id = luaL_checkinteger(L, 1);
    int sig = check_signal(L, 2);
    /* kill(0), kill(-1) and kill(1) mean "my group", "everyone" and init:
     * never what a pid file should make us do. */
    if (id <= 1 || id > INT_MAX)
        return cm_fail(L, "EINVAL", "refusing to signal %s %d", group ? "process group" : "pid",
                       (int)id);
    if (group && (pid_t)id == getpgrp())
        return cm_fail(L, "EINVAL", "refusing to signal our own process group %d", (int)id);
    if (kill(group ? -(pid_t)id : (pid_t)id, sig) != 0) {
        int err = errno;
        return cm_fail(L, cm_errno_code(err), "kill %s%d: %s", group ? "-" : "", (int)id,
                       strerror(err));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_kill(lua_State *L)
{
    return do_kill(L, 0);
}

static int l_kill_group(lua_State *L)
{
    return do_kill(L, 1);
}

/* ---- /proc facts ---------------------------------------------------------- */

static pid_t check_pid(lua_State *L, int idx)
{
    lua_Integer pid = luaL_checkinteger(L, idx);
    return pid > 0 && pid <= INT_MAX ? (pid_t)pid : 0;
}

static int l_alive(lua_State *L)
{
    pid_t pid = check_pid(L, 1);
    lua_pushboolean(L, pid > 0 && cm_proc_alive(pid));
    return 1;
}

static int l_group_alive(lua_State *L)
{
    pid_t pgid = check_pid(L, 1);
    lua_pushboolean(L, pgid > 0 && cm_proc_group_alive(pgid));
    return 1;
}

static int l_info(lua_State *L)
{
    pid_t pid = check_pid(L, 1);
    cm_proc_stat_t st;
    int rc = pid > 0 ? cm_proc_read_stat(pid, &st) : -ESRCH;
    if (rc != 0) return cm_fail(L, "ESRCH", "no such process: %d", (int)pid);
    lua_createtable(L, 0, 10); /* [info] */
    cm_set_int(L, "pid", st.pid);
    cm_set_int(L, "ppid", st.ppid);
    cm_set_int(L, "pgid", st.pgid);
    cm_set_int(L, "sid", st.sid);
    cm_set_lstr(L, "state", &st.state, 1);
    cm_set_str(L, "name", st.name);
    cm_set_int(L, "start_time", (lua_Integer)st.start_time);
    uid_t uid;
    if (cm_proc_uid(pid, &uid) == 0) cm_set_int(L, "uid", uid);

    lua_newtable(L); /* [info, cmdline] */
    size_t len;
    char *args = cm_proc_read_file(pid, "cmdline", &len);
    if (args != NULL) {
        lua_Integer n = 0;
        for (size_t at = 0; at < len;) {
            size_t alen = strnlen(args + at, len - at);
            lua_pushlstring(L, args + at, alen); /* [info, cmdline, arg] */
            lua_rawseti(L, -2, ++n);             /* [info, cmdline] */
            at += alen + 1;
        }
        free(args);
    }
    lua_setfield(L, -2, "cmdline"); /* [info] */
    return 1;
}

static int l_has_marker(lua_State *L)
{
    pid_t pid = check_pid(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *value = luaL_checkstring(L, 3);
    lua_pushboolean(L, pid > 0 && cm_proc_has_marker(pid, name, value));
    return 1;
}

/* The working directory of a process (readlink /proc/PID/cwd): with its
 * command line, what tells an app started by another tool apart. */
static int l_cwd(lua_State *L)
{
    pid_t pid = check_pid(L, 1);
    char link[64], buf[PATH_MAX];
    snprintf(link, sizeof link, "/proc/%d/cwd", (int)pid);
    ssize_t n = pid > 0 ? readlink(link, buf, sizeof buf - 1) : -1;
    if (n < 0) return fail_errno(L, pid > 0 && errno != ENOENT ? errno : ESRCH, link);
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

typedef struct pid_list {
    pid_t *pids;
    size_t n;
    size_t cap;
} pid_list_t;

static int pid_list_add(pid_list_t *l, pid_t pid)
{
    if (l->n == l->cap) {
        size_t cap = l->cap != 0 ? l->cap * 2 : 256;
        pid_t *grown = realloc(l->pids, cap * sizeof *grown);
        if (grown == NULL) return -1;
        l->pids = grown;
        l->cap = cap;
    }
    l->pids[l->n++] = pid;
    return 0;
}

static int list_visit(pid_t pid, void *arg)
{
    return pid_list_add(arg, pid) != 0 ? -ENOMEM : 0;
}

static int cmp_pid(const void *a, const void *b)
{
    pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;
    return (x > y) - (x < y);
}

/* Pushes the pids as a sorted list and frees them. */
static void push_pid_list(lua_State *L, pid_list_t *l)
{
    if (l->n > 1) qsort(l->pids, l->n, sizeof *l->pids, cmp_pid);
    lua_createtable(L, (int)l->n, 0); /* [list] */
    for (size_t i = 0; i < l->n; i++) {
        lua_pushinteger(L, l->pids[i]); /* [list, pid] */
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(l->pids);
    l->pids = NULL;
}

/* which(name [, path [, cwd]]) -> path | nil, msg, code: the file a spawn
 * of `name` would exec (the one PATH lookup, cm_proc_find_program; `path`
 * defaults to ours).  A name with '/' is that file, relative to cwd. */
static int l_which(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *path = luaL_optstring(L, 2, NULL);
    const char *cwd = luaL_optstring(L, 3, NULL);
    if (path == NULL) path = getenv("PATH");
    if (path == NULL) path = DEFAULT_PATH;
    char out[PATH_MAX];
    int rc;
    if (strchr(name, '/') != NULL) {
        int n = name[0] == '/' || cwd == NULL ? snprintf(out, sizeof out, "%s", name)
                                              : snprintf(out, sizeof out, "%s/%s", cwd, name);
        struct stat st;
        rc = n < 0 || (size_t)n >= sizeof out ? -ENAMETOOLONG
             : stat(out, &st) != 0            ? -errno
             : !S_ISREG(st.st_mode)           ? -EACCES
             : access(out, X_OK) != 0         ? -errno
                                              : 0;
    } else {
        rc = cm_proc_find_program(name, path, cwd, out, sizeof out);
    }
    if (rc != 0) return cm_fail(L, cm_errno_code(-rc), "%s: %s", name, strerror(-rc));
    lua_pushstring(L, out);
    return 1;
}

static int l_list(lua_State *L)
{
    pid_list_t l = {NULL, 0, 0};
    int rc = cm_proc_foreach(list_visit, &l);
    if (rc != 0) {
        free(l.pids);
        return fail_errno(L, -rc, "/proc");
    }
    push_pid_list(L, &l);
    return 1;
}

/* ---- orphans ---------------------------------------------------------- */

static int l_set_subreaper(lua_State *L)
{
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) return fail_errno(L, errno, "prctl");
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct reap_scan {
    pid_t self;
    const pid_t *keep; /* pids to leave alone */
    size_t nkeep;
    pid_list_t reaped;
} reap_scan_t;

static int reap_visit(pid_t pid, void *arg)
{
    reap_scan_t *s = arg;
    cm_proc_stat_t st;
    if (cm_proc_read_stat(pid, &st) != 0 || st.ppid != s->self || st.state != 'Z') return 0;
    for (size_t i = 0; i < s->nkeep; i++)
        if (s->keep[i] == pid) return 0;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) pid_list_add(&s->reaped, pid);
    return 0;
}

typedef struct uv_pids {
    pid_t *pids; /* NULL: only count */
    size_t n;
} uv_pids_t;

/* Every child a live uv_process_t stands for: libuv will waitpid() it and
 * needs its status for the exit callback. */
static void uv_pids_walk(uv_handle_t *h, void *arg)
{
    uv_pids_t *p = arg;
    if (h->type != UV_PROCESS || uv_is_closing(h)) return;
    if (p->pids != NULL) p->pids[p->n] = ((uv_process_t *)h)->pid;
    p->n++;
}

/* Adds the integers at idx (a pid, or a list of pids) to keep, or counts them. */
static size_t collect_keep(lua_State *L, int idx, pid_t *keep)
{
    if (lua_isnil(L, idx)) return 0;
    if (lua_type(L, idx) != LUA_TTABLE) {
        lua_Integer pid = luaL_checkinteger(L, idx);
        if (keep != NULL) keep[0] = (pid_t)pid;
        return 1;
    }
    size_t n = lua_rawlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i); /* [.., pid] */
        int isnum;
        lua_Integer pid = lua_tointegerx(L, -1, &isnum);
        if (!isnum) luaL_error(L, "reap_orphans: keep list entries must be pids");
        if (keep != NULL) keep[i - 1] = (pid_t)pid;
        lua_pop(L, 1); /* [..] */
    }
    return n;
}

/* reap_orphans(keep...) -> {pid...}: reaps our zombie children that are
 * neither libuv's nor in keep (pids, or lists of pids).  Only zombies are
 * waited for, each by its pid, so no live child's status is ever taken. */
static int l_reap_orphans(lua_State *L)
{
    int nargs = lua_gettop(L);
    size_t nkeep = 0;
    for (int i = 1; i <= nargs; i++)
        nkeep += collect_keep(L, i, NULL);
    uv_pids_t managed = {NULL, 0};
    uv_walk(cm_loop(L), uv_pids_walk, &managed);

    /* Lua owns the keep array, so the raising calls below leak nothing. */
    pid_t *keep = lua_newuserdatauv(L, (nkeep + managed.n + 1) * sizeof *keep, 0); /* [.., keep] */
    size_t at = 0;
    for (int i = 1; i <= nargs; i++)
        at += collect_keep(L, i, keep + at);
    managed.pids = keep + at;
    managed.n = 0;
    uv_walk(cm_loop(L), uv_pids_walk, &managed);

    reap_scan_t s = {getpid(), keep, at + managed.n, {NULL, 0, 0}};
    /* Only our children can be reaped: list them, scan /proc only when the
     * kernel cannot. */
    if (cm_proc_foreach_descendant(reap_visit, &s, 0) != 0) cm_proc_foreach(reap_visit, &s);
    push_pid_list(L, &s.reaped);
    return 1;
}

/* ---- the module ---------------------------------------------------------- */

int cm__open_proc(lua_State *L)
{
    cm__proc_child_metatable(L);

    static const luaL_Reg fns[] = {
        {"run", l_run},
        {"spawn", l_spawn},
        {"kill", l_kill},
        {"kill_group", l_kill_group},
        {"alive", l_alive},
        {"group_alive", l_group_alive},
        {"info", l_info},
        {"has_marker", l_has_marker},
        {"cwd", l_cwd},
        {"list", l_list},
        {"wait_exit", l_wait_exit},
        {"wait_group", l_wait_group},
        {"set_subreaper", l_set_subreaper},
        {"reap_orphans", l_reap_orphans},
        {"pipe", l_pipe},
        {"read_fd", l_read_fd},
        {"close_fd", l_close_fd},
        {"which", l_which},
        {NULL, NULL},
    };
    luaL_newlib(L, fns); /* [proc] */
    return 1;
}
