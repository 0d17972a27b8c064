/*
 * cm.config: the config file as a Lua object.
 *
 *   local cfg, err, code = cm.config.load(path)
 *   cfg:get("backend.active")            --> "ollama" (nil when absent or null)
 *   cfg:set("backend.active", "llamacpp") --> true | nil, msg, "key"
 *   cfg:save()                           --> true | nil, msg, code
 *   cfg:text(), cfg.path
 *
 * The userdata owns a cm_config_t (config.c) and frees it when collected;
 * conversions go through json.h.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "cm_modules.h"
#include "config.h"
#include "json.h"
#include "runtime.h"

#define CONFIG_MT "cm.config"

typedef struct config_ud {
    cm_config_t *cfg; /* NULL until loaded */
} config_ud_t;

static cm_config_t *check_config(lua_State *L)
{
    config_ud_t *ud = luaL_checkudata(L, 1, CONFIG_MT);
    if (ud->cfg == NULL) luaL_error(L, "cm.config: object not loaded");
    return ud->cfg;
}

static int fail_with(lua_State *L, const cm_config_error_t *err)
{
    return cm_fail(L, err->code ? err->code : "error", "%s", err->msg);
}

/* load(path) -> cfg | nil, msg, code */
static int config_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    config_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0); /* [path, ud] */
    ud->cfg = NULL;
    luaL_setmetatable(L, CONFIG_MT);
    cm_config_error_t err = {0};
    ud->cfg = cm_config_load(path, &err);
    if (ud->cfg == NULL) return fail_with(L, &err);
    return 1;
}

/* cfg:get([key]) -> value | nil.  Without a key (or with ""), the whole
 * config.  Objects come back as tables without their null members. */
static int config_get(lua_State *L)
{
    cm_config_t *cfg = check_config(L);
    const char *key = luaL_optstring(L, 2, "");
    const cJSON *node = key[0] == '\0' ? cfg->root : cm_config_get(cfg, key);
    cm_json_push_ex(L, node, CM_JSON_NULL_AS_NIL);
    return 1;
}

/* cfg:set(key, value) -> true | nil, msg, "key".  value nil removes the
 * key; cm.json.null writes null.  Raises for a value JSON cannot express. */
static int config_set(lua_State *L)
{
    cm_config_t *cfg = check_config(L);
    const char *key = luaL_checkstring(L, 2);
    if (lua_isnoneornil(L, 3)) {
        cm_config_unset(cfg, key);
        lua_pushboolean(L, 1);
        return 1;
    }
    char msg[300];
    cJSON *value = cm_json_from_lua(L, 3, msg, sizeof(msg));
    if (value == NULL) return luaL_error(L, "cfg:set('%s'): %s", key, msg);
    cm_config_error_t err = {0};
    if (cm_config_set(cfg, key, value, &err) != 0) return fail_with(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* cfg:save([path | {path=, lock=}]) -> true | nil, msg, code */
static int config_save(lua_State *L)
{
    cm_config_t *cfg = check_config(L);
    const char *path = NULL, *lock = NULL;
    if (lua_type(L, 2) == LUA_TSTRING) {
        path = lua_tostring(L, 2);
    } else if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        path = cm_opt_str_field(L, 2, "path", NULL);
        /* lock = false: the caller holds the writers' lock (cm.fs.lock) */
        lock = lua_getfield(L, 2, "lock") == LUA_TBOOLEAN && !lua_toboolean(L, -1)
                   ? ""
                   : cm_opt_str_field(L, 2, "lock", NULL);
        lua_pop(L, 1);
    }
    cm_config_error_t err = {0};
    if (cm_config_save(cfg, path, lock, &err) != 0) return fail_with(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* cfg:text() -> what save would write */
static int config_text(lua_State *L)
{
    cm_config_t *cfg = check_config(L);
    cm_json_hold_t *hold = cm_json_hold(L); /* [cfg, hold] */
    size_t len;
    hold->text = cm_config_text(cfg, &len);
    if (hold->text == NULL) return luaL_error(L, "cfg:text(): out of memory");
    lua_pushlstring(L, hold->text, len); /* [cfg, hold, text] */
    cm_json_release(hold);
    return 1;
}

/* __index(cfg, k): the field `path`, else a method (upvalue 1). */
static int config_index(lua_State *L)
{
    config_ud_t *ud = luaL_checkudata(L, 1, CONFIG_MT);
    const char *k = lua_tostring(L, 2);
    if (k != NULL && strcmp(k, "path") == 0) {
        if (ud->cfg == NULL) return 0;
        lua_pushstring(L, ud->cfg->path);
        return 1;
    }
    lua_pushvalue(L, 2);                /* [cfg, k, k] */
    lua_rawget(L, lua_upvalueindex(1)); /* [cfg, k, method] */
    return 1;
}

static int config_gc(lua_State *L)
{
    config_ud_t *ud = luaL_checkudata(L, 1, CONFIG_MT);
    cm_config_free(ud->cfg);
    ud->cfg = NULL;
    return 0;
}

static int config_tostring(lua_State *L)
{
    config_ud_t *ud = luaL_checkudata(L, 1, CONFIG_MT);
    lua_pushfstring(L, "cm.config (%s)", ud->cfg ? ud->cfg->path : "not loaded");
    return 1;
}

int cm__open_config(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"get", config_get},   {"set", config_set}, {"save", config_save},
        {"text", config_text}, {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"load", config_load},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, CONFIG_MT)) {    /* [mt] */
        luaL_newlib(L, methods);              /* [mt, methods] */
        lua_pushcclosure(L, config_index, 1); /* [mt, index] */
        lua_setfield(L, -2, "__index");       /* [mt] */
        lua_pushcfunction(L, config_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, config_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);       /* [] */
    luaL_newlib(L, fns); /* [config] */
    return 1;
}
