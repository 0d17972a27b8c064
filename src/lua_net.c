/*
 * cm.net: TCP checks for Lua (net.c does the work).
 *
 * `connect` waits on the loop; the port probes are synchronous reads of the
 * kernel's tables, fast enough to call inline.  Ports are checked the same
 * way everywhere: a non-integer is a programming error (raise), an integer
 * outside 1..65535 is bad input (nil, message, "range").
 */
#include "net.h"

#include "cm_modules.h"
#include "runtime.h"

#include <errno.h>
#include <limits.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define MAX_CONNECT_TIMEOUT_MS (24 * 3600 * 1000)

/* Reads the port argument at idx.  Raises when it is not an integer; returns
 * 0 (after pushing nil, message, "range") when it is out of range. */
static int check_port(lua_State *L, int idx, int *nret)
{
    lua_Integer port = luaL_checkinteger(L, idx);
    if (port < 1 || port > 65535) {
        *nret = cm_fail(L, "range", "port %I is out of range (1-65535)", port);
        return 0;
    }
    return (int)port;
}

/* One connect in flight: only the parked task. */
typedef struct net_call {
    cm_waiter_t waiter;
    int port;
    lua_Integer timeout_ms;
} net_call_t;

static void on_connect_done(int status, void *data)
{
    net_call_t *call = data;
    lua_State *co = cm_waiter_thread(&call->waiter);
    if (co != NULL) {
        int n;
        luaL_checkstack(co, 3, NULL);
        if (status == 0) {
            lua_pushboolean(co, 1); /* [true] */
            n = 1;
        } else if (status == UV_ECONNREFUSED) {
            n = cm_fail(co, "refused", "connection refused");
        } else if (status == UV_ETIMEDOUT) {
            n = cm_fail(co, "timeout", "no connection after %d ms", (int)call->timeout_ms);
        } else {
            n = cm_fail(co, uv_err_name(status), "%s", uv_strerror(status));
        }
        cm_waiter_resume(&call->waiter, n);
    }
    free(call);
}

/* cm.net.connect(host, port [, timeout_ms=5000]) -> true | nil, msg, code
 * Waits.  Codes: "refused", "timeout", "range", or a libuv error name. */
static int l_net_connect(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    int nret = 0;
    int port = check_port(L, 2, &nret);
    lua_Integer timeout_ms = luaL_optinteger(L, 3, DEFAULT_CONNECT_TIMEOUT_MS);
    luaL_argcheck(L, timeout_ms >= 1 && timeout_ms <= MAX_CONNECT_TIMEOUT_MS, 3,
                  "timeout must be between 1 and 86400000 ms");
    luaL_argcheck(L, *host != '\0', 1, "empty host");
    if (port == 0) return nret;

    cm_waiter_t waiter;
    cm_waiter_begin(L, &waiter); /* raises when not in a task: nothing acquired yet */

    net_call_t *call = malloc(sizeof *call);
    if (call == NULL) return cm_fail(L, "ENOMEM", "out of memory");
    call->waiter = waiter;
    call->port = port;
    call->timeout_ms = timeout_ms;
    int rc = cm_net_connect(cm_loop(L), host, port, (uint64_t)timeout_ms, on_connect_done, call);
    if (rc != 0) {
        free(call);
        return cm_fail(L, uv_err_name(rc), "cannot connect to %s port %d: %s", host, port,
                       uv_strerror(rc));
    }
    return cm_waiter_yield(L);
}

/* cm.net.port_free(port [, host="0.0.0.0"]) -> bool [, msg, code]
 * true when a socket can bind the port now; false, msg, code when the check
 * itself failed (a privileged port, an address not on this machine). */
static int l_net_port_free(lua_State *L)
{
    int nret = 0;
    int port = check_port(L, 1, &nret);
    const char *host = luaL_optstring(L, 2, "0.0.0.0");
    struct sockaddr_storage addr;
    if (cm_net_parse_addr(host, port, &addr) != 0)
        return luaL_argerror(L, 2, "not a numeric IP address (or \"localhost\")");
    if (port == 0) return nret;
    int rc = cm_net_port_free(host, port);
    if (rc >= 0) {
        lua_pushboolean(L, rc); /* [free] */
        return 1;
    }
    lua_pushboolean(L, 0);                                                       /* [false] */
    lua_pushfstring(L, "cannot bind %s port %d: %s", host, port, strerror(-rc)); /* [false, msg] */
    lua_pushstring(L, uv_err_name(rc)); /* [false, msg, code] (libuv codes are -errno) */
    return 3;
}

/* cm.net.port_listening(port) -> bool, from /proc/net/tcp{,6}. */
static int l_net_port_listening(lua_State *L)
{
    int nret = 0;
    int port = check_port(L, 1, &nret);
    if (port == 0) return nret;
    int rc = cm_net_port_listening(port);
    if (rc < 0) return cm_fail(L, uv_err_name(rc), "cannot read /proc/net/tcp: %s", strerror(-rc));
    lua_pushboolean(L, rc); /* [listening] */
    return 1;
}

/* cm.net.port_owner(port) -> {pid=, name=} | nil [, msg, code]
 * nil alone when nothing listens; nil, msg, "EACCES" when something listens
 * but its process belongs to another user. */
static int l_net_port_owner(lua_State *L)
{
    int nret = 0;
    int port = check_port(L, 1, &nret);
    if (port == 0) return nret;
    pid_t pid = 0;
    char name[64];
    int rc = cm_net_port_owner(port, &pid, name, sizeof name);
    if (rc == 0) {
        lua_pushnil(L); /* [nil] */
        return 1;
    }
    if (rc < 0) {
        if (rc == -EACCES)
            return cm_fail(L, "EACCES", "port %d is listening but its process is not visible",
                           port);
        return cm_fail(L, uv_err_name(rc), "cannot read /proc: %s", strerror(-rc));
    }
    lua_createtable(L, 0, 2); /* [owner] */
    cm_set_int(L, "pid", pid);
    cm_set_str(L, "name", name);
    return 1;
}

/* cm.net.group_ports(pgid) -> { port, ... } (ascending) | nil, msg, code
 * The TCP ports that the processes of group pgid listen on. */
static int l_net_group_ports(lua_State *L)
{
    lua_Integer pgid = luaL_checkinteger(L, 1);
    if (pgid <= 0 || pgid > INT_MAX) return luaL_argerror(L, 1, "a process group id");
    int ports[64];
    int n = cm_net_group_ports((pid_t)pgid, ports, 64);
    if (n < 0) return cm_fail(L, uv_err_name(n), "cannot read /proc/net/tcp: %s", strerror(-n));
    lua_createtable(L, n, 0); /* [ports] */
    for (int i = 0; i < n; i++) {
        lua_pushinteger(L, ports[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

int cm__open_net(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"connect", l_net_connect},
        {"port_free", l_net_port_free},
        {"port_listening", l_net_port_listening},
        {"port_owner", l_net_port_owner},
        {"group_ports", l_net_group_ports},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs); /* [net] */
    return 1;
}
