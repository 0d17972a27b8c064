/*
 * What the cm.proc files share (lua_proc.c, lua_proc_run.c,
 * lua_proc_wait.c): signal arguments, exit codes, errno failures, and jobs.
 *
 * The waits (run, wait_exit, wait_group, read_fd) are jobs: one malloc'd
 * struct that embeds its libuv handles, points every handle's data at itself
 * (handle ownership rule, owner.h) and is freed by the close callback of its
 * last handle.
 */
#ifndef CM_LUA_PROC_H
#define CM_LUA_PROC_H

#include "fsutil.h"
#include "proc.h"
#include "runtime.h"

#include <lauxlib.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Where a program is looked up when neither `env` nor we have a PATH. */
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

/* The signal at idx: nil (TERM), a number 0..64 or a name such as "TERM" or
 * "SIGKILL".  An unknown name is a programming error and raises. */
static inline int check_signal(lua_State *L, int idx)
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
static inline lua_Integer exit_code(int64_t status, int term_signal)
{
    return term_signal != 0 ? 128 + term_signal : (lua_Integer)status;
}

static inline int fail_errno(lua_State *L, int err, const char *what)
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

static inline void job_release(job_t *job)
{
    if (--job->open_handles > 0) return;
    if (job->destroy != NULL)
        job->destroy(job);
    else
        free(job);
}

static inline void job_close_cb(uv_handle_t *h)
{
    job_release(h->data);
}

/* Counts a freshly initialised handle as the job's. */
static inline void job_adopt(job_t *job, void *handle)
{
    ((uv_handle_t *)handle)->data = job;
    job->open_handles++;
}

/* Idempotent: a closed handle stays "closing" for libuv. */
static inline void job_close(void *handle)
{
    uv_handle_t *h = handle;
    if (!uv_is_closing(h)) uv_close(h, job_close_cb);
}

/* The primitives of lua_proc_run.c and lua_proc_wait.c (named as in the
 * module table of lua_proc.c). */
int l_run(lua_State *L);
int l_spawn(lua_State *L);
int l_wait_exit(lua_State *L);
int l_wait_group(lua_State *L);
int l_pipe(lua_State *L);
int l_close_fd(lua_State *L);
int l_read_fd(lua_State *L);

/* Registers the metatable of spawn's child userdata. */
void cm__proc_child_metatable(lua_State *L);

#endif
