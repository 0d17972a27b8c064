/*
 * cm.machine: builds a lifecycle engine (src/machine.c) from a Lua definition
 * and hands it to Lua as a userdata.
 *
 *   cm.machine.new(def, actions [, opts]) -> machine | nil, message
 *   machine:fire(event [, payload]) -> "transition", to | "ignored" | "queued"
 *                                      | nil, message
 *   machine:state() -> name            machine:context() -> the context table
 *   machine:pairs() -> { {state=, event=, outcome=}, ... } every state x event
 *   machine:rows()  -> { {from=, event=, to=, guard=, actions={...}, ignore=}, ... }
 *
 * The definition's shape is documented in lua/lifecycle.lua.  A mistake in it
 * gives `nil, message` naming the row ("transition 7: unknown state
 * 'runing'"), so a user's table can be checked and reported like any other
 * input; wrong argument types raise, as for every primitive.
 *
 * The engine lives inside the userdata and its __gc releases it, so an error
 * raised half-way through loading (a metamethod, out of memory) leaks
 * nothing.  Guards, actions, the context and the hook are held by registry
 * refs: a machine whose context or actions refer back to the machine lives
 * until the Lua state closes (the supervisor's machine lives that long anyway).
 */
#include "cm_modules.h"
#include "machine.h"
#include "runtime.h"

#include <lauxlib.h>
#include <stdarg.h>

#define MACHINE_MT "cm.machine"

/* The stack slots of cm.machine.new. */
enum { ARG_DEF = 1, ARG_ACTIONS = 2, ARG_OPTS = 3 };

/* ---- loading the definition -------------------------------------------- */

/* Pushes a formatted load error: `return load_error(L, ...)` returns -1. */
static int load_error(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return -1;
}

/* Reads def[field], a non-empty list of unique names, through `add`. */
static int load_names(lua_State *L, cm_machine_t *m, const char *field, const char *kind,
                      int (*add)(cm_machine_t *, const char *))
{
    if (lua_getfield(L, ARG_DEF, field) != LUA_TTABLE) /* [.., names] */
        return load_error(L, "def.%s must be a list of %s names", field, kind);
    int n = (int)lua_rawlen(L, -1);
    if (n == 0) return load_error(L, "def.%s is empty", field);
    for (int i = 1; i <= n; i++) {
        luaL_checkstack(L, 2, "loading names");
        if (lua_rawgeti(L, -1, i) != LUA_TSTRING) /* [.., names, name] */
            return load_error(L, "def.%s[%d] is not a %s name", field, i, kind);
        int index = add(m, lua_tostring(L, -1));
        if (index == CM_MACHINE_EDUP)
            return load_error(L, "%s '%s' is listed twice", kind, lua_tostring(L, -1));
        if (index < 0) return luaL_error(L, "out of memory");
        lua_pop(L, 1); /* [.., names] */
    }
    lua_pop(L, 1);
    return 0;
}

/* def.describe: optional { state = "text" }. */
static int load_describe(lua_State *L, cm_machine_t *m)
{
    int type = lua_getfield(L, ARG_DEF, "describe"); /* [.., describe] */
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TTABLE) return load_error(L, "def.describe must be a table of state = text");
    lua_pushnil(L);           /* [.., describe, nil] */
    while (lua_next(L, -2)) { /* [.., describe, key, text] */
        if (lua_type(L, -2) != LUA_TSTRING)
            return load_error(L, "def.describe: keys must be state names");
        const char *name = lua_tostring(L, -2);
        int state = cm_machine_state_index(m, name);
        if (state < 0) return load_error(L, "def.describe: unknown state '%s'", name);
        if (lua_type(L, -1) != LUA_TSTRING)
            return load_error(L, "def.describe.%s must be a string", name);
        if (cm_machine_set_describe(m, state, lua_tostring(L, -1)) != 0)
            return luaL_error(L, "out of memory");
        lua_pop(L, 1); /* [.., describe, key] */
    }
    lua_pop(L, 1);
    return 0;
}

/* def.guards: optional { name = function(ctx, payload) }. */
static int load_guards(lua_State *L, cm_machine_t *m)
{
    int type = lua_getfield(L, ARG_DEF, "guards"); /* [.., guards] */
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TTABLE) return load_error(L, "def.guards must be a table of name = function");
    lua_pushnil(L);           /* [.., guards, nil] */
    while (lua_next(L, -2)) { /* [.., guards, name, fn] */
        if (lua_type(L, -2) != LUA_TSTRING)
            return load_error(L, "def.guards: keys must be guard names");
        const char *name = lua_tostring(L, -2);
        if (lua_type(L, -1) != LUA_TFUNCTION)
            return load_error(L, "guard '%s' is not a function", name);
        int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [.., guards, name] */
        if (cm_machine_add_guard(m, L, name, ref) < 0) return luaL_error(L, "out of memory");
    }
    lua_pop(L, 1);
    return 0;
}

/* Reads row[key] (the row at `row_idx`) as a state or event name. */
static int row_name(lua_State *L, const cm_machine_t *m, int row_idx, int i, const char *key,
                    int is_event, int *index)
{
    const char *kind = is_event ? "event" : "state";
    int type = lua_getfield(L, row_idx, key); /* [.., value] */
    if (type == LUA_TNIL) return load_error(L, "transition %d: missing '%s'", i, key);
    if (type != LUA_TSTRING)
        return load_error(L, "transition %d: '%s' must be %s name", i, key,
                          is_event ? "an event" : "a state");
    const char *name = lua_tostring(L, -1);
    *index = is_event ? cm_machine_event_index(m, name) : cm_machine_state_index(m, name);
    if (*index < 0) return load_error(L, "transition %d: unknown %s '%s'", i, kind, name);
    lua_pop(L, 1);
    return 0;
}

/* Resolves row.actions (at the top) into indexes stored in `out`, adding
 * each action function the first time a row names it. */
static int row_actions(lua_State *L, cm_machine_t *m, int i, int *out, int n)
{
    for (int j = 1; j <= n; j++) {
        luaL_checkstack(L, 2, "loading actions");
        if (lua_rawgeti(L, -1, j) != LUA_TSTRING) /* [.., list, name] */
            return load_error(L, "transition %d: action %d is not a name", i, j);
        const char *name = lua_tostring(L, -1);
        int index = cm_machine_action_index(m, name);
        if (index < 0) {
            int type = lua_getfield(L, ARG_ACTIONS, name); /* [.., list, name, fn] */
            if (type == LUA_TNIL)
                return load_error(L, "transition %d: unknown action '%s'", i, name);
            if (type != LUA_TFUNCTION)
                return load_error(L, "transition %d: action '%s' is not a function", i, name);
            int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [.., list, name] */
            index = cm_machine_add_action(m, L, name, ref);
            if (index < 0) return luaL_error(L, "out of memory");
        }
        out[j - 1] = index;
        lua_pop(L, 1); /* [.., list] */
    }
    return 0;
}

/* Reads transition `i`, the table on top of the stack, and adds it. */
static int load_row(lua_State *L, cm_machine_t *m, int i)
{
    int row_idx = lua_gettop(L);
    cm_machine_row_t row = {.to = -1, .guard = -1};
    luaL_checkstack(L, 6, "loading a transition");
    if (row_name(L, m, row_idx, i, "from", 0, &row.from) != 0) return -1;
    if (row_name(L, m, row_idx, i, "event", 1, &row.event) != 0) return -1;

    lua_getfield(L, row_idx, "ignore"); /* [.., row, ignore] */
    row.ignore = lua_toboolean(L, -1);
    lua_pop(L, 1);
    int guard_idx = row_idx + 1, actions_idx = row_idx + 2;
    int has_guard = lua_getfield(L, row_idx, "guard") != LUA_TNIL; /* [.., row, guard] */
    int has_actions =
        lua_getfield(L, row_idx, "actions") != LUA_TNIL;     /* [.., row, guard, actions] */
    int has_to = lua_getfield(L, row_idx, "to") != LUA_TNIL; /* [.., row, guard, actions, to] */
    lua_pop(L, 1);                                           /* [.., row, guard, actions] */
    if (row.ignore) {
        if (has_to || has_guard || has_actions)
            return load_error(L, "transition %d: an ignore row has no 'to', 'guard' or 'actions'",
                              i);
        lua_settop(L, row_idx); /* [.., row] */
        return cm_machine_add_row(m, &row) == 0 ? 0 : luaL_error(L, "out of memory");
    }
    if (!has_to) return load_error(L, "transition %d: missing 'to' (or ignore = true)", i);
    if (row_name(L, m, row_idx, i, "to", 0, &row.to) != 0) return -1;

    if (has_guard) {
        if (lua_type(L, guard_idx) != LUA_TSTRING)
            return load_error(L, "transition %d: 'guard' must be the name of a def.guards entry",
                              i);
        const char *name = lua_tostring(L, guard_idx);
        row.guard = cm_machine_guard_index(m, name);
        if (row.guard < 0) return load_error(L, "transition %d: unknown guard '%s'", i, name);
    }
    if (has_actions) {
        if (!lua_istable(L, actions_idx))
            return load_error(L, "transition %d: 'actions' must be a list of names", i);
        row.nactions = (int)lua_rawlen(L, actions_idx);
        /* Lua owns the scratch array, so an error below cannot leak it. */
        row.actions = lua_newuserdatauv(L, (size_t)row.nactions * sizeof *row.actions, 0);
        lua_pushvalue(L, actions_idx); /* [.., row, guard, actions, scratch, actions] */
        if (row_actions(L, m, i, row.actions, row.nactions) != 0) return -1;
    }
    if (cm_machine_add_row(m, &row) != 0) return luaL_error(L, "out of memory");
    lua_settop(L, row_idx); /* [.., row] */
    return 0;
}

/* def.transitions: a non-empty list of rows. */
static int load_rows(lua_State *L, cm_machine_t *m)
{
    if (lua_getfield(L, ARG_DEF, "transitions") != LUA_TTABLE) /* [.., rows] */
        return load_error(L, "def.transitions must be a list of rows");
    int n = (int)lua_rawlen(L, -1);
    if (n == 0) return load_error(L, "def.transitions is empty");
    for (int i = 1; i <= n; i++) {
        luaL_checkstack(L, 2, "loading transitions");
        if (lua_rawgeti(L, -1, i) != LUA_TTABLE) /* [.., rows, row] */
            return load_error(L, "transition %d is not a table", i);
        if (load_row(L, m, i) != 0) return -1;
        lua_pop(L, 1); /* [.., rows] */
    }
    lua_pop(L, 1);
    return 0;
}

/* Reads an optional state name: def.initial or opts.initial. */
static int initial_state(lua_State *L, const cm_machine_t *m, int table, const char *what, int def)
{
    if (lua_type(L, table) != LUA_TTABLE) return def;
    int type = lua_getfield(L, table, "initial"); /* [.., initial] */
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    int state = type == LUA_TSTRING ? cm_machine_state_index(m, lua_tostring(L, -1)) : -1;
    if (state < 0) {
        load_error(L, "%s: unknown state '%s'", what, luaL_tolstring(L, -1, NULL));
        return -1;
    }
    lua_pop(L, 1);
    return state;
}

/* Pushes opts[key], or nil when there are no opts; returns its type. */
static int opt_field(lua_State *L, const char *key)
{
    if (lua_type(L, ARG_OPTS) == LUA_TTABLE) return lua_getfield(L, ARG_OPTS, key);
    lua_pushnil(L);
    return LUA_TNIL;
}

/* Fills the machine from def, actions and opts; pushes a message and returns
 * -1 at the first mistake. */
static int load(lua_State *L, cm_machine_t *m)
{
    if (load_names(L, m, "states", "state", cm_machine_add_state) != 0) return -1;
    if (load_names(L, m, "events", "event", cm_machine_add_event) != 0) return -1;
    if (load_describe(L, m) != 0) return -1;
    if (load_guards(L, m) != 0) return -1;
    if (load_rows(L, m) != 0) return -1;

    /* Reachability is a property of the definition, so it is checked from
     * def.initial (default: the first state) whatever opts.initial says. */
    int initial = initial_state(L, m, ARG_DEF, "def.initial", 0);
    if (initial < 0) return -1;
    char err[256];
    if (cm_machine_seal(m, initial, err, sizeof err) != 0) return load_error(L, "%s", err);
    int start = initial_state(L, m, ARG_OPTS, "opts.initial", initial);
    if (start < 0) return -1;
    m->state = start;

    if (opt_field(L, "context") == LUA_TNIL) { /* [.., ctx] */
        lua_pop(L, 1);
        lua_newtable(L); /* [.., ctx]: guards and actions may always index it */
    }
    int context_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [..] */
    int hook_ref = LUA_NOREF;
    if (opt_field(L, "on_transition") != LUA_TNIL) /* [.., hook] */
        hook_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        lua_pop(L, 1);
    cm_machine_set_context(m, L, context_ref, hook_ref);
    return 0;
}

/* ---- cm.machine and the machine's methods ------------------------------ */

static int l_new(lua_State *L)
{
    luaL_checktype(L, ARG_DEF, LUA_TTABLE);
    luaL_checktype(L, ARG_ACTIONS, LUA_TTABLE);
    lua_settop(L, ARG_OPTS);
    if (!lua_isnil(L, ARG_OPTS)) {
        luaL_checktype(L, ARG_OPTS, LUA_TTABLE);
        int type = lua_getfield(L, ARG_OPTS, "context"); /* [def, actions, opts, ctx] */
        luaL_argcheck(L, type == LUA_TNIL || type == LUA_TTABLE, ARG_OPTS,
                      "context must be a table");
        type = lua_getfield(L, ARG_OPTS, "on_transition"); /* [.., ctx, hook] */
        luaL_argcheck(L, type == LUA_TNIL || type == LUA_TFUNCTION, ARG_OPTS,
                      "on_transition must be a function");
        lua_settop(L, ARG_OPTS);
    }
    cm_machine_t *m = lua_newuserdatauv(L, sizeof *m, 0); /* [def, actions, opts, m] */
    cm_machine_init(m);
    luaL_setmetatable(L, MACHINE_MT);
    int m_idx = lua_gettop(L);
    if (load(L, m) != 0) { /* [.., m, .., msg] */
        cm_machine_release(m, L);
        lua_pushnil(L);
        lua_insert(L, -2); /* [.., nil, msg] */
        return 2;
    }
    lua_settop(L, m_idx); /* [def, actions, opts, m] */
    return 1;
}

static cm_machine_t *check_machine(lua_State *L)
{
    cm_machine_t *m = luaL_checkudata(L, 1, MACHINE_MT);
    luaL_argcheck(L, m->sealed, 1, "machine is released");
    return m;
}

static int l_fire(lua_State *L)
{
    cm_machine_t *m = check_machine(L);
    const char *name = luaL_checkstring(L, 2);
    int event = cm_machine_event_index(m, name);
    if (event < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "unknown event '%s'", name);
        return 2;
    }
    lua_settop(L, 3); /* [m, event, payload] */
    if (lua_isnil(L, 3)) {
        /* Guards and actions index the payload freely. */
        lua_newtable(L);
        lua_replace(L, 3);
    }
    int from, to;
    char buf[128];
    switch (cm_machine_fire(m, L, event, 3, &from, &to)) {
    case CM_MACHINE_TRANSITION:
        lua_pushliteral(L, "transition");
        lua_pushstring(L, m->states[to].name);
        return 2;
    case CM_MACHINE_IGNORED:
        lua_pushliteral(L, "ignored");
        return 1;
    case CM_MACHINE_QUEUED:
        lua_pushliteral(L, "queued");
        return 1;
    case CM_MACHINE_REFUSED:
        break;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "cannot %s: %s", name, cm_machine_describe(m, from, buf, sizeof buf));
    return 2;
}

static int l_state(lua_State *L)
{
    cm_machine_t *m = check_machine(L);
    lua_pushstring(L, m->states[m->state].name);
    return 1;
}

static int l_context(lua_State *L)
{
    cm_machine_t *m = check_machine(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, m->context_ref);
    return 1;
}

static int l_pairs(lua_State *L)
{
    static const char *const outcomes[] = {
        [CM_PAIR_ROWS] = "transition", [CM_PAIR_IGNORE] = "ignored", [CM_PAIR_REFUSED] = "refused"};
    cm_machine_t *m = check_machine(L);
    lua_createtable(L, m->nstates * m->nevents, 0); /* [m, list] */
    int n = 0;
    for (int s = 0; s < m->nstates; s++) {
        for (int e = 0; e < m->nevents; e++) {
            luaL_checkstack(L, 3, "listing pairs");
            lua_createtable(L, 0, 3); /* [m, list, pair] */
            cm_set_str(L, "state", m->states[s].name);
            cm_set_str(L, "event", m->events[e]);
            cm_set_str(L, "outcome", outcomes[cm_machine_pair_kind(m, s, e)]);
            lua_rawseti(L, -2, ++n); /* [m, list] */
        }
    }
    return 1;
}

static int l_rows(lua_State *L)
{
    cm_machine_t *m = check_machine(L);
    lua_createtable(L, m->nrows, 0); /* [m, list] */
    for (int r = 0; r < m->nrows; r++) {
        const cm_machine_row_t *row = &m->rows[r];
        luaL_checkstack(L, 4, "listing rows");
        lua_createtable(L, 0, 6); /* [m, list, row] */
        cm_set_str(L, "from", m->states[row->from].name);
        cm_set_str(L, "event", m->events[row->event]);
        cm_set_bool(L, "ignore", row->ignore);
        if (!row->ignore) {
            cm_set_str(L, "to", m->states[row->to].name);
            if (row->guard >= 0) cm_set_str(L, "guard", m->guards[row->guard].name);
            lua_createtable(L, row->nactions, 0); /* [m, list, row, actions] */
            for (int i = 0; i < row->nactions; i++) {
                lua_pushstring(L, m->actions[row->actions[i]].name);
                lua_rawseti(L, -2, i + 1);
            }
            lua_setfield(L, -2, "actions"); /* [m, list, row] */
        }
        lua_rawseti(L, -2, r + 1); /* [m, list] */
    }
    return 1;
}

static int l_tostring(lua_State *L)
{
    cm_machine_t *m = luaL_checkudata(L, 1, MACHINE_MT);
    if (m->sealed)
        lua_pushfstring(L, "cm.machine (%s)", m->states[m->state].name);
    else
        lua_pushliteral(L, "cm.machine (released)");
    return 1;
}

static int l_gc(lua_State *L)
{
    cm_machine_t *m = luaL_checkudata(L, 1, MACHINE_MT);
    cm_machine_release(m, L);
    return 0;
}

int cm__open_machine(lua_State *L)
{
    static const luaL_Reg methods[] = {{"fire", l_fire},       {"state", l_state},
                                       {"context", l_context}, {"pairs", l_pairs},
                                       {"rows", l_rows},       {NULL, NULL}};
    if (luaL_newmetatable(L, MACHINE_MT)) { /* [mt] */
        luaL_newlib(L, methods);            /* [mt, methods] */
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"new", l_new}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
