/*
 * cm.time: clocks, sleeping and timers on the loop.
 *
 * sleep() parks its task on a one-shot uv_timer; timer() calls a Lua
 * function from a fresh task each time it fires.  Both timers are malloc'd
 * and freed in their close callbacks (handle ownership rule, runtime.h).
 */
#include "cm_modules.h"
#include "runtime.h"

#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

#define TIMER_MT "cm.timer"

/* ---- sleep ------------------------------------------------------------- */

typedef struct sleep_req {
    cm_owner_t owner; /* first: see the handle ownership rule */
    uv_timer_t timer;
    cm_waiter_t waiter;
} sleep_req_t;

static void sleep_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static void sleep_teardown(cm_owner_t *owner)
{
    sleep_req_t *r = (sleep_req_t *)owner;
    if (!uv_is_closing((uv_handle_t *)&r->timer)) uv_close((uv_handle_t *)&r->timer, sleep_free_cb);
}

static void sleep_done_cb(uv_timer_t *t)
{
    sleep_req_t *r = t->data;
    uv_close((uv_handle_t *)t, sleep_free_cb);
    cm_waiter_resume(&r->waiter, 0);
}

static int l_sleep(lua_State *L)
{
    uint64_t ms = cm_ms(L, 1, luaL_checknumber(L, 1));
    cm_waiter_t w;
    cm_waiter_begin(L, &w);
    sleep_req_t *r = malloc(sizeof *r);
    if (r == NULL) return luaL_error(L, "out of memory");
    r->owner.teardown = sleep_teardown;
    r->waiter = w;
    uv_timer_init(cm_loop(L), &r->timer);
    r->timer.data = r;
    cm_timer_start(&r->timer, sleep_done_cb, ms, 0);
    return cm_waiter_yield(L);
}

/* ---- timers with callbacks -------------------------------------------- */

typedef struct timer_obj {
    cm_owner_t owner;
    uv_timer_t timer;
    lua_State *L;           /* the main state, for callbacks */
    int fn_ref;             /* the Lua callback */
    struct timer_obj **box; /* the userdata slot pointing here, or NULL */
} timer_obj_t;

static void timer_free_cb(uv_handle_t *h)
{
    free(h->data);
}

/* Stops the timer for good: drops the callback and closes the handle. */
static void timer_close(timer_obj_t *t, int lua_usable)
{
    if (t->box != NULL) *t->box = NULL;
    t->box = NULL;
    if (lua_usable && t->fn_ref != LUA_NOREF) luaL_unref(t->L, LUA_REGISTRYINDEX, t->fn_ref);
    t->fn_ref = LUA_NOREF;
    if (!uv_is_closing((uv_handle_t *)&t->timer)) uv_close((uv_handle_t *)&t->timer, timer_free_cb);
}

static void timer_teardown(cm_owner_t *owner)
{
    timer_close((timer_obj_t *)owner, 0);
}

static void timer_fire_cb(uv_timer_t *h)
{
    timer_obj_t *t = h->data;
    cm_runtime_t *rt = cm_runtime_of(t->L);
    if (cm_runtime_closing(rt)) return;
    int ref = t->fn_ref;
    int once = uv_timer_get_repeat(h) == 0;
    if (once) {
        /* Keep the function alive for this last call, then let go. */
        t->fn_ref = LUA_NOREF;
        if (t->box != NULL) *t->box = NULL;
        t->box = NULL;
        uv_close((uv_handle_t *)h, timer_free_cb);
    }
    cm_callback(t->L, ref, 0);
    if (once) luaL_unref(t->L, LUA_REGISTRYINDEX, ref);
}

static int l_timer(lua_State *L)
{
    uint64_t ms = cm_ms(L, 1, luaL_checknumber(L, 1));
    uint64_t rep = cm_ms(L, 2, luaL_optnumber(L, 2, 0));
    luaL_checktype(L, 3, LUA_TFUNCTION);
    timer_obj_t **box = lua_newuserdatauv(L, sizeof *box, 0); /* [ms, rep, fn, box] */
    *box = NULL;
    luaL_setmetatable(L, TIMER_MT);
    timer_obj_t *t = malloc(sizeof *t);
    if (t == NULL) return luaL_error(L, "out of memory");
    t->owner.teardown = timer_teardown;
    t->L = cm_runtime_lua(cm_runtime_of(L));
    lua_pushvalue(L, 3);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->box = box;
    *box = t;
    uv_timer_init(cm_loop(L), &t->timer);
    t->timer.data = t;
    cm_timer_start(&t->timer, timer_fire_cb, ms, rep);
    return 1;
}

static int l_timer_stop(lua_State *L)
{
    timer_obj_t **box = luaL_checkudata(L, 1, TIMER_MT);
    if (*box != NULL) timer_close(*box, 1);
    return 0;
}

/* A timer nobody references any more keeps running: like luv, only an
 * explicit stop ends it.  The userdata only loses its handle. */
static int l_timer_gc(lua_State *L)
{
    timer_obj_t **box = luaL_checkudata(L, 1, TIMER_MT);
    if (*box != NULL) (*box)->box = NULL;
    return 0;
}

/* ---- clocks ------------------------------------------------------------ */

static int l_now(lua_State *L)
{
    lua_pushnumber(L, cm_now_ms());
    return 1;
}

static int l_wall(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (lua_Number)tv.tv_sec + (lua_Number)tv.tv_usec / 1e6);
    return 1;
}

static int l_strftime(lua_State *L)
{
    const char *fmt = luaL_checkstring(L, 1);
    lua_Number t = luaL_optnumber(L, 2, (lua_Number)time(NULL));
    luaL_argcheck(L, t > -1e15 && t < 1e15, 2, "seconds out of range");
    time_t when = (time_t)t;
    struct tm tm;
    char buf[256];
    localtime_r(&when, &tm);
    size_t n = strftime(buf, sizeof buf, fmt, &tm);
    lua_pushlstring(L, buf, n);
    return 1;
}

int cm__open_time(lua_State *L)
{
    static const luaL_Reg methods[] = {{"stop", l_timer_stop}, {NULL, NULL}};
    if (luaL_newmetatable(L, TIMER_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_timer_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"now", l_now},     {"wall", l_wall},         {"sleep", l_sleep},
                                   {"timer", l_timer}, {"strftime", l_strftime}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
