/*
 * cm.proc.run and cm.proc.spawn: building a command (argv, env, cwd, the
 * PATH lookup), running a helper to completion with its output, and
 * spawning a child that Lua holds as a userdata.  The uv_process_t behind a
 * child lives until the child exits (closed in the exit callback), whether
 * or not Lua still holds the userdata.
 */
#include "lua_proc.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHILD_MT "cm.proc.child"
#define DEFAULT_MAX_OUTPUT (1024 * 1024)
#define READ_CHUNK 65536
#define MAX_EXTRA_FDS 16

/* ---- building a command: argv, env, cwd, PATH lookup -------------------- */

typedef struct cmd {
    const char *prog; /* argv[0] as given, for messages */
    char *file;       /* what to exec: argv[0], resolved on PATH */
    char **args;      /* argv, NULL-terminated */
    char **env;       /* "K=V" entries, NULL-terminated; NULL inherits ours */
    const char *cwd;  /* NULL: ours */
    int lookup_err;   /* 0, or -errno of the PATH lookup */
    int cwd_err;      /* 0, or -errno when cwd is not a directory */
} cmd_t;

/* A bump allocator over one Lua userdata: Lua owns the memory, so an error
 * raised halfway through building a command leaks nothing. */
typedef struct arena {
    char *next;
    char *end;
} arena_t;

static void *arena_take(arena_t *a, size_t n)
{
    uintptr_t at = ((uintptr_t)a->next + 7u) & ~(uintptr_t)7u;
    a->next = (char *)(at + n);
    return (void *)at; /* sized in advance by cmd_build, never past end */
}

static char *arena_strdup(arena_t *a, const char *s, size_t len)
{
    char *copy = arena_take(a, len + 1);
    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

/* Reads argv, env and cwd from the options table at `opts` into *cmd and
 * resolves argv[0] on PATH.  Raises on malformed options (before any C
 * resource exists); pushes the arena, which must stay on the stack until
 * uv_spawn returns, and a few temporaries.  Failures of the outside world
 * (no such program, no such cwd) are left in lookup_err / cwd_err. */
static void cmd_build(lua_State *L, int opts, cmd_t *cmd)
{
    opts = lua_absindex(L, opts);
    memset(cmd, 0, sizeof *cmd);
    luaL_checktype(L, opts, LUA_TTABLE);
    cmd->cwd = cm_opt_str_field(L, opts, "cwd", NULL);

    /* Pass 1: check types and size everything. */
    size_t need = 64 + PATH_MAX;
    lua_getfield(L, opts, "argv"); /* [argv] */
    int argv_idx = lua_gettop(L);
    if (!lua_istable(L, argv_idx) || lua_rawlen(L, argv_idx) == 0)
        luaL_error(L, "option 'argv' must be a non-empty list of strings");
    size_t argc = lua_rawlen(L, argv_idx);
    need += (argc + 1) * sizeof(char *);
    for (size_t i = 1; i <= argc; i++) {
        lua_rawgeti(L, argv_idx, (lua_Integer)i); /* [argv, arg] */
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            luaL_error(L, "argv[%d] must be a string (got %s)", (int)i, luaL_typename(L, -1));
        size_t len;
        lua_tolstring(L, -1, &len); /* converts the stack copy only */
        need += len + 8;
        lua_pop(L, 1); /* [argv] */
    }

    lua_getfield(L, opts, "env"); /* [argv, env] */
    int env_idx = lua_gettop(L);
    size_t nenv = 0;
    if (!lua_isnil(L, env_idx)) {
        if (!lua_istable(L, env_idx)) luaL_error(L, "option 'env' must be a table of strings");
        lua_pushnil(L);                     /* [argv, env, nil] */
        while (lua_next(L, env_idx) != 0) { /* [argv, env, key, value] */
            int vt = lua_type(L, -1);
            if (lua_type(L, -2) != LUA_TSTRING || strchr(lua_tostring(L, -2), '=') != NULL)
                luaL_error(L, "env keys must be strings without '='");
            if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
                luaL_error(L, "env.%s must be a string (got %s)", lua_tostring(L, -2),
                           luaL_typename(L, -1));
            size_t klen, vlen;
            lua_tolstring(L, -2, &klen);
            lua_tolstring(L, -1, &vlen); /* the value slot is a copy: safe for lua_next */
            need += klen + vlen + 16 + sizeof(char *);
            nenv++;
            lua_pop(L, 1); /* [argv, env, key] */
        }
        need += sizeof(char *);
    }

    /* Pass 2: copy into the arena. */
    arena_t a;
    a.next = lua_newuserdatauv(L, need, 0); /* [argv, env, arena] */
    a.end = a.next + need;
    cmd->args = arena_take(&a, (argc + 1) * sizeof(char *));
    for (size_t i = 1; i <= argc; i++) {
        lua_rawgeti(L, argv_idx, (lua_Integer)i); /* [argv, env, arena, arg] */
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        cmd->args[i - 1] = arena_strdup(&a, s, len);
        lua_pop(L, 1); /* [argv, env, arena] */
    }
    cmd->args[argc] = NULL;
    cmd->prog = cmd->args[0];

    const char *path = NULL;
    if (!lua_isnil(L, env_idx)) {
        cmd->env = arena_take(&a, (nenv + 1) * sizeof(char *));
        size_t k = 0;
        lua_pushnil(L);                     /* [argv, env, arena, nil] */
        while (lua_next(L, env_idx) != 0) { /* [argv, env, arena, key, value] */
            size_t klen, vlen;
            const char *key = lua_tolstring(L, -2, &klen);
            const char *val = lua_tolstring(L, -1, &vlen);
            char *entry = arena_take(&a, klen + vlen + 2);
            memcpy(entry, key, klen);
            entry[klen] = '=';
            memcpy(entry + klen + 1, val, vlen);
            entry[klen + 1 + vlen] = '\0';
            if (strcmp(key, "PATH") == 0) path = entry + klen + 1;
            cmd->env[k++] = entry;
            lua_pop(L, 1); /* [argv, env, arena, key] */
        }
        cmd->env[k] = NULL;
    }

    /* The child's PATH decides where argv[0] is found: the one in `env` when
     * given, else ours.  libuv 1.44 leaves the search to execvp after it has
     * swapped environ, other versions search the parent's PATH; searching
     * here gives the same answer everywhere, and a clean ENOENT early. */
    if (path == NULL) path = getenv("PATH");
    if (path == NULL) path = DEFAULT_PATH;
    cmd->file = arena_take(&a, PATH_MAX);
    assert(a.next <= a.end); /* `need` counted every take, with its alignment */
    if (strchr(cmd->prog, '/') != NULL) {
        snprintf(cmd->file, PATH_MAX, "%s", cmd->prog);
    } else {
        cmd->lookup_err = cm_proc_find_program(cmd->prog, path, cmd->cwd, cmd->file, PATH_MAX);
    }

    if (cmd->cwd != NULL) {
        struct stat st;
        if (stat(cmd->cwd, &st) != 0)
            cmd->cwd_err = -errno;
        else if (!S_ISDIR(st.st_mode))
            cmd->cwd_err = -ENOTDIR;
    }
}

/* Pushes the failure for a command that cannot start, or returns 0. */
static int cmd_fail(lua_State *L, const cmd_t *cmd, int uv_err)
{
    if (cmd->cwd_err != 0)
        return cm_fail(L, uv_err_name(cmd->cwd_err), "%s: %s", cmd->cwd,
                       cmd->cwd_err == -ENOENT ? "no such directory" : strerror(-cmd->cwd_err));
    int err = cmd->lookup_err != 0 ? cmd->lookup_err : uv_err;
    if (err == 0) return 0;
    if (err == UV_ENOENT) return cm_fail(L, "ENOENT", "%s: command not found", cmd->prog);
    if (err == UV_EACCES) return cm_fail(L, "EACCES", "%s: permission denied", cmd->prog);
    return cm_fail(L, uv_err_name(err), "%s: %s", cmd->prog, uv_strerror(err));
}

static void cmd_options(const cmd_t *cmd, uv_process_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->file = cmd->file;
    o->args = cmd->args;
    o->env = cmd->env;
    o->cwd = cmd->cwd;
}

/* ---- run ------------------------------------------------------------------ */

typedef struct outbuf {
    char *data;
    size_t len;
    size_t cap;
    int eof; /* EOF seen, or the pipe was given up */
} outbuf_t;

typedef struct run_job {
    job_t job; /* first */
    uv_process_t proc;
    uv_pipe_t out_pipe;
    uv_pipe_t err_pipe;
    uv_timer_t timer;
    outbuf_t out;
    outbuf_t err;
    size_t max_output; /* per stream */
    int spawned;       /* proc.pid is our unreaped child's, or was */
    int exited;
    int timed_out;
    int truncated;
    int64_t exit_status;
    int term_signal;
    double started_ms;
    char chunk[READ_CHUNK]; /* libuv reads into it, one read at a time */
} run_job_t;

static void run_destroy(job_t *job)
{
    run_job_t *r = (run_job_t *)job;
    free(r->out.data);
    free(r->err.data);
    free(r);
}

/* The run's child is the leader of its own process group (it was started
 * in a new session), so SIGKILL to the group also ends whatever it forked.
 * The group id is still ours to signal: the leader is unreaped, or its pid
 * stays reserved while the group has members. */
static void run_kill(run_job_t *r)
{
    if (!r->spawned) return;
    if (kill(-r->proc.pid, SIGKILL) != 0 && !r->exited) kill(r->proc.pid, SIGKILL);
}

static void run_teardown(cm_owner_t *owner)
{
    run_job_t *r = (run_job_t *)owner;
    /* The runtime is going away mid-run: nobody will read the result, and
     * the helper must not outlive us. */
    if (!r->exited) run_kill(r);
    r->exited = 1;
    r->job.finished = 1;
    job_close(&r->proc);
    job_close(&r->out_pipe);
    job_close(&r->err_pipe);
    job_close(&r->timer);
}

static void run_maybe_finish(run_job_t *r)
{
    if (r->job.finished || !r->exited || !r->out.eof || !r->err.eof) return;
    r->job.finished = 1;
    job_close(&r->timer);
    lua_State *T = cm_waiter_thread(&r->job.waiter);
    if (T != NULL) {
        lua_createtable(T, 0, 8); /* [res] */
        cm_set_int(T, "code", exit_code(r->exit_status, r->term_signal));
        cm_set_int(T, "signal", r->term_signal);
        cm_set_lstr(T, "stdout", r->out.data != NULL ? r->out.data : "", r->out.len);
        cm_set_lstr(T, "stderr", r->err.data != NULL ? r->err.data : "", r->err.len);
        cm_set_num(T, "ms", cm_now_ms() - r->started_ms);
        cm_set_bool(T, "timed_out", r->timed_out);
        cm_set_bool(T, "truncated", r->truncated);
    }
    cm_waiter_resume(&r->job.waiter, 1);
}

/* Stops reading one output pipe for good (EOF, error or timeout). */
static void run_stream_done(uv_pipe_t *pipe, outbuf_t *buf)
{
    if (buf->eof) return;
    buf->eof = 1;
    uv_read_stop((uv_stream_t *)pipe);
    job_close(pipe);
}

static void run_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    run_job_t *r = h->data;
    (void)suggested;
    buf->base = r->chunk;
    buf->len = sizeof r->chunk;
}

/* Keeps at most max_output bytes; the rest is read and dropped so that the
 * child never blocks on a full pipe. */
static void outbuf_append(run_job_t *r, outbuf_t *b, const char *data, size_t n)
{
    size_t room = r->max_output - b->len;
    if (n > room) {
        r->truncated = 1;
        n = room;
    }
    if (n == 0) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > r->max_output) cap = r->max_output;
        char *grown = realloc(b->data, cap);
        if (grown == NULL) {
            r->truncated = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void run_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    run_job_t *r = s->data;
    int is_out = s == (uv_stream_t *)&r->out_pipe;
    outbuf_t *b = is_out ? &r->out : &r->err;
    if (nread > 0) {
        outbuf_append(r, b, buf->base, (size_t)nread);
        return;
    }
    if (nread == 0) return; /* EAGAIN */
    run_stream_done(is_out ? &r->out_pipe : &r->err_pipe, b);
    run_maybe_finish(r);
}

static void run_exit_cb(uv_process_t *p, int64_t status, int term_signal)
{
    run_job_t *r = p->data;
    r->exited = 1;
    /* Reaped with its group already empty: the id is free for the system to
     * give to another group, which a later timeout must not signal. */
    if (kill(-r->proc.pid, 0) != 0) r->spawned = 0;
    r->exit_status = status;
    r->term_signal = term_signal;
    job_close(p);
    run_maybe_finish(r);
}

static void run_timeout_cb(uv_timer_t *t)
{
    run_job_t *r = t->data;
    r->timed_out = 1;
    run_kill(r);
    /* Something outside the group (a daemonised grandchild) may still hold
     * the pipes: stop waiting for their EOF. */
    run_stream_done(&r->out_pipe, &r->out);
    run_stream_done(&r->err_pipe, &r->err);
    run_maybe_finish(r);
}

/* run{argv, cwd, env, timeout, max_output} -> result | nil, msg, code (waits) */
int l_run(lua_State *L)
{
    cmd_t cmd;
    cmd_build(L, 1, &cmd); /* [opts, ..., arena] */
    uint64_t timeout = cm_ms(L, 1, cm_opt_num_field(L, 1, "timeout", 0));
    lua_Integer max_output = cm_opt_int_field(L, 1, "max_output", DEFAULT_MAX_OUTPUT);
    if (max_output < 0) return luaL_error(L, "option 'max_output' must not be negative");
    cm_waiter_t w;
    cm_waiter_begin(L, &w);
    /* From here on nothing raises: failures are returned. */
    if (cmd_fail(L, &cmd, 0)) return 3;

    run_job_t *r = calloc(1, sizeof *r);
    if (r == NULL) return cm_fail(L, "ENOMEM", "out of memory");
    r->job.owner.teardown = run_teardown;
    r->job.destroy = run_destroy;
    r->job.waiter = w;
    r->max_output = (size_t)max_output;
    uv_loop_t *loop = cm_loop(L);
    uv_pipe_init(loop, &r->out_pipe, 0);
    job_adopt(&r->job, &r->out_pipe);
    uv_pipe_init(loop, &r->err_pipe, 0);
    job_adopt(&r->job, &r->err_pipe);
    uv_timer_init(loop, &r->timer);
    job_adopt(&r->job, &r->timer);

    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE; /* libuv gives the child /dev/null */
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&r->out_pipe;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&r->err_pipe;
    uv_process_options_t o;
    cmd_options(&cmd, &o);
    o.stdio = stdio;
    o.stdio_count = 3;
    o.exit_cb = run_exit_cb;
    /* Its own session, hence its own process group: a timeout kills all it
     * started, not only the direct child. */
    o.flags = UV_PROCESS_DETACHED;

    r->proc.data = r;
    r->started_ms = cm_now_ms();
    int rc = uv_spawn(loop, &r->proc, &o);
    job_adopt(&r->job, &r->proc); /* initialised even when the spawn failed */
    if (rc != 0) {
        r->exited = 1;
        run_teardown(&r->job.owner);
        return cmd_fail(L, &cmd, rc);
    }
    r->spawned = 1;
    if (uv_read_start((uv_stream_t *)&r->out_pipe, run_alloc_cb, run_read_cb) != 0)
        run_stream_done(&r->out_pipe, &r->out);
    if (uv_read_start((uv_stream_t *)&r->err_pipe, run_alloc_cb, run_read_cb) != 0)
        run_stream_done(&r->err_pipe, &r->err);
    if (timeout > 0) cm_timer_start(&r->timer, run_timeout_cb, timeout, 0);
    return cm_waiter_yield(L);
}

/* ---- spawn and the child userdata --------------------------------------- */

typedef struct child_proc child_proc_t;

typedef struct child_box { /* the Lua userdata */
    child_proc_t *proc;    /* NULL once the child was reaped (or the runtime closed) */
    lua_Integer pid;
} child_box_t;

struct child_proc {
    cm_owner_t owner; /* first */
    uv_process_t proc;
    lua_State *L;     /* the main state, for on_exit */
    int on_exit_ref;  /* LUA_NOREF when there is no callback */
    child_box_t *box; /* the userdata while Lua holds it, or NULL */
};

static void child_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static void child_detach_box(child_proc_t *c)
{
    if (c->box != NULL) c->box->proc = NULL;
    c->box = NULL;
}

static void child_teardown(cm_owner_t *owner)
{
    child_proc_t *c = (child_proc_t *)owner;
    /* The child itself lives on (the app must survive us); only our handle
     * on it goes.  The callback ref dies with the Lua state. */
    child_detach_box(c);
    if (!uv_is_closing((uv_handle_t *)&c->proc)) uv_close((uv_handle_t *)&c->proc, child_free_cb);
}

static void child_exit_cb(uv_process_t *p, int64_t status, int term_signal)
{
    child_proc_t *c = p->data;
    lua_State *L = c->L;
    int ref = c->on_exit_ref;
    c->on_exit_ref = LUA_NOREF;
    /* libuv has reaped it: from now on its pid may be anybody's. */
    child_detach_box(c);
    uv_close((uv_handle_t *)p, child_free_cb);
    if (ref == LUA_NOREF || cm_runtime_closing(cm_runtime_of(L))) return;
    lua_pushinteger(L, exit_code(status, term_signal)); /* [code] */
    lua_pushinteger(L, term_signal);                    /* [code, signal] */
    cm_callback(L, ref, 2);                             /* [] */
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

/* An optional fd option: -1 when absent. */
static int opt_fd_field(lua_State *L, int idx, const char *key)
{
    lua_Integer fd = cm_opt_int_field(L, idx, key, -1);
    if (fd < -1 || fd > INT_MAX) luaL_error(L, "option '%s' must be a file descriptor", key);
    return (int)fd;
}

/* spawn{argv, cwd, env, stdout_fd, stderr_fd, stdin, new_session, detach,
 * extra_fds, on_exit} -> child | nil, msg, code */
int l_spawn(lua_State *L)
{
    cmd_t cmd;
    uv_stdio_container_t stdio[3 + MAX_EXTRA_FDS];
    int nstdio = 3;

    /* Everything that can raise comes first. */
    cmd_build(L, 1, &cmd); /* [opts, ..., arena] */
    const char *in = cm_opt_str_field(L, 1, "stdin", "null");
    int out_fd = opt_fd_field(L, 1, "stdout_fd");
    int err_fd = opt_fd_field(L, 1, "stderr_fd");
    int new_session = cm_opt_bool_field(L, 1, "new_session", 0);
    int detach = cm_opt_bool_field(L, 1, "detach", 0);
    if (strcmp(in, "null") == 0) {
        stdio[0].flags = UV_IGNORE; /* libuv gives fds 0-2 /dev/null when ignored */
    } else if (strcmp(in, "inherit") == 0) {
        stdio[0].flags = UV_INHERIT_FD;
        stdio[0].data.fd = 0;
    } else {
        return luaL_error(L, "option 'stdin' must be \"null\" or \"inherit\"");
    }
    stdio[1].flags = out_fd >= 0 ? UV_INHERIT_FD : UV_IGNORE;
    stdio[1].data.fd = out_fd;
    stdio[2].flags = err_fd >= 0 ? UV_INHERIT_FD : UV_IGNORE;
    stdio[2].data.fd = err_fd;

    lua_getfield(L, 1, "extra_fds"); /* [.., extra] */
    if (!lua_isnil(L, -1)) {
        luaL_argcheck(L, lua_istable(L, -1), 1, "option 'extra_fds' must be a list of fds");
        size_t n = lua_rawlen(L, -1);
        if (n > MAX_EXTRA_FDS) return luaL_error(L, "at most %d extra_fds", MAX_EXTRA_FDS);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i); /* [.., extra, fd] */
            int isnum;
            lua_Integer fd = lua_tointegerx(L, -1, &isnum);
            if (!isnum || fd < 0 || fd > INT_MAX)
                return luaL_error(L, "extra_fds[%d] must be an fd", (int)i);
            /* libuv dup2()s it onto 3, 4, ... in the child, and dup2 clears
             * close-on-exec on the copy: a pipe2(O_CLOEXEC) end survives. */
            stdio[nstdio].flags = UV_INHERIT_FD;
            stdio[nstdio].data.fd = (int)fd;
            nstdio++;
            lua_pop(L, 1); /* [.., extra] */
        }
    }
    lua_pop(L, 1); /* [..] */

    lua_getfield(L, 1, "on_exit"); /* [.., on_exit] */
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        return luaL_error(L, "option 'on_exit' must be a function");
    int has_callback = lua_isfunction(L, -1);

    child_box_t *box = lua_newuserdatauv(L, sizeof *box, 0); /* [.., on_exit, box] */
    box->proc = NULL;
    box->pid = 0;
    luaL_setmetatable(L, CHILD_MT);

    /* The outside world's failures are answers, not errors. */
    if (cmd_fail(L, &cmd, 0)) return 3;
    for (int i = 0; i < nstdio; i++) {
        if ((stdio[i].flags & UV_INHERIT_FD) && fcntl(stdio[i].data.fd, F_GETFD) < 0)
            return cm_fail(L, "EBADF", "fd %d is not open", stdio[i].data.fd);
    }

    child_proc_t *c = malloc(sizeof *c);
    if (c == NULL) return cm_fail(L, "ENOMEM", "out of memory");
    c->owner.teardown = child_teardown;
    c->L = cm_runtime_lua(cm_runtime_of(L));
    c->box = NULL;
    c->on_exit_ref = LUA_NOREF;
    c->proc.data = c;

    uv_process_options_t o;
    cmd_options(&cmd, &o);
    o.stdio = stdio;
    o.stdio_count = nstdio;
    o.exit_cb = child_exit_cb;
    /* DETACHED is setsid(): its own session and process group (pgid == pid),
     * which is what lets the supervisor signal the app's whole group. */
    if (new_session || detach) o.flags |= UV_PROCESS_DETACHED;

    int rc = uv_spawn(cm_loop(L), &c->proc, &o);
    if (rc != 0) {
        uv_close((uv_handle_t *)&c->proc, child_free_cb); /* initialised even so */
        return cmd_fail(L, &cmd, rc);
    }
    /* detach: the loop must not wait for it, and it outlives us. */
    if (detach) uv_unref((uv_handle_t *)&c->proc);
    if (has_callback) {
        lua_pushvalue(L, -2);                            /* [.., on_exit, box, on_exit] */
        c->on_exit_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [.., on_exit, box] */
    }
    c->box = box;
    box->proc = c;
    box->pid = c->proc.pid;
    return 1;
}

static int l_child_kill(lua_State *L)
{
    child_box_t *box = luaL_checkudata(L, 1, CHILD_MT);
    int sig = check_signal(L, 2);
    if (box->proc == NULL) return cm_fail(L, "ESRCH", "process %d has exited", (int)box->pid);
    int rc = uv_process_kill(&box->proc->proc, sig);
    if (rc != 0) return cm_fail(L, uv_err_name(rc), "kill %d: %s", (int)box->pid, uv_strerror(rc));
    lua_pushboolean(L, 1);
    return 1;
}

/* child.pid, child:kill(sig) */
static int l_child_index(lua_State *L)
{
    child_box_t *box = luaL_checkudata(L, 1, CHILD_MT);
    if (lua_type(L, 2) != LUA_TSTRING) return 0;
    const char *key = lua_tostring(L, 2);
    if (strcmp(key, "pid") == 0) {
        lua_pushinteger(L, box->pid);
        return 1;
    }
    lua_getfield(L, lua_upvalueindex(1), key); /* [box, key, method] */
    return 1;
}

static int l_child_tostring(lua_State *L)
{
    child_box_t *box = luaL_checkudata(L, 1, CHILD_MT);
    lua_pushfstring(L, "cm.proc.child(%d%s)", (int)box->pid, box->proc ? "" : ", exited");
    return 1;
}

/* Lua forgetting the child changes nothing for the child: it runs on and
 * on_exit still fires.  Only the back pointer goes. */
static int l_child_gc(lua_State *L)
{
    child_box_t *box = luaL_checkudata(L, 1, CHILD_MT);
    if (box->proc != NULL) box->proc->box = NULL;
    box->proc = NULL;
    return 0;
}

void cm__proc_child_metatable(lua_State *L)
{
    static const luaL_Reg child_methods[] = {{"kill", l_child_kill}, {NULL, NULL}};
    if (luaL_newmetatable(L, CHILD_MT)) {      /* [mt] */
        luaL_newlib(L, child_methods);         /* [mt, methods] */
        lua_pushcclosure(L, l_child_index, 1); /* [mt, index] */
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_child_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_child_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1); /* [] */
}
