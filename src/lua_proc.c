/*
 * cm.proc: running, spawning, signalling and watching processes (the Lua API
 * is in docs/lua-api.md; the /proc parsing is in proc.c).
 *
 * The waits (run, wait_exit, wait_group, read_fd) are jobs: one malloc'd
 * struct that embeds its libuv handles, points every handle's data at itself
 * (handle ownership rule, runtime.h) and is freed by the close callback of
 * its last handle.  spawn hands Lua a child userdata; the uv_process_t
 * behind it lives until the child exits (closed in the exit callback),
 * whether or not Lua still holds the userdata.
 *
 * Safety (DESIGN §9): kill() and kill_group() refuse pids and groups <= 1,
 * so a bad pid file can never signal init or "every process"; a child
 * userdata refuses to signal once its child has been reaped, since its pid
 * may then belong to someone else.
 */
#include "cm_modules.h"
#include "fsutil.h"
#include "proc.h"
#include "runtime.h"

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

#define CHILD_MT "cm.proc.child"
#define DEFAULT_MAX_OUTPUT (1024 * 1024)
#define READ_CHUNK 65536
#define MAX_EXTRA_FDS 16
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"
#define FALLBACK_TICK_MS 10

/* ---- small helpers ------------------------------------------------------ */

/* The signal at idx: nil (TERM), a number 0..64 or a name such as "TERM" or
 * "SIGKILL".  An unknown name is a programming error and raises. */
static int check_signal(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return SIGTERM;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer sig = luaL_checkinteger(L, idx);
        luaL_argcheck(L, sig >= 0 && sig <= 64, idx, "signal number out of range");
        return (int)sig;
    }
    const char *name = luaL_checkstring(L, idx);
    int sig = cm_proc_signal_number(name);
    if (sig < 0) luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
    return sig;
}

/* libuv reports a death by signal as status 0 + the signal; Lua gets the
 * shell's convention instead (128 + signal), so `code == 0` always means a
 * clean exit. */
static lua_Integer exit_code(int64_t status, int term_signal)
{
    return term_signal != 0 ? 128 + term_signal : (lua_Integer)status;
}

static int fail_errno(lua_State *L, int err, const char *what)
{
    return cm_fail(L, cm_errno_code(err), "%s: %s", what, strerror(err));
}

/* ---- jobs: a parked task plus the handles it waits on ------------------ */

typedef struct job {
    cm_owner_t owner;              /* first: every handle's data points here */
    cm_waiter_t waiter;            /* the parked task */
    int open_handles;              /* initialised handles not yet closed */
    int finished;                  /* resumed, or answered without parking */
    void (*destroy)(struct job *); /* frees the job; NULL: free() */
} job_t;

static void job_release(job_t *job)
{
    if (--job->open_handles > 0) return;
    if (job->destroy != NULL)
        job->destroy(job);
    else
        free(job);
}

static void job_close_cb(uv_handle_t *h)
{
    job_release(h->data);
}

/* Counts a freshly initialised handle as the job's. */
static void job_adopt(job_t *job, void *handle)
{
    ((uv_handle_t *)handle)->data = job;
    job->open_handles++;
}

/* Idempotent: a closed handle stays "closing" for libuv. */
static void job_close(void *handle)
{
    uv_handle_t *h = handle;
    if (!uv_is_closing(h)) uv_close(h, job_close_cb);
}

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
static int l_run(lua_State *L)
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
static int l_spawn(lua_State *L)
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

/* ---- wait_exit and wait_group ---------------------------------------------- */

typedef struct pid_watch {
    uv_poll_t poll; /* first; data: the job */
    int pidfd;
} pid_watch_t;

typedef struct wait_job {
    job_t job; /* first */
    uv_timer_t deadline;
    uv_timer_t tick;    /* FALLBACK_TICK_MS re-checks when pidfds are missing */
    pid_watch_t *watch; /* the process being polled, or NULL */
    pid_t id;           /* the pid, or the pgid when `group` */
    int group;
} wait_job_t;

static void watch_close_cb(uv_handle_t *h)
{
    pid_watch_t *w = (pid_watch_t *)h;
    job_t *job = h->data;
    close(w->pidfd); /* only now: libuv must stop polling an fd before it closes */
    free(w);
    job_release(job);
}

static void wait_drop_watch(wait_job_t *wj)
{
    if (wj->watch == NULL) return;
    uv_close((uv_handle_t *)&wj->watch->poll, watch_close_cb);
    wj->watch = NULL;
}

static void wait_close_all(wait_job_t *wj)
{
    wj->job.finished = 1;
    wait_drop_watch(wj);
    job_close(&wj->deadline);
    job_close(&wj->tick);
}

static void wait_teardown(cm_owner_t *owner)
{
    wait_close_all((wait_job_t *)owner);
}

static void wait_finish(wait_job_t *wj, int gone)
{
    if (wj->job.finished) return;
    wait_close_all(wj);
    lua_State *T = cm_waiter_thread(&wj->job.waiter);
    if (T != NULL) lua_pushboolean(T, gone);
    cm_waiter_resume(&wj->job.waiter, 1);
}

static int wait_still_there(const wait_job_t *wj)
{
    return wj->group ? cm_proc_group_alive(wj->id) : cm_proc_alive(wj->id);
}

static void wait_poll_cb(uv_poll_t *h, int status, int events);

static void wait_tick_cb(uv_timer_t *t)
{
    wait_job_t *wj = t->data;
    if (!wait_still_there(wj)) wait_finish(wj, 1);
}

/* Starts watching the next process the wait depends on: the pid itself, or
 * the lowest live member of the group.  Returns 1 when there is none left
 * (the wait is over), 0 when a pidfd poll or the fallback tick is armed. */
static int wait_arm(wait_job_t *wj)
{
    for (int tries = 0; tries < 100; tries++) {
        pid_t pid = wj->group ? cm_proc_group_lowest(wj->id) : (cm_proc_alive(wj->id) ? wj->id : 0);
        if (pid == 0) return 1;
        int fd = cm_proc_pidfd_open(pid);
        if (fd < 0 && errno == ESRCH) continue; /* gone meanwhile: look again */
        if (fd < 0) break;                      /* no pidfds here (ENOSYS, a sandbox) */
        /* The pidfd pins one process; make sure it is the one the scan saw
         * (a pid may be reused between the scan and the open). */
        cm_proc_stat_t st;
        if (cm_proc_read_stat(pid, &st) != 0 || st.state == 'Z' || st.state == 'X' ||
            (wj->group && st.pgid != wj->id)) {
            close(fd);
            continue;
        }
        pid_watch_t *w = malloc(sizeof *w);
        if (w == NULL) {
            close(fd);
            break;
        }
        w->pidfd = fd;
        if (uv_poll_init(wj->deadline.loop, &w->poll, fd) != 0) {
            close(fd);
            free(w);
            break;
        }
        job_adopt(&wj->job, &w->poll);
        wj->watch = w;
        uv_poll_start(&w->poll, UV_READABLE, wait_poll_cb);
        return 0;
    }
    if (!uv_is_active((uv_handle_t *)&wj->tick))
        cm_timer_start(&wj->tick, wait_tick_cb, FALLBACK_TICK_MS, FALLBACK_TICK_MS);
    return 0;
}

static void wait_poll_cb(uv_poll_t *h, int status, int events)
{
    wait_job_t *wj = h->data;
    (void)status;
    (void)events;
    /* A pidfd turns readable when its process has exited (an error means
     * the same for us): look at what is left. */
    wait_drop_watch(wj);
    if (wait_arm(wj)) wait_finish(wj, 1);
}

static void wait_deadline_cb(uv_timer_t *t)
{
    wait_finish(t->data, 0);
}

static int do_wait(lua_State *L, int group)
{
    lua_Integer id = luaL_checkinteger(L, 1);
    uint64_t timeout = cm_ms(L, 2, luaL_checknumber(L, 2));
    cm_waiter_t w;
    cm_waiter_begin(L, &w);
    if (id <= 0 || id > INT_MAX)
        return cm_fail(L, "EINVAL", "invalid %s: %d", group ? "process group" : "pid", (int)id);

    wait_job_t probe = {.id = (pid_t)id, .group = group};
    if (!wait_still_there(&probe)) { /* already gone: no need to park */
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!(timeout > 0)) {
        lua_pushboolean(L, 0);
        return 1;
    }

    wait_job_t *wj = calloc(1, sizeof *wj);
    if (wj == NULL) return cm_fail(L, "ENOMEM", "out of memory");
    wj->job.owner.teardown = wait_teardown;
    wj->job.waiter = w;
    wj->id = (pid_t)id;
    wj->group = group;
    uv_timer_init(cm_loop(L), &wj->deadline);
    job_adopt(&wj->job, &wj->deadline);
    uv_timer_init(cm_loop(L), &wj->tick);
    job_adopt(&wj->job, &wj->tick);
    if (wait_arm(wj)) { /* it went while we looked */
        wait_close_all(wj);
        lua_pushboolean(L, 1);
        return 1;
    }
    cm_timer_start(&wj->deadline, wait_deadline_cb, timeout, 0);
    return cm_waiter_yield(L);
}

/* wait_exit(pid, timeout) -> true (gone) | false (timed out)  (waits) */
static int l_wait_exit(lua_State *L)
{
    return do_wait(L, 0);
}

/* wait_group(pgid, timeout) -> true | false  (waits) */
static int l_wait_group(lua_State *L)
{
    return do_wait(L, 1);
}

/* ---- pipes and fds ------------------------------------------------------- */

static int l_pipe(lua_State *L)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return fail_errno(L, errno, "pipe");
    lua_pushinteger(L, fds[0]);
    lua_pushinteger(L, fds[1]);
    return 2;
}

static int l_close_fd(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    if (fd < 0 || fd > INT_MAX) return cm_fail(L, "EBADF", "bad file descriptor: %d", (int)fd);
    /* On Linux the fd is gone even when close reports EINTR. */
    if (close((int)fd) != 0 && errno != EINTR) return fail_errno(L, errno, "close");
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct read_job {
    job_t job; /* first */
    uv_pipe_t pipe;
    uv_timer_t deadline;
    char chunk[READ_CHUNK];
} read_job_t;

static void read_teardown(cm_owner_t *owner)
{
    read_job_t *rj = (read_job_t *)owner;
    rj->job.finished = 1;
    job_close(&rj->pipe);
    job_close(&rj->deadline);
}

static void read_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    read_job_t *rj = h->data;
    (void)suggested;
    buf->base = rj->chunk;
    buf->len = sizeof rj->chunk;
}

/* Ends the read: `nread` bytes of data, 0 for EOF, or a negative libuv error
 * (UV_ETIMEDOUT for our own deadline). */
static void read_finish(read_job_t *rj, ssize_t nread)
{
    if (rj->job.finished) return;
    uv_read_stop((uv_stream_t *)&rj->pipe);
    read_teardown(&rj->job.owner);
    lua_State *T = cm_waiter_thread(&rj->job.waiter);
    int n = 1;
    if (T != NULL) {
        if (nread > 0)
            lua_pushlstring(T, rj->chunk, (size_t)nread); /* the chunk outlives the close */
        else if (nread == 0)
            lua_pushnil(T);
        else if (nread == UV_ETIMEDOUT)
            n = cm_fail(T, "timeout", "timeout");
        else
            n = cm_fail(T, uv_err_name((int)nread), "read: %s", uv_strerror((int)nread));
    }
    cm_waiter_resume(&rj->job.waiter, n);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread == 0) return; /* EAGAIN */
    read_finish(s->data, nread == UV_EOF ? 0 : nread);
}

static void read_deadline_cb(uv_timer_t *t)
{
    read_finish(t->data, UV_ETIMEDOUT);
}

/* read_fd(fd, timeout) -> data | nil (EOF) | nil, "timeout", "timeout"  (waits)
 * Reads from a dup of fd, so the caller's fd stays open; note that the pipe
 * becomes non-blocking (the flag belongs to the shared open file). */
static int l_read_fd(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    uint64_t timeout = cm_ms(L, 2, luaL_checknumber(L, 2));
    cm_waiter_t w;
    cm_waiter_begin(L, &w);
    if (fd < 0 || fd > INT_MAX) return cm_fail(L, "EBADF", "bad file descriptor: %d", (int)fd);
    int copy = fcntl((int)fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) return fail_errno(L, errno, "read_fd");

    read_job_t *rj = calloc(1, sizeof *rj);
    if (rj == NULL) {
        close(copy);
        return cm_fail(L, "ENOMEM", "out of memory");
    }
    rj->job.owner.teardown = read_teardown;
    rj->job.waiter = w;
    uv_pipe_init(cm_loop(L), &rj->pipe, 0);
    job_adopt(&rj->job, &rj->pipe);
    uv_timer_init(cm_loop(L), &rj->deadline);
    job_adopt(&rj->job, &rj->deadline);
    int rc = uv_pipe_open(&rj->pipe, copy);
    if (rc != 0) {
        close(copy); /* not adopted by the pipe */
        read_teardown(&rj->job.owner);
        return cm_fail(L, uv_err_name(rc), "read_fd %d: %s", (int)fd, uv_strerror(rc));
    }
    rc = uv_read_start((uv_stream_t *)&rj->pipe, read_alloc_cb, read_cb);
    if (rc != 0) {
        read_teardown(&rj->job.owner);
        return cm_fail(L, uv_err_name(rc), "read_fd %d: %s", (int)fd, uv_strerror(rc));
    }
    cm_timer_start(&rj->deadline, read_deadline_cb, timeout, 0);
    return cm_waiter_yield(L);
}

/* ---- the module ---------------------------------------------------------- */

int cm__open_proc(lua_State *L)
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
        {"which", l_which},
        {"wait_exit", l_wait_exit},
        {"wait_group", l_wait_group},
        {"set_subreaper", l_set_subreaper},
        {"reap_orphans", l_reap_orphans},
        {"pipe", l_pipe},
        {"read_fd", l_read_fd},
        {"close_fd", l_close_fd},
        {NULL, NULL},
    };
    luaL_newlib(L, fns); /* [proc] */
    return 1;
}
