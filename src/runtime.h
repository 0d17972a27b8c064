/*
 * The runtime: one libuv loop, one Lua state, and the task scheduler that lets
 * Lua code wait on the loop without blocking it.
 *
 * Every piece of Lua runs in a task (a Lua thread owned by the scheduler).  A
 * C primitive that has to wait (a timer, a child process, a socket, an HTTP
 * transfer) starts the libuv work, parks the calling task with
 * cm_waiter_begin() + cm_waiter_yield(), and the libuv callback later pushes
 * the results onto the task and calls cm_waiter_resume().  Lua code therefore
 * reads top to bottom while any number of waits run at the same time.
 *
 * The C <-> Lua boundary has one protected-call helper (cm_pcall); an error
 * raised in a task is caught at the task's edge and reported, never allowed
 * to unwind through libuv or curl frames.
 */
#ifndef CM_RUNTIME_H
#define CM_RUNTIME_H

#include "owner.h"

#include <lua.h>
#include <lauxlib.h>
#include <uv.h>

typedef struct cm_runtime cm_runtime_t;
typedef struct cm_task cm_task_t;

/* A parked task, waiting for a libuv callback to resume it. */
typedef struct cm_waiter {
    cm_task_t *task;  /* NULL when nobody waits (cancelled or already resumed) */
    cm_runtime_t *rt; /* the runtime, to know whether it is closing */
} cm_waiter_t;

/* Creates the loop and the Lua state with the standard libraries, the `cm`
 * module (also a global) and the embedded scripts in package.preload. */
cm_runtime_t *cm_runtime_new(void);

/* Closes every handle still open, drains the loop and closes Lua.  Returns
 * 0 when the loop then closed empty, else the libuv error of uv_loop_close
 * (a handle that its owner's teardown left open: a bug the tests assert). */
int cm_runtime_free(cm_runtime_t *rt);

lua_State *cm_runtime_lua(cm_runtime_t *rt);
uv_loop_t *cm_runtime_loop(cm_runtime_t *rt);

/* The runtime a Lua state (or any of its threads) belongs to. */
cm_runtime_t *cm_runtime_of(lua_State *L);
uv_loop_t *cm_loop(lua_State *L);

/* Runs the function below `nargs` arguments on the main Lua stack as the main
 * task and drives the loop until it ends.  Returns an exit code: the integer
 * the function returned, 0 for nil/true, 1 for false or an error (the error
 * and its traceback are printed on stderr). */
int cm_runtime_run(cm_runtime_t *rt, int nargs);

/* Registers a function called by cm_runtime_free before the handles are
 * closed (the HTTP engine uses it to stop curl). */
void cm_runtime_on_close(cm_runtime_t *rt, void (*fn)(void *), void *data);

/* The one protected call into Lua: lua_pcall with a traceback handler.  On
 * error the message (with traceback) is left on the stack. */
int cm_pcall(lua_State *L, int nargs, int nresults);

/* Reports the error message on top of L (and pops it): through the Lua
 * handler set by cm.set_error_handler when there is one, else on stderr.
 * `where` says what was running ("timer callback"). */
void cm_report_error(lua_State *L, const char *where);

/* Parks the running task.  Raises a Lua error (so call it before acquiring
 * any C resource) when L is not a task or cannot yield here. */
void cm_waiter_begin(lua_State *L, cm_waiter_t *w);

/* Ends a primitive that parked its task: `return cm_waiter_yield(L);`. */
int cm_waiter_yield(lua_State *L);

/* The thread to push the results on before cm_waiter_resume(), or NULL when
 * there is nobody to resume (cancelled, or the runtime is closing): then push
 * nothing and do not call into Lua. */
lua_State *cm_waiter_thread(const cm_waiter_t *w);

/* Resumes the parked task with the `nargs` values pushed on its thread.  Does
 * nothing (and drops the values) when the waiter was cancelled or the runtime
 * is closing. */
void cm_waiter_resume(cm_waiter_t *w, int nargs);

/* True once cm_runtime_free began: callbacks must not call into Lua. */
int cm_runtime_closing(cm_runtime_t *rt);

/* Calls the Lua function held in the registry under `ref` in a new task, with
 * `nargs` arguments taken from the top of the main stack (check
 * cm_runtime_closing before pushing them).  Used for every
 * callback coming from libuv (timers, signals, child exits); an error in it
 * is reported, never fatal. */
void cm_callback(lua_State *L, int ref, int nargs);

/* Pushes nil, a formatted message and an error code string (the
 * "nil, message, code" convention of failing primitives); returns 3. */
int cm_fail(lua_State *L, const char *code, const char *fmt, ...);

/* Sets t[key] = value helpers for building result tables (table on top). */
void cm_set_int(lua_State *L, const char *key, lua_Integer v);
void cm_set_num(lua_State *L, const char *key, lua_Number v);
void cm_set_str(lua_State *L, const char *key, const char *v);
void cm_set_lstr(lua_State *L, const char *key, const char *v, size_t len);
void cm_set_bool(lua_State *L, const char *key, int v);

/* Reads optional fields of the table at `idx`. */
lua_Integer cm_opt_int_field(lua_State *L, int idx, const char *key, lua_Integer def);
lua_Number cm_opt_num_field(lua_State *L, int idx, const char *key, lua_Number def);
int cm_opt_bool_field(lua_State *L, int idx, const char *key, int def);
/* Returns a string valid while the table is on the stack, or def. */
const char *cm_opt_str_field(lua_State *L, int idx, const char *key, const char *def);

/* Caps Lua's heap at what it holds now plus `bytes`, for good (the child
 * that runs user code): allocations past it fail ("not enough memory"). */
void cm_runtime_limit_memory(lua_State *L, size_t bytes);

/* Milliseconds on the monotonic clock. */
double cm_now_ms(void);

/* The one conversion of a Lua duration in milliseconds (argument `arg`,
 * value `ms`) to a libuv timeout: NaN and infinities raise an argument error
 * (a finite wait was meant), a negative value is 0, and a value beyond
 * CM_MAX_MS (about 31 years) is CM_MAX_MS. */
#define CM_MAX_MS 1e12
uint64_t cm_ms(lua_State *L, int arg, lua_Number ms);

#endif
