/*
 * cm.http: the Lua face of the HTTP engine (http.c).
 *
 * `cm.http.get` checks its arguments (raising on programming errors), parks
 * the calling task and starts the transfer; the engine's completion callback
 * pushes the answer (or nil, message, code) onto the task and resumes it.  An
 * HTTP error status is an answer, so 4xx/5xx come back as a table: deciding
 * what a status means is the caller's business.
 */
#include "curl_api.h"
#include "http.h"

#include "cm_modules.h"
#include "runtime.h"

#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Caps a caller may ask for; larger values are certainly mistakes. */
#define MAX_TIMEOUT_MS (24L * 3600 * 1000)
#define MAX_BODY_BYTES ((lua_Integer)1 << 30)

/* One GET in flight: only the parked task, which the engine hands back. */
typedef struct http_call {
    cm_waiter_t waiter;
} http_call_t;

/* The engine stops before the runtime closes its handles, so curl never
 * outlives the loop and no callback reaches a closing Lua state. */
static char closer_key; /* registry flag: the closer is registered */

static void close_engine(void *loop)
{
    cm_http_shutdown(loop);
}

static void ensure_closer(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &closer_key) == LUA_TNIL) { /* [flag] */
        cm_runtime_on_close(cm_runtime_of(L), close_engine, cm_loop(L));
        lua_pushboolean(L, 1);                          /* [nil, true] */
        lua_rawsetp(L, LUA_REGISTRYINDEX, &closer_key); /* [nil] */
    }
    lua_pop(L, 1); /* [] */
}

/* Reads opts[key] as a positive number of milliseconds (or bytes), def when
 * absent; raises when it is not a number or out of 1..max. */
static lua_Integer opt_positive(lua_State *L, int idx, const char *fn, const char *key,
                                lua_Integer def, lua_Integer max)
{
    lua_Integer v = def;
    int type = lua_getfield(L, idx, key); /* [value] */
    if (type != LUA_TNIL) {
        if (type != LUA_TNUMBER) {
            luaL_error(L, "%s: option '%s' must be a number, not %s", fn, key,
                       luaL_typename(L, -1));
        }
        lua_Number n = lua_tonumber(L, -1);
        if (!(n >= 1 && n <= (lua_Number)max))
            luaL_error(L, "%s: option '%s' must be between 1 and %I", fn, key, max);
        v = (lua_Integer)ceil(n);
    }
    lua_pop(L, 1); /* [] */
    return v;
}

/* Fills opts from the table at idx; raises on unknown keys and bad values so
 * that a typo ("timeout_ms") fails loudly instead of being ignored. */
static void read_options(lua_State *L, int idx, const char *fn, cm_http_opts_t *opts)
{
    int post = opts->post != NULL;
    opts->connect_timeout_ms = CM_HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    opts->timeout_ms = CM_HTTP_DEFAULT_TIMEOUT_MS;
    opts->max_bytes = CM_HTTP_DEFAULT_MAX_BYTES;
    opts->insecure = 0;
    opts->content_type = NULL;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);

    lua_pushnil(L);                 /* [nil] */
    while (lua_next(L, idx) != 0) { /* [key, value] */
        const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (key == NULL || (strcmp(key, "connect_timeout") != 0 && strcmp(key, "timeout") != 0 &&
                            strcmp(key, "max_bytes") != 0 && strcmp(key, "verify_ssl") != 0 &&
                            !(post && strcmp(key, "content_type") == 0))) {
            luaL_error(L, "%s: unknown option '%s'", fn, key != NULL ? key : luaL_typename(L, -2));
        }
        lua_pop(L, 1); /* [key] */
    }

    opts->connect_timeout_ms = (long)opt_positive(
        L, idx, fn, "connect_timeout", CM_HTTP_DEFAULT_CONNECT_TIMEOUT_MS, MAX_TIMEOUT_MS);
    opts->timeout_ms =
        (long)opt_positive(L, idx, fn, "timeout", CM_HTTP_DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS);
    opts->max_bytes = (size_t)opt_positive(L, idx, fn, "max_bytes",
                                           (lua_Integer)CM_HTTP_DEFAULT_MAX_BYTES, MAX_BODY_BYTES);
    int type = lua_getfield(L, idx, "verify_ssl"); /* [verify] */
    if (type != LUA_TNIL && type != LUA_TBOOLEAN)
        luaL_error(L, "%s: option 'verify_ssl' must be a boolean", fn);
    opts->insecure = type == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);                                                  /* [] */
    if (post && lua_getfield(L, idx, "content_type") != LUA_TNIL) { /* [ctype] */
        size_t len;
        const char *ctype = lua_tolstring(L, -1, &len);
        /* A header value: one short line, nothing that could start another. */
        if (lua_type(L, -1) != LUA_TSTRING || len == 0 || len > 200 ||
            strcspn(ctype, "\r\n") != len)
            luaL_error(L, "%s: option 'content_type' must be a one-line string", fn);
        opts->content_type = ctype; /* stays on the stack below the call's results */
        return;
    }
    lua_pop(L, 1); /* [] */
}

/* The engine's completion callback: resumes the task with the answer. */
static void on_http_done(const cm_http_result_t *r, void *data)
{
    http_call_t *call = data;
    lua_State *co = cm_waiter_thread(&call->waiter);
    if (co != NULL) {
        int n;
        luaL_checkstack(co, 4, NULL);
        if (r->error == CM_HTTP_OK) {
            lua_createtable(co, 0, 4); /* [res] */
            cm_set_int(co, "status", r->status);
            cm_set_lstr(co, "body", r->body, r->body_len);
            cm_set_num(co, "ms", r->ms);
            cm_set_str(co, "content_type", r->content_type); /* absent when NULL */
            n = 1;
        } else {
            n = cm_fail(co, cm_http_error_name(r->error), "%s", r->message); /* [nil, msg, code] */
        }
        cm_waiter_resume(&call->waiter, n);
    }
    free(call);
}

/* Starts the transfer and parks the task until it ends. */
static int start_transfer(lua_State *L, const char *url, const cm_http_opts_t *opts)
{
    ensure_closer(L);

    cm_waiter_t waiter;
    cm_waiter_begin(L, &waiter); /* raises when not in a task: nothing acquired yet */

    http_call_t *call = malloc(sizeof *call);
    if (call == NULL) return cm_fail(L, "error", "out of memory");
    call->waiter = waiter;
    int rc = cm_http_get(cm_loop(L), url, opts, on_http_done, call);
    if (rc != 0) {
        free(call);
        if (rc == UV_ENOSYS) {
            char why[256];
            cm_curl_api(why, sizeof why);
            return cm_fail(L, "error", "HTTP is unavailable: %s", why);
        }
        if (rc == UV_ENOTSUP)
            return cm_fail(L, "error", "cannot start the transfer: %s", cm_http_setup_error());
        return cm_fail(L, "error", "cannot start the transfer: %s", uv_strerror(rc));
    }
    return cm_waiter_yield(L);
}

/* cm.http.get(url [, opts]) -> {status=, body=, ms=, content_type=} | nil, msg, code
 * Waits.  See docs/lua-api.md for the options and the codes. */
static int l_http_get(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    cm_http_opts_t opts = {0};
    read_options(L, 2, "cm.http.get", &opts);
    return start_transfer(L, url, &opts);
}

/* cm.http.post(url, body [, opts]) -> the same as get.  opts also takes
 * content_type (default application/json). */
static int l_http_post(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    cm_http_opts_t opts = {0};
    opts.post = luaL_checklstring(L, 2, &opts.post_len);
    read_options(L, 3, "cm.http.post", &opts);
    return start_transfer(L, url, &opts);
}

/* load() -> true | nil, message: loads libcurl now (it is otherwise loaded
 * by the first get), for a process that wants it ready before it matters. */
static int l_http_load(lua_State *L)
{
    char why[256];
    if (cm_curl_api(why, sizeof why) == NULL) return cm_fail(L, "error", "%s", why);
    lua_pushboolean(L, 1);
    return 1;
}

int cm__open_http(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"get", l_http_get},
        {"post", l_http_post},
        {"load", l_http_load},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs); /* [http] */
    return 1;
}
