/*
 * JSON <-> Lua conversion shared by every primitive that hands JSON to Lua
 * or takes it from Lua (cm.json, cm.config, HTTP bodies).  Implemented in
 * lua_json.c; the text side (parse, print) is in config.h.
 *
 * Mapping: objects <-> tables with string keys; arrays <-> sequences (marked
 * with the metatable "cm.json.array" so an empty one stays an array when
 * encoded back); strings, booleans; numbers -> Lua integers when the JSON
 * spells an integer that fits (exactly, up to 64 bits), else floats;
 * null <-> cm.json.null (a light userdata).
 */
#ifndef CM_JSON_H
#define CM_JSON_H

#include <stddef.h>
#include <cjson/cJSON.h>
#include <lua.h>

/* The deepest Lua table nesting cm_json_from_lua converts. */
#define CM_JSON_LUA_MAX_DEPTH 200

/* cm_json_push_ex flag: null members of objects are left out and a null at
 * the top gives nil, so Lua code can test fields with `if t.x then`; null
 * elements of arrays stay cm.json.null so sequences keep their length. */
#define CM_JSON_NULL_AS_NIL 1

/* Pushes the Lua value of node (nil for a NULL node), nulls as cm.json.null.
 * Raises only when out of memory. */
void cm_json_push(lua_State *L, const cJSON *node);
void cm_json_push_ex(lua_State *L, const cJSON *node, int flags);

/* Converts the Lua value at idx into a new tree (the caller owns it).  Tables
 * whose keys are all strings become objects, with the keys sorted so output
 * is deterministic; tables whose keys are exactly 1..n become arrays; an
 * empty table is an object unless it carries the cm.json.array metatable;
 * nil and cm.json.null become null; integers stay exact.  Returns NULL with
 * a message in err for values JSON cannot express (functions, mixed or
 * sparse keys, NaN, strings with NUL bytes, cycles, nesting deeper than
 * CM_JSON_LUA_MAX_DEPTH).  Never raises. */
cJSON *cm_json_from_lua(lua_State *L, int idx, char *err, size_t errlen);

/* Pushes cm.json.null; tests for it. */
void cm_json_push_null(lua_State *L);
int cm_json_is_null(lua_State *L, int idx);

/* Pushes the cm.json.array metatable (creating it on first use). */
void cm_json_push_array_mt(lua_State *L);

/* A userdata, pushed on the stack, that owns a tree and a text until it is
 * collected or released: how a primitive keeps them from leaking when a Lua
 * call between their allocation and their release raises. */
typedef struct cm_json_hold {
    cJSON *node;
    char *text;
} cm_json_hold_t;

cm_json_hold_t *cm_json_hold(lua_State *L);
void cm_json_release(cm_json_hold_t *hold); /* frees both now */

#endif
