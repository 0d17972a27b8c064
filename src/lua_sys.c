/*
 * cm.sys and cm.log: the process's own environment (variables, terminal,
 * signals) and the session log the supervisor writes its event lines to.
 */
#include "cm_modules.h"
#include "fsutil.h"
#include "runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SIGNAL_MT "cm.signal"

extern char **environ;

static int l_getenv(lua_State *L)
{
    lua_pushstring(L, getenv(luaL_checkstring(L, 1)));
    return 1;
}

static int l_setenv(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    if (lua_isnoneornil(L, 2))
        unsetenv(name);
    else
        setenv(name, luaL_checkstring(L, 2), 1);
    return 0;
}

static int l_environ(lua_State *L)
{
    lua_newtable(L);
    for (char **e = environ; *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL) continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);
    }
    return 1;
}

static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

static int l_pid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

static int l_uid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)geteuid());
    return 1;
}

static int l_cwd(lua_State *L)
{
    char buf[PATH_MAX];
    if (getcwd(buf, sizeof buf) == NULL) return cm_fail(L, "ENOENT", "getcwd: %s", strerror(errno));
    lua_pushstring(L, buf);
    return 1;
}

static int l_exe(lua_State *L)
{
    char buf[PATH_MAX];
    size_t size = sizeof buf;
    if (uv_exepath(buf, &size) != 0) return cm_fail(L, "ENOENT", "cannot find this program");
    lua_pushlstring(L, buf, size);
    return 1;
}

static int l_write(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    fflush(stdout);
    if (cm_write_all(fd, data, len) != 0) return cm_fail(L, "EIO", "write: %s", strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

/* Keeps an inherited descriptor (the readiness pipe) out of the app. */
static int l_cloexec(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return cm_fail(L, "EBADF", "fd %d: %s", fd, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- limits for user code ---------------------------------------------- */

static int set_rlimit(int resource, rlim_t soft, rlim_t hard)
{
    struct rlimit rl = {soft, hard};
    return setrlimit(resource, &rl);
}

/* cm.sys.limit{memory = bytes, cpu = seconds} -> true | nil, msg, code
 * Limits this process for good (it is meant for the child that runs user
 * code): Lua's heap to `memory` more bytes, the address space to `memory`
 * plus what the process already maps (not under AddressSanitizer, whose
 * shadow memory takes terabytes of address space), and CPU time to `cpu`
 * seconds (SIGXCPU, then SIGKILL a second later). */
static int l_limit(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer memory = cm_opt_int_field(L, 1, "memory", 0);
    lua_Integer cpu = cm_opt_int_field(L, 1, "cpu", 0);
    luaL_argcheck(L, memory >= 0 && cpu >= 0, 1, "limits must not be negative");
    if (cpu > 0 && set_rlimit(RLIMIT_CPU, (rlim_t)cpu, (rlim_t)cpu + 1) != 0)
        return cm_fail(L, cm_errno_code(errno), "RLIMIT_CPU: %s", strerror(errno));
    if (memory > 0) {
#if !defined(__SANITIZE_ADDRESS__)
        /* The address space: what is mapped now (the binary, its libraries,
         * libuv's threads) plus the budget. */
        size_t mapped = 0, len;
        unsigned long pages = 0;
        char *statm = cm_read_file("/proc/self/statm", 4096, &len);
        if (statm != NULL && sscanf(statm, "%lu", &pages) == 1)
            mapped = (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
        free(statm);
        rlim_t as = (rlim_t)mapped + (rlim_t)memory;
        if (set_rlimit(RLIMIT_AS, as, as) != 0)
            return cm_fail(L, cm_errno_code(errno), "RLIMIT_AS: %s", strerror(errno));
#endif
        cm_runtime_limit_memory(L, (size_t)memory);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_exit(lua_State *L)
{
    int code = (int)luaL_optinteger(L, 1, 0);
    fflush(stdout);
    fflush(stderr);
    _exit(code);
}

/* exec(argv, env): replaces this process (same PID) by argv[1] run with the
 * environment table env.  Used by `run` to put the instance marker where
 * /proc/PID/environ shows it: setenv changes only our copy in memory.
 * Returns only on failure: nil, msg, code. */
static int l_exec(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_Integer argc = luaL_len(L, 1);
    luaL_argcheck(L, argc >= 1 && argc < 4096, 1, "argv must hold 1 to 4095 strings");
    /* Userdata owned by the stack: a raise below frees them with the state. */
    const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(argc + 1), 0);
    for (lua_Integer i = 1; i <= argc; i++) {
        if (lua_rawgeti(L, 1, i) != LUA_TSTRING) return luaL_argerror(L, 1, "argv: strings only");
        argv[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1); /* the string stays alive: the argv table holds it */
    }
    argv[argc] = NULL;
    lua_settop(L, 3); /* [argv, env, argv_ud] */
    size_t envc = 0;
    for (lua_pushnil(L); lua_next(L, 2) != 0; lua_pop(L, 1))
        envc++;
    const char **envp = lua_newuserdatauv(L, sizeof(char *) * (envc + 1), 0);
    lua_createtable(L, (int)envc, 0); /* [argv, env, argv_ud, envp_ud, strings] */
    size_t n = 0;
    for (lua_pushnil(L); n < envc && lua_next(L, 2) != 0; lua_pop(L, 1)) {
        /* [.., strings, key, value] */
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            return luaL_argerror(L, 2, "env: string names and values only");
        lua_pushvalue(L, -2);
        lua_pushliteral(L, "=");
        lua_pushvalue(L, -3);
        lua_concat(L, 3); /* [.., strings, key, value, "key=value"] */
        envp[n] = lua_tostring(L, -1);
        lua_rawseti(L, -4, (lua_Integer)++n); /* [.., strings, key, value] */
    }
    envp[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    execve(argv[0], (char *const *)argv, (char *const *)envp);
    return cm_fail(L, "ENOEXEC", "cannot run %s: %s", argv[0], strerror(errno));
}

/* notify(address, text): one datagram to a service manager's notification
 * socket (the documented sd_notify protocol; address is NOTIFY_SOCKET's
 * value: an AF_UNIX path, or "@name" in the abstract namespace).  true when
 * sent, else nil, msg, code.  Never waits: a listener whose queue is full
 * (it stopped reading) must not freeze the supervisor's loop, so the
 * message is dropped with EAGAIN instead. */
static int l_notify(lua_State *L)
{
    const char *where = luaL_checkstring(L, 1);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t plen = strlen(where);
    if ((where[0] != '/' && where[0] != '@') || plen >= sizeof addr.sun_path)
        return cm_fail(L, "EINVAL", "NOTIFY_SOCKET=%s: not a unix socket address", where);
    memcpy(addr.sun_path, where, plen);
    if (where[0] == '@') addr.sun_path[0] = '\0';
    socklen_t alen =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (where[0] == '/' ? 1 : 0));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return cm_fail(L, "EIO", "socket: %s", strerror(errno));
    ssize_t sent;
    do {
        sent = sendto(fd, text, len, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&addr, alen);
    } while (sent < 0 && errno == EINTR);
    int err = errno;
    close(fd);
    if (sent < 0)
        return cm_fail(L, uv_err_name(uv_translate_sys_error(err)), "NOTIFY_SOCKET=%s: %s", where,
                       strerror(err));
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- signals and hang-ups ---------------------------------------------- */

/* A callback on a signal (uv_signal_t) or on the reader of a pipe going
 * away (uv_poll_t): one record, one close path. */
typedef struct signal_obj {
    cm_owner_t owner;
    union {
        uv_handle_t base;
        uv_signal_t signal;
        uv_poll_t poll;
    } handle;
    lua_State *L;
    int fn_ref;
    struct signal_obj **box;
} signal_obj_t;

static const struct {
    const char *name;
    int signum;
} signal_names[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},   {"USR1", SIGUSR1},
                    {"USR2", SIGUSR2}, {"CHLD", SIGCHLD}, {"QUIT", SIGQUIT}, {NULL, 0}};

static void signal_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static void signal_close(signal_obj_t *s, int lua_usable)
{
    if (s->box != NULL) *s->box = NULL;
    s->box = NULL;
    if (lua_usable && s->fn_ref != LUA_NOREF) luaL_unref(s->L, LUA_REGISTRYINDEX, s->fn_ref);
    s->fn_ref = LUA_NOREF;
    if (!uv_is_closing(&s->handle.base)) uv_close(&s->handle.base, signal_free_cb);
}

static void signal_teardown(cm_owner_t *owner)
{
    signal_close((signal_obj_t *)owner, 0);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    signal_obj_t *s = h->data;
    if (cm_runtime_closing(cm_runtime_of(s->L)) || s->fn_ref == LUA_NOREF) return;
    for (int i = 0; signal_names[i].name != NULL; i++) {
        if (signal_names[i].signum == signum) {
            lua_pushstring(s->L, signal_names[i].name);
            cm_callback(s->L, s->fn_ref, 1);
            return;
        }
    }
}

/* Pushes the Lua object for a new record calling the function at stack
 * index fn; the caller initialises and starts s->handle. */
static signal_obj_t *new_signal_obj(lua_State *L, int fn)
{
    signal_obj_t **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, SIGNAL_MT);
    signal_obj_t *s = malloc(sizeof *s);
    if (s == NULL) {
        luaL_error(L, "out of memory");
        return NULL;
    }
    s->owner.teardown = signal_teardown;
    s->L = cm_runtime_lua(cm_runtime_of(L));
    lua_pushvalue(L, fn);
    s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->box = box;
    *box = s;
    return s;
}

static int l_on_signal(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    int signum = 0;
    for (int i = 0; signal_names[i].name != NULL; i++)
        if (strcmp(signal_names[i].name, name) == 0) signum = signal_names[i].signum;
    if (signum == 0) return luaL_error(L, "unknown signal '%s'", name);
    signal_obj_t *s = new_signal_obj(L, 2);
    uv_signal_init(cm_loop(L), &s->handle.signal);
    s->handle.signal.data = s;
    uv_signal_start(&s->handle.signal, signal_cb, signum);
    return 1;
}

static void hangup_cb(uv_poll_t *h, int status, int events)
{
    (void)events;
    signal_obj_t *s = h->data;
    /* The write end of a pipe is never readable: any event is the error
     * (EPOLLERR) the kernel reports once the last reader has closed. */
    (void)status;
    uv_poll_stop(h);
    if (cm_runtime_closing(cm_runtime_of(s->L)) || s->fn_ref == LUA_NOREF) return;
    cm_callback(s->L, s->fn_ref, 0);
}

/* on_hangup(fd, fn) -> watcher: fn() runs once when the last reader of the
 * pipe fd goes away (`chat-manager logs | head` after head exits), so a
 * writer that has nothing to write learns it at once.  Returns nil and a
 * reason when fd is not a pipe (a terminal or a file has no reader to
 * lose). */
static int l_on_hangup(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    struct stat st;
    if (fstat(fd, &st) != 0) return cm_fail(L, "EBADF", "fd %d: %s", fd, strerror(errno));
    if (!S_ISFIFO(st.st_mode)) return cm_fail(L, "ENOTPIPE", "fd %d is not a pipe", fd);
    /* uv_poll_init makes the fd non-blocking; the pipe is our stdout, which
     * stdio writes expect to block when the reader is slow (and which other
     * writers of the pipeline share), so its flags are put back: epoll works
     * on a blocking fd as well. */
    int flags = fcntl(fd, F_GETFL);
    signal_obj_t *s = new_signal_obj(L, 2);
    int rc = uv_poll_init(cm_loop(L), &s->handle.poll, fd);
    if (flags != -1) fcntl(fd, F_SETFL, flags);
    if (rc != 0) {
        /* No handle to close: drop the record by hand. */
        *s->box = NULL;
        luaL_unref(L, LUA_REGISTRYINDEX, s->fn_ref);
        free(s);
        return cm_fail(L, "EIO", "fd %d: %s", fd, uv_strerror(rc));
    }
    s->handle.poll.data = s;
    rc = uv_poll_start(&s->handle.poll, UV_READABLE, hangup_cb);
    if (rc != 0) {
        signal_close(s, 1);
        return cm_fail(L, "EIO", "fd %d: %s", fd, uv_strerror(rc));
    }
    return 1;
}

static int l_signal_close(lua_State *L)
{
    signal_obj_t **box = luaL_checkudata(L, 1, SIGNAL_MT);
    if (*box != NULL) signal_close(*box, 1);
    return 0;
}

/* Like timers, a signal watcher lives until closed, not until collected. */
static int l_signal_gc(lua_State *L)
{
    signal_obj_t **box = luaL_checkudata(L, 1, SIGNAL_MT);
    if (*box != NULL) (*box)->box = NULL;
    return 0;
}

int cm__open_sys(lua_State *L)
{
    static const luaL_Reg methods[] = {{"close", l_signal_close}, {NULL, NULL}};
    if (luaL_newmetatable(L, SIGNAL_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_signal_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"getenv", l_getenv},
                                   {"setenv", l_setenv},
                                   {"environ", l_environ},
                                   {"isatty", l_isatty},
                                   {"pid", l_pid},
                                   {"cwd", l_cwd},
                                   {"exe", l_exe},
                                   {"write", l_write},
                                   {"exit", l_exit},
                                   {"cloexec", l_cloexec},
                                   {"exec", l_exec},
                                   {"notify", l_notify},
                                   {"on_signal", l_on_signal},
                                   {"on_hangup", l_on_hangup},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_pushcfunction(L, l_limit);
    lua_setfield(L, -2, "limit");
    lua_pushcfunction(L, l_uid);
    lua_setfield(L, -2, "uid");
    return 1;
}

/* ---- the session log --------------------------------------------------- */

/* One per process: the supervisor has one session log at a time. */
static int log_fd = -1;
static char log_path[PATH_MAX];

static int l_log_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return cm_fail(L, "EIO", "%s: %s", path, strerror(errno));
    if (log_fd >= 0) close(log_fd);
    log_fd = fd;
    snprintf(log_path, sizeof log_path, "%s", path);
    lua_pushboolean(L, 1);
    return 1;
}

/* Appends one manager event line.  A failed write (disk full) is reported
 * to the caller, never fatal: the app keeps running either way. */
static int l_log_event(lua_State *L)
{
    const char *msg = luaL_checkstring(L, 1);
    if (log_fd < 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    lua_pushfstring(L, "%s [chat-manager] %s\n", stamp, msg);
    size_t len;
    const char *line = lua_tolstring(L, -1, &len);
    ssize_t n = write(log_fd, line, len); /* O_APPEND: one write, one line */
    if (n < 0 || (size_t)n != len)
        return cm_fail(L, "EIO", "%s: %s", log_path, n < 0 ? strerror(errno) : "short write");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_log_path(lua_State *L)
{
    if (log_fd < 0) return 0;
    lua_pushstring(L, log_path);
    return 1;
}

static int l_log_fd(lua_State *L)
{
    if (log_fd < 0) return 0;
    lua_pushinteger(L, log_fd);
    return 1;
}

int cm__open_log(lua_State *L)
{
    static const luaL_Reg fns[] = {{"open", l_log_open},
                                   {"event", l_log_event},
                                   {"path", l_log_path},
                                   {"fd", l_log_fd},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
