/*
 * The script loader (see scripts.h): the Lua scripts compiled into the
 * binary (bundle.h), registered in package.preload, each overridable by a
 * file under CHAT_MANAGER_LUA_DIR.
 */
#include "scripts.h"

#include "bundle.h"

#include <dirent.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* package.preload loader for one embedded module (upvalue: bundle index).
 * A file of the same relative path under CHAT_MANAGER_LUA_DIR wins, so a
 * developer can edit scripts without rebuilding. */
static int bundle_loader(lua_State *L)
{
    const cm_bundle_entry_t *e = &cm_bundle[lua_tointeger(L, lua_upvalueindex(1))];
    const char *dir = getenv("CHAT_MANAGER_LUA_DIR");
    int status;
    if (dir != NULL && dir[0] != '\0') {
        /* e->path is "lua/<rel>"; the override directory mirrors lua/. */
        const char *rel = e->path + 4;
        lua_pushfstring(L, "%s/%s", dir, rel); /* [name, extra, path] */
        const char *path = lua_tostring(L, -1);
        struct stat st;
        if (stat(path, &st) == 0) {
            status = luaL_loadfilex(L, path, "t");
            if (status != LUA_OK) return lua_error(L);
            lua_pushvalue(L, 1);
            lua_call(L, 1, 1);
            return 1;
        }
        lua_pop(L, 1);
    }
    /* Embedded scripts are bytecode compiled at build time from our own
     * sources; only they are ever loaded in binary mode. */
    lua_pushfstring(L, "@%s", e->path);
    status = luaL_loadbufferx(L, e->source, e->size, lua_tostring(L, -1), "b");
    if (status != LUA_OK) return lua_error(L);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    return 1;
}

/* cm.modules(prefix) -> set {name = true} of the embedded modules whose
 * name starts with prefix ("commands."), plus the .lua files of the matching
 * folder under CHAT_MANAGER_LUA_DIR, so a new script needs no rebuild. */
int cm_scripts_modules(lua_State *L)
{
    size_t plen;
    const char *prefix = luaL_checklstring(L, 1, &plen);
    lua_newtable(L); /* [prefix, set] */
    for (int i = 0; cm_bundle[i].module != NULL; i++) {
        if (strncmp(cm_bundle[i].module, prefix, plen) == 0) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, cm_bundle[i].module);
        }
    }
    const char *dir = getenv("CHAT_MANAGER_LUA_DIR");
    if (dir == NULL || dir[0] == '\0' || plen == 0 || prefix[plen - 1] != '.') return 1;
    luaL_Buffer b; /* the folder: "commands." -> "<dir>/commands" */
    luaL_buffinit(L, &b);
    luaL_addstring(&b, dir);
    luaL_addchar(&b, '/');
    for (size_t i = 0; i + 1 < plen; i++)
        luaL_addchar(&b, prefix[i] == '.' ? '/' : prefix[i]);
    luaL_pushresult(&b); /* [prefix, set, folder] */
    DIR *d = opendir(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (d == NULL) return 1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n <= 4 || strcmp(e->d_name + n - 4, ".lua") != 0) continue;
        lua_pushfstring(L, "%s%s", prefix, e->d_name); /* [prefix, set, "commands.x.lua"] */
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        lua_pushlstring(L, name, len - 4);
        lua_pushboolean(L, 1);
        lua_settable(L, -4); /* set[name] = true */
        lua_pop(L, 1);
    }
    closedir(d);
    return 1;
}

void cm_scripts_register(lua_State *L)
{
    lua_getglobal(L, "package");    /* [package] */
    lua_getfield(L, -1, "preload"); /* [package, preload] */
    for (int i = 0; cm_bundle[i].module != NULL; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, bundle_loader, 1);
        lua_setfield(L, -2, cm_bundle[i].module);
    }
    lua_pop(L, 1); /* [package] */
    /* Only the override folder is searched for files: a stray foo.lua in the
     * user's current directory must never shadow a module. */
    const char *dir = getenv("CHAT_MANAGER_LUA_DIR");
    if (dir != NULL && dir[0] != '\0')
        lua_pushfstring(L, "%s/?.lua", dir);
    else
        lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
}
