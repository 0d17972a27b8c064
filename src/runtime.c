/*
 * The runtime: the libuv loop, the Lua state, the embedded scripts and the
 * task scheduler (see runtime.h for the model).
 *
 * A task is a Lua thread plus a small record (cm_task_t, a full userdata).
 * While a task runs, the registry holds both, so neither is collected; the
 * record's address is kept in the thread's extra space, which is how a
 * primitive finds the task it is parking.  Threads made by Lua's own
 * coroutine.create have NULL there and so cannot park: a primitive called
 * from one raises a clear error instead of hanging.
 */
#include "runtime.h"

#include "scripts.h"
#include "cm_modules.h"

#include <errno.h>
#include <lualib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { TASK_RUNNING, TASK_DONE, TASK_FAILED };

struct cm_task {
    lua_State *co;        /* the task's thread */
    cm_runtime_t *rt;     /* the runtime it runs on */
    int self_ref;         /* registry ref to this userdata while running */
    int thread_ref;       /* registry ref to the thread while running */
    int status;           /* TASK_RUNNING, TASK_DONE or TASK_FAILED */
    int parked;           /* set by cm_waiter_yield, cleared on resume */
    int results_ref;      /* table {n=, ...} or the error message */
    int report_errors;    /* callbacks report their own failures */
    cm_waiter_t *joiners; /* tasks waiting in task:join() */
    size_t njoiners, capjoiners;
};

typedef struct closer {
    void (*fn)(void *);
    void *data;
    struct closer *next;
} closer_t;

struct cm_runtime {
    uv_loop_t loop;
    lua_State *L;
    cm_task_t *main_task; /* the task cm_runtime_run waits for */
    int closing;          /* set once teardown began: nothing resumes */
    int in_run;           /* cm_runtime_run is inside uv_run */
    int warn_continuing;  /* a Lua warning is being continued */
    closer_t *closers;
    size_t mem_used; /* Lua's heap in bytes, tracked once mem_cap is set */
    size_t mem_cap;  /* 0: no cap */
};

#define TASK_MT "cm.task"
#define ERROR_HANDLER_KEY "cm.error_handler"

/* Lua's allocator.  With a cap (cm_runtime_limit_memory), growth past it
 * fails, which Lua reports as "not enough memory" after an emergency
 * collection. */
static void *runtime_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    cm_runtime_t *rt = ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        rt->mem_used -= old;
        return NULL;
    }
    if (rt->mem_cap != 0 && nsize > old && nsize - old > rt->mem_cap - rt->mem_used) return NULL;
    void *p = realloc(ptr, nsize);
    if (p != NULL) rt->mem_used = rt->mem_used - old + nsize;
    return p;
}

void cm_runtime_limit_memory(lua_State *L, size_t bytes)
{
    cm_runtime_t *rt = cm_runtime_of(L);
    rt->mem_used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    rt->mem_cap = rt->mem_used + bytes;
}

cm_runtime_t *cm_runtime_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

uv_loop_t *cm_loop(lua_State *L)
{
    return &cm_runtime_of(L)->loop;
}

lua_State *cm_runtime_lua(cm_runtime_t *rt)
{
    return rt->L;
}

uv_loop_t *cm_runtime_loop(cm_runtime_t *rt)
{
    return &rt->loop;
}

double cm_now_ms(void)
{
    return (double)uv_hrtime() / 1e6;
}

uint64_t cm_ms(lua_State *L, int arg, lua_Number ms)
{
    if (isnan(ms) || isinf(ms)) luaL_argerror(L, arg, "milliseconds must be a finite number");
    if (!(ms > 0)) return 0;
    if (ms > CM_MAX_MS) return (uint64_t)CM_MAX_MS;
    return (uint64_t)ms;
}

int cm_timer_start(uv_timer_t *t, uv_timer_cb cb, uint64_t timeout, uint64_t repeat)
{
    uv_update_time(t->loop);
    return uv_timer_start(t, cb, timeout, repeat);
}

/* ---- protected calls and error reports -------------------------------- */

/* Turns any error object into a message with a traceback. */
static int traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int cm_pcall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs; /* the function's slot */
    lua_pushcfunction(L, traceback_handler);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}

void cm_report_error(lua_State *L, const char *where)
{
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = "(error object is not a string)";
    lua_getfield(L, LUA_REGISTRYINDEX, ERROR_HANDLER_KEY); /* [msg, handler] */
    if (lua_isfunction(L, -1)) {
        lua_pushfstring(L, "%s: %s", where, msg); /* [msg, handler, text] */
        if (cm_pcall(L, 1, 0) == LUA_OK) {
            lua_pop(L, 1);
            return;
        }
        fprintf(stderr, "[ERROR] error handler failed: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    } else {
        lua_pop(L, 1);
    }
    fprintf(stderr, "[ERROR] %s: %s\n", where, msg);
    lua_pop(L, 1);
}

/* ---- tasks ------------------------------------------------------------- */

static cm_task_t *task_of(lua_State *co)
{
    return *(cm_task_t **)lua_getextraspace(co);
}

/* Makes a task of the function below `nargs` arguments on L and runs it until
 * it first parks or ends.  Leaves the task userdata on L. */
static cm_task_t *task_start(lua_State *L, int nargs, int report_errors);

static void task_finish(cm_task_t *t, int ok)
{
    lua_State *L = t->rt->L;
    t->status = ok ? TASK_DONE : TASK_FAILED;
    *(cm_task_t **)lua_getextraspace(t->co) = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->thread_ref);
    t->thread_ref = LUA_NOREF;
    t->co = NULL;

    if (!ok && t->report_errors && t->njoiners == 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->results_ref); /* [msg] */
        cm_report_error(L, "callback");
    }
    if (t == t->rt->main_task && t->rt->in_run) uv_stop(&t->rt->loop);

    /* Wake the joiners with `true, results...` or `false, message`. */
    for (size_t i = 0; i < t->njoiners; i++) {
        cm_waiter_t *w = &t->joiners[i];
        lua_State *jco = cm_waiter_thread(w);
        if (jco == NULL) continue;
        lua_rawgeti(jco, LUA_REGISTRYINDEX, t->results_ref); /* [res] */
        int n = 1;
        if (ok) {
            int count = (int)(lua_getfield(jco, -1, "n"), lua_tointeger(jco, -1));
            lua_pop(jco, 1);
            luaL_checkstack(jco, count + 2, "too many results");
            lua_pushboolean(jco, 1);
            for (int k = 1; k <= count; k++)
                lua_rawgeti(jco, -1 - k, k);
            lua_remove(jco, -2 - count); /* drop res */
            n = count + 1;
        } else {
            lua_pushboolean(jco, 0);
            lua_insert(jco, -2); /* [false, msg] */
            n = 2;
        }
        cm_waiter_resume(w, n);
    }
    t->njoiners = 0;
    /* Last: the userdata may be collected once this ref is gone. */
    int self = t->self_ref;
    t->self_ref = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, self);
}

/* Resumes a task with `nargs` values on its stack and handles how it stops. */
static void task_resume(cm_task_t *t, int nargs)
{
    lua_State *co = t->co;
    lua_State *L = t->rt->L;
    int nres = 0;
    t->parked = 0;
    int status = lua_resume(co, L, nargs, &nres);
    if (status == LUA_YIELD) {
        lua_pop(co, nres);
        if (t->parked) return; /* a primitive will resume it */
        lua_pushliteral(co, "coroutine.yield() called directly in a task "
                            "(only cm primitives may suspend a task)");
        status = LUA_ERRRUN;
    }
    if (status == LUA_OK) {
        luaL_checkstack(L, nres + 2, "too many results");
        lua_createtable(L, nres, 1); /* [res] */
        lua_xmove(co, L, nres);      /* [res, r1..rn] */
        for (int k = nres; k >= 1; k--)
            lua_rawseti(L, -(k + 1), k); /* pops rk */
        lua_pushinteger(L, nres);
        lua_setfield(L, -2, "n");
        t->results_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [] */
        task_finish(t, 1);
        return;
    }
    /* An error: the thread's stack is intact, so the traceback is real. */
    const char *msg = lua_tostring(co, -1);
    if (msg == NULL)
        msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
    luaL_traceback(L, co, msg, 0); /* [text] */
    t->results_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    task_finish(t, 0);
}

static cm_task_t *task_start(lua_State *L, int nargs, int report_errors)
{
    cm_runtime_t *rt = cm_runtime_of(L);
    luaL_checktype(L, -nargs - 1, LUA_TFUNCTION);

    cm_task_t *t = lua_newuserdatauv(L, sizeof *t, 0); /* [fn, args.., task] */
    memset(t, 0, sizeof *t);
    t->rt = rt;
    t->status = TASK_RUNNING;
    t->results_ref = LUA_NOREF;
    t->report_errors = report_errors;
    luaL_setmetatable(L, TASK_MT);
    lua_insert(L, -nargs - 2); /* [task, fn, args..] */

    t->co = lua_newthread(L); /* [task, fn, args.., co] */
    *(cm_task_t **)lua_getextraspace(t->co) = t;
    t->thread_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [task, fn, args..] */
    lua_xmove(L, t->co, nargs + 1);                 /* [task] */
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    task_resume(t, nargs);
    return t;
}

void cm_callback(lua_State *L, int ref, int nargs)
{
    cm_runtime_t *rt = cm_runtime_of(L);
    if (rt->closing) {
        lua_pop(L, nargs);
        return;
    }
    luaL_checkstack(L, 2, NULL);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref); /* [args.., fn] */
    lua_insert(L, -nargs - 1);              /* [fn, args..] */
    task_start(L, nargs, 1);                /* [task] */
    lua_pop(L, 1);
}

/* ---- waiters ----------------------------------------------------------- */

void cm_waiter_begin(lua_State *L, cm_waiter_t *w)
{
    cm_task_t *t = task_of(L);
    if (t == NULL)
        luaL_error(L, "this function waits on the event loop, so it must run in a task "
                      "(cm.task.spawn), not in a plain coroutine");
    if (!lua_isyieldable(L))
        luaL_error(L, "this function waits on the event loop and cannot be called here "
                      "(inside a machine action, a metamethod or a C callback); "
                      "spawn a task for it");
    w->task = t;
    w->rt = t->rt;
}

int cm_waiter_yield(lua_State *L)
{
    task_of(L)->parked = 1;
    return lua_yield(L, 0);
}

lua_State *cm_waiter_thread(const cm_waiter_t *w)
{
    if (w->task == NULL || w->rt->closing) return NULL;
    return w->task->co;
}

void cm_waiter_resume(cm_waiter_t *w, int nargs)
{
    cm_task_t *t = w->task;
    if (t == NULL || w->rt->closing) return;
    w->task = NULL;
    task_resume(t, nargs);
}

int cm_runtime_closing(cm_runtime_t *rt)
{
    return rt->closing;
}

/* ---- cm.task ----------------------------------------------------------- */

static int l_task_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    task_start(L, lua_gettop(L) - 1, 0);
    return 1;
}

static int l_task_join(lua_State *L)
{
    cm_task_t *t = luaL_checkudata(L, 1, TASK_MT);
    if (t->status != TASK_RUNNING) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->results_ref); /* [res] */
        if (t->status == TASK_FAILED) {
            lua_pushboolean(L, 0);
            lua_insert(L, -2);
            return 2;
        }
        lua_getfield(L, -1, "n");
        int n = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        luaL_checkstack(L, n + 1, "too many results");
        lua_pushboolean(L, 1);
        for (int k = 1; k <= n; k++)
            lua_rawgeti(L, -1 - k, k);
        return n + 1;
    }
    if (task_of(L) == t) return luaL_error(L, "a task cannot join itself");
    cm_waiter_t w;
    cm_waiter_begin(L, &w);
    if (t->njoiners == t->capjoiners) {
        size_t cap = t->capjoiners ? t->capjoiners * 2 : 4;
        cm_waiter_t *grown = realloc(t->joiners, cap * sizeof *grown);
        if (grown == NULL) return luaL_error(L, "out of memory");
        t->joiners = grown;
        t->capjoiners = cap;
    }
    t->joiners[t->njoiners++] = w;
    return cm_waiter_yield(L);
}

static int l_task_done(lua_State *L)
{
    cm_task_t *t = luaL_checkudata(L, 1, TASK_MT);
    lua_pushboolean(L, t->status != TASK_RUNNING);
    return 1;
}

static int l_task_gc(lua_State *L)
{
    cm_task_t *t = luaL_checkudata(L, 1, TASK_MT);
    if (t->results_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, t->results_ref);
    t->results_ref = LUA_NOREF;
    free(t->joiners);
    t->joiners = NULL;
    return 0;
}

static int l_set_error_handler(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, ERROR_HANDLER_KEY);
    return 0;
}

/* ---- cm.task.event: wake parked tasks from Lua ------------------------- */

/* An event is set once with values; every task waiting on it (now or later)
 * gets those values.  wait() takes an optional timeout, so each waiter has
 * its own timer. */
#define EVENT_MT "cm.event"

typedef struct event_wait {
    cm_owner_t owner;
    uv_timer_t timer;
    cm_waiter_t waiter;
    struct event_wait *next;
    struct event_obj *event; /* NULL once the event is gone */
} event_wait_t;

typedef struct event_obj {
    int is_set;
    int values_ref;        /* table {n=, ...} once set */
    event_wait_t *waiters; /* parked tasks */
} event_obj_t;

static void event_wait_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static void event_unlink(struct event_obj *e, event_wait_t *w);

static void event_wait_teardown(cm_owner_t *owner)
{
    event_wait_t *w = (event_wait_t *)owner;
    if (w->event != NULL) event_unlink(w->event, w);
    w->event = NULL;
    if (!uv_is_closing((uv_handle_t *)&w->timer))
        uv_close((uv_handle_t *)&w->timer, event_wait_free_cb);
}

static void event_unlink(event_obj_t *e, event_wait_t *w)
{
    for (event_wait_t **p = &e->waiters; *p != NULL; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            return;
        }
    }
}

static void event_timeout_cb(uv_timer_t *t)
{
    event_wait_t *w = t->data;
    if (w->event != NULL) event_unlink(w->event, w);
    uv_close((uv_handle_t *)t, event_wait_free_cb);
    lua_State *co = cm_waiter_thread(&w->waiter);
    if (co == NULL) return;
    lua_pushnil(co);
    lua_pushliteral(co, "timeout");
    cm_waiter_resume(&w->waiter, 2);
}

/* Pushes the event's values (from the registry table) on co; returns n. */
static int event_push_values(lua_State *co, int values_ref)
{
    lua_rawgeti(co, LUA_REGISTRYINDEX, values_ref); /* [vals] */
    lua_getfield(co, -1, "n");
    int n = (int)lua_tointeger(co, -1);
    lua_pop(co, 1);
    luaL_checkstack(co, n + 1, "too many values");
    for (int k = 1; k <= n; k++)
        lua_rawgeti(co, -k, k);
    lua_remove(co, -n - 1); /* [v1..vn] */
    return n;
}

static int l_event_new(lua_State *L)
{
    event_obj_t *e = lua_newuserdatauv(L, sizeof *e, 0);
    memset(e, 0, sizeof *e);
    e->values_ref = LUA_NOREF;
    luaL_setmetatable(L, EVENT_MT);
    return 1;
}

static int l_event_wait(lua_State *L)
{
    event_obj_t *e = luaL_checkudata(L, 1, EVENT_MT);
    lua_Number timeout = luaL_optnumber(L, 2, -1);
    uint64_t ms = cm_ms(L, 2, timeout); /* may raise: first */
    if (e->is_set) return event_push_values(L, e->values_ref);
    cm_waiter_t waiter;
    cm_waiter_begin(L, &waiter);
    event_wait_t *w = malloc(sizeof *w);
    if (w == NULL) return luaL_error(L, "out of memory");
    w->owner.teardown = event_wait_teardown;
    w->waiter = waiter;
    w->event = e;
    w->next = e->waiters;
    e->waiters = w;
    uv_timer_init(cm_loop(L), &w->timer);
    w->timer.data = w;
    if (!(timeout < 0)) cm_timer_start(&w->timer, event_timeout_cb, ms, 0);
    return cm_waiter_yield(L);
}

static int l_event_set(lua_State *L)
{
    event_obj_t *e = luaL_checkudata(L, 1, EVENT_MT);
    if (e->is_set) return 0;
    int n = lua_gettop(L) - 1;
    lua_createtable(L, n, 1); /* [e, v1..vn, vals] */
    for (int k = 1; k <= n; k++) {
        lua_pushvalue(L, k + 1);
        lua_rawseti(L, -2, k);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    e->values_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    e->is_set = 1;
    /* Detach the list first: a woken task may wait on this event again. */
    event_wait_t *w = e->waiters;
    e->waiters = NULL;
    while (w != NULL) {
        event_wait_t *next = w->next;
        w->event = NULL;
        uv_close((uv_handle_t *)&w->timer, event_wait_free_cb);
        lua_State *co = cm_waiter_thread(&w->waiter);
        if (co != NULL) cm_waiter_resume(&w->waiter, event_push_values(co, e->values_ref));
        w = next;
    }
    return 0;
}

static int l_event_is_set(lua_State *L)
{
    event_obj_t *e = luaL_checkudata(L, 1, EVENT_MT);
    lua_pushboolean(L, e->is_set);
    return 1;
}

static int l_event_gc(lua_State *L)
{
    event_obj_t *e = luaL_checkudata(L, 1, EVENT_MT);
    /* Waiting tasks hold the event on their stacks, so none is left here
     * unless the runtime is closing: their timers are closed by teardown. */
    for (event_wait_t *w = e->waiters; w != NULL; w = w->next)
        w->event = NULL;
    e->waiters = NULL;
    if (e->values_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, e->values_ref);
    e->values_ref = LUA_NOREF;
    return 0;
}

int cm__open_task(lua_State *L)
{
    static const luaL_Reg methods[] = {{"join", l_task_join}, {"done", l_task_done}, {NULL, NULL}};
    if (luaL_newmetatable(L, TASK_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_task_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg event_methods[] = {
        {"wait", l_event_wait}, {"set", l_event_set}, {"is_set", l_event_is_set}, {NULL, NULL}};
    if (luaL_newmetatable(L, EVENT_MT)) {
        luaL_newlib(L, event_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_event_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"spawn", l_task_spawn}, {"event", l_event_new}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}

/* ---- the runtime ------------------------------------------------------- */

/* Lua 5.4 turns errors in __gc into warnings; they must not vanish.  The
 * state passed as `ud` remembers whether a message is being continued, since
 * control messages ("@on") only ever come alone. */
static void warn_to_stderr(void *ud, const char *msg, int tocont)
{
    int *continuing = ud;
    if (!*continuing && msg[0] == '@') return;
    fprintf(stderr, "%s%s%s", *continuing ? "" : "[WARNING] Lua: ", msg, tocont ? "" : "\n");
    *continuing = tocont;
}

static int open_cm(lua_State *L)
{
    cm__open_all(L);
    lua_pushcfunction(L, cm_scripts_modules);
    lua_setfield(L, -2, "modules");
    lua_pushcfunction(L, l_set_error_handler);
    lua_setfield(L, -2, "set_error_handler");
    return 1;
}

cm_runtime_t *cm_runtime_new(void)
{
    cm_runtime_t *rt = calloc(1, sizeof *rt);
    if (rt == NULL) return NULL;
    if (uv_loop_init(&rt->loop) != 0) {
        free(rt);
        return NULL;
    }
    rt->L = lua_newstate(runtime_alloc, rt);
    if (rt->L == NULL) {
        uv_loop_close(&rt->loop);
        free(rt);
        return NULL;
    }
    lua_State *L = rt->L;
    *(cm_task_t **)lua_getextraspace(L) = NULL;
    lua_setwarnf(L, warn_to_stderr, &rt->warn_continuing);
    luaL_openlibs(L);
    cm_scripts_register(L);
    luaL_requiref(L, "cm", open_cm, 1); /* [cm] */
    lua_pop(L, 1);
    return rt;
}

void cm_runtime_on_close(cm_runtime_t *rt, void (*fn)(void *), void *data)
{
    closer_t *c = malloc(sizeof *c);
    if (c == NULL) abort();
    c->fn = fn;
    c->data = data;
    c->next = rt->closers;
    rt->closers = c;
}

int cm_runtime_run(cm_runtime_t *rt, int nargs)
{
    lua_State *L = rt->L;
    cm_task_t *t = task_start(L, nargs, 0); /* [task] */
    rt->main_task = t;
    while (t->status == TASK_RUNNING) {
        rt->in_run = 1;
        int alive = uv_run(&rt->loop, UV_RUN_DEFAULT);
        rt->in_run = 0;
        if (alive == 0 && t->status == TASK_RUNNING) {
            fprintf(stderr, "[ERROR] internal error: the main task waits but nothing is pending\n");
            lua_pop(L, 1);
            rt->main_task = NULL;
            return 1;
        }
    }
    rt->main_task = NULL;
    int code = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->results_ref); /* [task, res] */
    if (t->status == TASK_FAILED) {
        fprintf(stderr, "[ERROR] %s\n", lua_tostring(L, -1));
        code = 1;
    } else {
        lua_rawgeti(L, -1, 1); /* [task, res, r1] */
        if (lua_isinteger(L, -1))
            code = (int)lua_tointeger(L, -1);
        else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1))
            code = 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    return code;
}

/* Asks the owner of every handle still open to close it (see the handle
 * ownership rule in runtime.h). */
static void teardown_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h)) return;
    cm_owner_t *owner = h->data;
    if (owner != NULL && owner->teardown != NULL)
        owner->teardown(owner);
    else
        uv_close(h, NULL);
}

int cm_runtime_free(cm_runtime_t *rt)
{
    if (rt == NULL) return 0;
    rt->closing = 1;
    for (closer_t *c = rt->closers, *next; c != NULL; c = next) {
        next = c->next;
        c->fn(c->data);
        free(c);
    }
    rt->closers = NULL;
    /* Handles first, while Lua is still open (owners clear the userdata that
     * point at them), then the close callbacks, then Lua, whose __gc methods
     * now find nothing left to close. */
    uv_walk(&rt->loop, teardown_walk_cb, NULL);
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    lua_close(rt->L);
    rt->L = NULL;
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&rt->loop);
    if (rc != 0) fprintf(stderr, "[WARNING] event loop closed busy\n");
    free(rt);
    return rc;
}

/* ---- small helpers for primitives ------------------------------------- */

int cm_fail(lua_State *L, const char *code, const char *fmt, ...)
{
    va_list ap;
    lua_pushnil(L);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushstring(L, code);
    return 3;
}

void cm_set_int(lua_State *L, const char *key, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, key);
}

void cm_set_num(lua_State *L, const char *key, lua_Number v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, key);
}

void cm_set_str(lua_State *L, const char *key, const char *v)
{
    if (v == NULL) return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, key);
}

void cm_set_lstr(lua_State *L, const char *key, const char *v, size_t len)
{
    lua_pushlstring(L, v, len);
    lua_setfield(L, -2, key);
}

void cm_set_bool(lua_State *L, const char *key, int v)
{
    lua_pushboolean(L, v);
    lua_setfield(L, -2, key);
}

lua_Integer cm_opt_int_field(lua_State *L, int idx, const char *key, lua_Integer def)
{
    if (lua_type(L, idx) != LUA_TTABLE) return def;
    lua_getfield(L, idx, key);
    lua_Integer v = def;
    if (lua_isnumber(L, -1))
        v = (lua_Integer)lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1)) {
        lua_pop(L, 1);
        luaL_error(L, "option '%s' must be a number", key);
    }
    lua_pop(L, 1);
    return v;
}

lua_Number cm_opt_num_field(lua_State *L, int idx, const char *key, lua_Number def)
{
    if (lua_type(L, idx) != LUA_TTABLE) return def;
    lua_getfield(L, idx, key);
    lua_Number v = def;
    if (lua_isnumber(L, -1))
        v = lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1)) {
        lua_pop(L, 1);
        luaL_error(L, "option '%s' must be a number", key);
    }
    lua_pop(L, 1);
    return v;
}

int cm_opt_bool_field(lua_State *L, int idx, const char *key, int def)
{
    if (lua_type(L, idx) != LUA_TTABLE) return def;
    lua_getfield(L, idx, key);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

const char *cm_opt_str_field(lua_State *L, int idx, const char *key, const char *def)
{
    if (lua_type(L, idx) != LUA_TTABLE) return def;
    lua_getfield(L, idx, key);
    const char *v = def;
    if (lua_type(L, -1) == LUA_TSTRING)
        v = lua_tostring(L, -1);
    else if (!lua_isnil(L, -1)) {
        lua_pop(L, 1);
        luaL_error(L, "option '%s' must be a string", key);
    }
    /* The string stays alive: it is referenced by the table at idx. */
    lua_pop(L, 1);
    return v;
}
