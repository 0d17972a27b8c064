/*
 * cm.build: what this binary is — its version (git describe at build time,
 * else the project version), its build type, and the versions of the
 * libraries it runs with (`chat-manager --version`).
 */
#include "cm_modules.h"
#include "curl_api.h"
#include "version.h"

#include <lauxlib.h>
#include <uv.h>

/* info() -> { version, build_type, lua, libuv, libcurl? , libcurl_error? }
 * libcurl is loaded on first use, so its version costs that load; when it
 * cannot be loaded the reason is given instead. */
static int l_info(lua_State *L)
{
    lua_createtable(L, 0, 6); /* [info] */
    lua_pushliteral(L, CM_BUILD_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushliteral(L, CM_BUILD_TYPE);
    lua_setfield(L, -2, "build_type");
    lua_pushliteral(L, LUA_RELEASE);
    lua_setfield(L, -2, "lua");
    lua_pushstring(L, uv_version_string());
    lua_setfield(L, -2, "libuv");
    char err[256];
    const cm_curl_api_t *curl = cm_curl_api(err, sizeof err);
    if (curl != NULL) {
        lua_pushstring(L, curl->version());
        lua_setfield(L, -2, "libcurl");
    } else {
        lua_pushstring(L, err);
        lua_setfield(L, -2, "libcurl_error");
    }
    return 1;
}

int cm__open_build(lua_State *L)
{
    static const luaL_Reg fns[] = {{"info", l_info}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
