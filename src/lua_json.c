/*
 * cm.json: decode and encode JSON text, and the conversion between cJSON
 * trees and Lua values that every JSON-speaking primitive shares (json.h).
 *
 * Text is parsed and printed by config.c, so cm.json.decode reports errors
 * as "line:col: what" like config files do, and encode(value, true) writes
 * the same 2-space style as saved configs.
 */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "cm_modules.h"
#include "json_text.h"
#include "runtime.h"

#define ARRAY_MT "cm.json.array"
#define HOLD_MT "cm.json.hold"

/* Its address is cm.json.null: unique, comparable, the same in every state. */
static const char null_tag = 0;

void cm_json_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&null_tag);
}

int cm_json_is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &null_tag;
}

void cm_json_push_array_mt(lua_State *L)
{
    if (luaL_newmetatable(L, ARRAY_MT)) { /* [mt] */
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "__jsonarray"); /* [mt] a visible mark for Lua code */
    }
}

/* ---- holding C memory across calls that may raise ---------------------- */

void cm_json_release(cm_json_hold_t *hold)
{
    cJSON_Delete(hold->node);
    free(hold->text);
    hold->node = NULL;
    hold->text = NULL;
}

static int hold_gc(lua_State *L)
{
    cm_json_release(luaL_checkudata(L, 1, HOLD_MT));
    return 0;
}

cm_json_hold_t *cm_json_hold(lua_State *L)
{
    cm_json_hold_t *hold = lua_newuserdatauv(L, sizeof(*hold), 0); /* [hold] */
    hold->node = NULL;
    hold->text = NULL;
    if (luaL_newmetatable(L, HOLD_MT)) { /* [hold, mt] */
        lua_pushcfunction(L, hold_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2); /* [hold] */
    return hold;
}

/* ---- cJSON -> Lua ---------------------------------------------------------- */

void cm_json_push_ex(lua_State *L, const cJSON *node, int flags)
{
    luaL_checkstack(L, 4, "JSON nested too deeply");
    if (node == NULL) {
        lua_pushnil(L);
        return;
    }
    long long integer;
    switch (node->type & 0xFF) {
    case cJSON_NULL:
        if (flags & CM_JSON_NULL_AS_NIL)
            lua_pushnil(L);
        else
            cm_json_push_null(L);
        return;
    case cJSON_False:
        lua_pushboolean(L, 0);
        return;
    case cJSON_True:
        lua_pushboolean(L, 1);
        return;
    case cJSON_Number:
        if (cm_json_integer(node, &integer))
            lua_pushinteger(L, (lua_Integer)integer);
        else
            lua_pushnumber(L, node->valuedouble);
        return;
    case cJSON_String:
    case cJSON_Raw:
        lua_pushstring(L, node->valuestring ? node->valuestring : "");
        return;
    case cJSON_Array: {
        lua_createtable(L, cJSON_GetArraySize(node), 0); /* [t] */
        cm_json_push_array_mt(L);                        /* [t, mt] */
        lua_setmetatable(L, -2);                         /* [t] */
        lua_Integer i = 1;
        for (const cJSON *child = node->child; child != NULL; child = child->next) {
            /* An array keeps its nulls, whatever the flags, or it would get holes. */
            cm_json_push_ex(L, child, cJSON_IsNull(child) ? 0 : flags); /* [t, v] */
            lua_rawseti(L, -2, i++);                                    /* [t] */
        }
        return;
    }
    case cJSON_Object:
        lua_createtable(L, 0, cJSON_GetArraySize(node)); /* [t] */
        for (const cJSON *child = node->child; child != NULL; child = child->next) {
            if (child->string == NULL) continue;
            if ((flags & CM_JSON_NULL_AS_NIL) && cJSON_IsNull(child)) continue;
            /* With duplicate keys the first wins, as in cm_config_get. */
            if (lua_getfield(L, -1, child->string) != LUA_TNIL) { /* [t, old] */
                lua_pop(L, 1);                                    /* [t] */
                continue;
            }
            lua_pop(L, 1);                      /* [t] */
            cm_json_push_ex(L, child, flags);   /* [t, v] */
            lua_setfield(L, -2, child->string); /* [t] */
        }
        return;
    default:
        lua_pushnil(L);
        return;
    }
}

void cm_json_push(lua_State *L, const cJSON *node)
{
    cm_json_push_ex(L, node, 0);
}

/* ---- Lua -> cJSON ---------------------------------------------------------- */

typedef struct to_json {
    cJSON *root; /* the tree so far: every node is attached as soon as made */
    int failed;  /* err holds why */
    char *err;
    size_t errlen;
    char where[200]; /* the path of the value being converted, for messages */
    const void *path[CM_JSON_LUA_MAX_DEPTH + 1]; /* the tables being converted */
} to_json_t;

static int conversion_error(to_json_t *c, const char *what)
{
    size_t len = strlen(c->where);
    if (len > 80) /* deep paths: the end says where */
        snprintf(c->err, c->errlen, "%s at ...%s", what, c->where + len - 80);
    else if (len > 0)
        snprintf(c->err, c->errlen, "%s at %s", what, c->where);
    else
        snprintf(c->err, c->errlen, "%s", what);
    c->failed = 1;
    return -1;
}

/* Attaches node under parent (as member `key` of an object, or the next
 * element of an array), or makes it the root.  Deletes it when that fails. */
static int attach(to_json_t *c, cJSON *parent, const char *key, cJSON *node)
{
    if (node == NULL) return conversion_error(c, "out of memory");
    if (parent == NULL) {
        c->root = node;
        return 0;
    }
    int ok =
        key != NULL ? cJSON_AddItemToObject(parent, key, node) : cJSON_AddItemToArray(parent, node);
    if (!ok) {
        cJSON_Delete(node);
        return conversion_error(c, "out of memory");
    }
    return 0;
}

typedef struct key_ref {
    const char *s;
    size_t len;
} key_ref_t;

static int compare_keys(const void *a, const void *b)
{
    const key_ref_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int d = memcmp(x->s, y->s, n);
    if (d != 0) return d;
    return (x->len > y->len) - (x->len < y->len);
}

static int convert(lua_State *L, to_json_t *c, int idx, int depth, cJSON *parent, const char *key);

/* Appends ".key" or "[i]" to c->where for the duration of one child. */
static size_t where_push(to_json_t *c, const char *key, lua_Integer index)
{
    size_t len = strlen(c->where);
    if (key != NULL)
        snprintf(c->where + len, sizeof(c->where) - len, ".%s", key);
    else
        snprintf(c->where + len, sizeof(c->where) - len, "[%lld]", (long long)index);
    return len;
}

static int convert_table(lua_State *L, to_json_t *c, int idx, int depth, cJSON *parent,
                         const char *key)
{
    const void *self = lua_topointer(L, idx);
    if (depth >= CM_JSON_LUA_MAX_DEPTH) return conversion_error(c, "tables nested too deeply");
    for (int k = 0; k < depth; k++)
        if (c->path[k] == self) return conversion_error(c, "table contains itself (a cycle)");
    c->path[depth] = self;

    int forced_array = 0;
    if (lua_getmetatable(L, idx)) { /* [mt] */
        cm_json_push_array_mt(L);   /* [mt, array_mt] */
        forced_array = lua_rawequal(L, -1, -2);
        lua_pop(L, 2); /* [] */
    }

    /* Classify the keys: all strings (an object) or exactly 1..n (an array). */
    size_t strings = 0, integers = 0, others = 0;
    lua_Integer n = 0;              /* the largest positive integer key */
    lua_pushnil(L);                 /* [nil] */
    while (lua_next(L, idx) != 0) { /* [k, v] */
        if (lua_type(L, -2) == LUA_TSTRING) {
            strings++;
        } else if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            integers++;
            if (lua_tointeger(L, -2) > n) n = lua_tointeger(L, -2);
        } else {
            others++;
        }
        lua_pop(L, 1); /* [k] */
    }
    if (others > 0 || (strings > 0 && integers > 0) || (forced_array && strings > 0))
        return conversion_error(c, "table mixes keys JSON cannot express (use only strings, or "
                                   "only 1..n)");
    /* Distinct keys in 1..n, as many as n: exactly 1..n. */
    if (integers != (size_t)n) return conversion_error(c, "sparse array");

    if (forced_array || integers > 0) {
        cJSON *array = cJSON_CreateArray();
        if (attach(c, parent, key, array) != 0) return -1;
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i); /* [v] */
            size_t mark = where_push(c, NULL, i);
            int rc = convert(L, c, lua_gettop(L), depth + 1, array, NULL);
            c->where[mark] = '\0';
            lua_pop(L, 1); /* [] */
            if (rc != 0) return -1;
        }
        return 0;
    }

    cJSON *object = cJSON_CreateObject();
    if (attach(c, parent, key, object) != 0) return -1;
    if (strings == 0) return 0;
    /* The key list lives in a userdata so that nothing leaks if Lua raises. */
    key_ref_t *keys = lua_newuserdatauv(L, strings * sizeof(*keys), 0); /* [keys] */
    size_t count = 0;
    lua_pushnil(L);                 /* [keys, nil] */
    while (lua_next(L, idx) != 0) { /* [keys, k, v] */
        keys[count].s = lua_tolstring(L, -2, &keys[count].len);
        count++;
        lua_pop(L, 1); /* [keys, k] */
    }
    qsort(keys, count, sizeof(*keys), compare_keys);
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        if (strlen(keys[i].s) != keys[i].len) {
            rc = conversion_error(c, "table key contains a NUL byte");
            break;
        }
        lua_pushlstring(L, keys[i].s, keys[i].len); /* [keys, k] */
        lua_rawget(L, idx);                         /* [keys, v] */
        size_t mark = where_push(c, keys[i].s, 0);
        rc = convert(L, c, lua_gettop(L), depth + 1, object, keys[i].s);
        c->where[mark] = '\0';
        lua_pop(L, 1); /* [keys] */
    }
    lua_pop(L, 1); /* [] */
    return rc;
}

static int convert(lua_State *L, to_json_t *c, int idx, int depth, cJSON *parent, const char *key)
{
    if (!lua_checkstack(L, 6)) return conversion_error(c, "Lua stack exhausted");
    size_t len;
    const char *s;
    cJSON *node;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return attach(c, parent, key, cJSON_CreateNull());
    case LUA_TBOOLEAN:
        return attach(c, parent, key, cJSON_CreateBool(lua_toboolean(L, idx)));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            lua_Integer v = lua_tointeger(L, idx);
            node = cJSON_CreateNumber((double)v);
            if (attach(c, parent, key, node) != 0) return -1;
            /* A double cannot hold every 64-bit integer; the printer writes
             * the kept spelling instead. */
            if (v > 9007199254740992LL || v < -9007199254740992LL) {
                char lit[32];
                snprintf(lit, sizeof(lit), "%lld", (long long)v);
                if (cm_json_set_literal(node, lit) != 0)
                    return conversion_error(c, "out of memory");
            }
            return 0;
        } else {
            lua_Number v = lua_tonumber(L, idx);
            if (!isfinite(v)) return conversion_error(c, "cannot encode NaN or infinity");
            return attach(c, parent, key, cJSON_CreateNumber(v));
        }
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        if (strlen(s) != len) return conversion_error(c, "string contains a NUL byte");
        return attach(c, parent, key, cJSON_CreateString(s));
    case LUA_TTABLE:
        return convert_table(L, c, idx, depth, parent, key);
    case LUA_TLIGHTUSERDATA:
        if (cm_json_is_null(L, idx)) return attach(c, parent, key, cJSON_CreateNull());
        /* fall through */
    default: {
        char what[64];
        snprintf(what, sizeof(what), "cannot encode a %s", luaL_typename(L, idx));
        return conversion_error(c, what);
    }
    }
}

/* The conversion runs under lua_pcall: the Lua calls in it raise only when
 * out of memory, and then the partial tree (always reachable from root) is
 * freed by the caller. */
static int convert_protected(lua_State *L)
{
    to_json_t *c = lua_touserdata(L, 1); /* [ctx, value] */
    convert(L, c, 2, 0, NULL, NULL);
    return 0;
}

cJSON *cm_json_from_lua(lua_State *L, int idx, char *err, size_t errlen)
{
    to_json_t *c = calloc(1, sizeof(*c));
    if (c == NULL || !lua_checkstack(L, 4)) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->err = err;
    c->errlen = errlen;
    idx = lua_absindex(L, idx);
    lua_pushcfunction(L, convert_protected); /* [fn] */
    lua_pushlightuserdata(L, c);             /* [fn, ctx] */
    lua_pushvalue(L, idx);                   /* [fn, ctx, value] */
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {   /* [msg] */
        snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "out of memory");
        lua_pop(L, 1); /* [] */
        c->failed = 1;
    }
    cJSON *root = c->root;
    if (c->failed) {
        cJSON_Delete(root);
        root = NULL;
    }
    free(c);
    return root;
}

/* ---- cm.json -------------------------------------------------------------- */

/* decode(text) -> value | nil, "line:col: what", "syntax" */
static int json_decode(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    cm_json_hold_t *hold = cm_json_hold(L); /* [text, hold] */
    char err[400];
    hold->node = cm_json_parse(text, len, err, sizeof(err));
    if (hold->node == NULL) return cm_fail(L, "syntax", "%s", err);
    cm_json_push(L, hold->node); /* [text, hold, value] */
    cm_json_release(hold);
    return 1;
}

/* encode(value [, indent]) -> text; raises for values JSON cannot express. */
static int json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    int indent = lua_toboolean(L, 2);
    cm_json_hold_t *hold = cm_json_hold(L); /* [value, indent?, hold] */
    char err[300];
    hold->node = cm_json_from_lua(L, 1, err, sizeof(err));
    if (hold->node == NULL) return luaL_error(L, "cm.json.encode: %s", err);
    size_t len;
    hold->text = cm_json_print(hold->node, indent, &len);
    if (hold->text == NULL) return luaL_error(L, "cm.json.encode: out of memory");
    lua_pushlstring(L, hold->text, len); /* [..., hold, text] */
    cm_json_release(hold);
    return 1;
}

/* array([t]) -> t marked as a JSON array (a new empty one without t). */
static int json_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);         /* [t] */
    cm_json_push_array_mt(L); /* [t, mt] */
    lua_setmetatable(L, 1);   /* [t] */
    return 1;
}

int cm__open_json(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"decode", json_decode},
        {"encode", json_encode},
        {"array", json_array},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);  /* [json] */
    cm_json_push_null(L); /* [json, null] */
    lua_setfield(L, -2, "null");
    return 1;
}
