/*
 * The lifecycle spec runner: checks lua/lifecycle.lua against
 * spec/lifecycle.lua, one cmocka test per case (the spec's header says what a
 * case asserts).  The specs are data; this file is the only code.
 *
 * main() first surveys the spec on a scratch runtime: it names the cases
 * ("running+exited[on-failure, code 1]") and lists the state x event pairs
 * of the table that no case covers.  The first test fails on such a gap, so
 * the spec stays exhaustive by construction.  Then every case runs on its own
 * fresh runtime: the real table (require "lifecycle", the embedded copy), its
 * real guards, and recording fake actions that append their name to a list.
 *
 * Each case also notes which row of the table it took: the row of its pair
 * whose target state and actions are what ran (the survey checks that no two
 * rows of a pair do the same, so the match is exact).  The last test fails
 * for any row no case took: every guard is seen both true (its row taken)
 * and false (a later row of its pair taken, the last one has no guard).
 *
 * A case gathers what differs from the spec into a text while Lua runs and
 * asserts only once back in plain C, so a failure never longjmps out of a
 * Lua frame, and it lists every difference at once.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"
#include "runtime.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct spec_case {
    int index;        /* 1-based position in spec.cases */
    char *name;       /* the test's name */
    cm_runtime_t *rt; /* the case's own runtime, from setup to teardown */
} spec_case_t;

static char *spec_path;      /* $CM_SOURCE_DIR/spec/lifecycle.lua */
static char *survey_problem; /* why the spec is incomplete or unreadable, or NULL */
static spec_case_t *cases;
static int ncases;

/* The table's rows, as what taking them looks like:
 * "running+exited->failed {record_exit, schedule_retry}" or
 * "stopped+ready ignored"; and whether a case took each. */
static char **row_keys;
static char **row_names; /* for messages: the key and the row's guard */
static int *row_taken;
static int nrows;

/* What a case found wrong, as text for fail_msg. */
typedef struct findings {
    char text[4096];
    size_t len;
} findings_t;

static void note(findings_t *f, const char *fmt, ...)
{
    if (f->len >= sizeof f->text - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(f->text + f->len, sizeof f->text - f->len, fmt, ap);
    va_end(ap);
    if (n > 0) f->len += (size_t)n;
    if (f->len > sizeof f->text - 1) f->len = sizeof f->text - 1;
}

/* ---- the table, the spec and the fakes --------------------------------- */

/* Pushes the lifecycle table (the embedded lua/lifecycle.lua) and the spec;
 * raises on any problem.  [] -> [def, spec] */
static void push_def_and_spec(lua_State *L)
{
    luaL_checkstack(L, 4, NULL);
    lua_getglobal(L, "require");     /* [require] */
    lua_pushliteral(L, "lifecycle"); /* [require, "lifecycle"] */
    if (cm_pcall(L, 1, 1) != LUA_OK) /* [def] */
        luaL_error(L, "require('lifecycle') failed: %s", lua_tostring(L, -1));
    if (!lua_istable(L, -1)) luaL_error(L, "lua/lifecycle.lua does not return a table");
    if (luaL_loadfilex(L, spec_path, "t") != LUA_OK) /* [def, chunk] */
        luaL_error(L, "%s", lua_tostring(L, -1));
    if (cm_pcall(L, 0, 1) != LUA_OK) /* [def, spec] */
        luaL_error(L, "%s: %s", spec_path, lua_tostring(L, -1));
    if (!lua_istable(L, -1)) luaL_error(L, "%s does not return a table", spec_path);
    if (lua_getfield(L, -1, "cases") != LUA_TTABLE) /* [def, spec, cases] */
        luaL_error(L, "%s: 'cases' must be a list", spec_path);
    lua_pop(L, 1); /* [def, spec] */
}

/* A fake action: appends its name (upvalue 1) to the call list (upvalue 2). */
static int record_action(lua_State *L)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, lua_upvalueindex(2));
    lua_pushvalue(L, lua_upvalueindex(1)); /* [ctx, payload, name] */
    lua_rawseti(L, lua_upvalueindex(2), n + 1);
    return 0;
}

/* Pushes { name = recorder } for every action a row of the table at `def`
 * names, each recorder appending to the list at `calls`. */
static void push_fake_actions(lua_State *L, int def, int calls)
{
    luaL_checkstack(L, 3, NULL);
    lua_newtable(L); /* [actions] */
    int actions = lua_gettop(L);
    lua_getfield(L, def, "transitions"); /* [actions, rows] */
    int nrows = lua_istable(L, -1) ? (int)lua_rawlen(L, -1) : 0;
    for (int i = 1; i <= nrows; i++) {
        luaL_checkstack(L, 6, NULL);
        if (lua_rawgeti(L, actions + 1, i) == LUA_TTABLE && /* [actions, rows, row] */
            lua_getfield(L, -1, "actions") == LUA_TTABLE) { /* [actions, rows, row, names] */
            int nnames = (int)lua_rawlen(L, -1);
            for (int j = 1; j <= nnames; j++) {
                if (lua_rawgeti(L, -1, j) == LUA_TSTRING) { /* [.., names, name] */
                    lua_pushvalue(L, -1);                   /* [.., names, name, name] */
                    lua_pushvalue(L, calls);                /* [.., names, name, name, calls] */
                    lua_pushcclosure(L, record_action, 2);  /* [.., names, name, fn] */
                    lua_rawset(L, actions);                 /* [.., names] */
                } else {
                    lua_pop(L, 1); /* [.., names] */
                }
            }
        }
        lua_settop(L, actions + 1); /* [actions, rows] */
    }
    lua_settop(L, actions); /* [actions] */
}

/* Appends the reported message (argument 1) to the list in upvalue 1. */
static int record_error(lua_State *L)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, lua_upvalueindex(1));
    lua_settop(L, 1); /* [msg] */
    lua_rawseti(L, lua_upvalueindex(1), n + 1);
    return 0;
}

/* The on_transition hook: appends "from+event->to" to the list in upvalue 1. */
static int record_transition(lua_State *L)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, lua_upvalueindex(1));
    lua_pushfstring(L, "%s+%s->%s", luaL_checkstring(L, 1), luaL_checkstring(L, 2),
                    luaL_checkstring(L, 3)); /* [from, event, to, payload, text] */
    lua_rawseti(L, lua_upvalueindex(1), n + 1);
    return 0;
}

/* Pushes the strings of the list at `idx` joined as "{a, b}" (nil: "{}"). */
static const char *push_joined(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '{');
    int n = lua_istable(L, idx) ? (int)lua_rawlen(L, idx) : 0;
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addstring(&b, ", ");
        lua_rawgeti(L, idx, i);      /* [.., item] */
        luaL_tolstring(L, -1, NULL); /* [.., item, text] */
        lua_remove(L, -2);           /* [.., text] */
        luaL_addvalue(&b);
    }
    luaL_addchar(&b, '}');
    luaL_pushresult(&b); /* [.., joined] */
    return lua_tostring(L, -1);
}

/* Pushes a readable form of what fire returned (the two values at r1, r2). */
static const char *push_outcome(lua_State *L, int r1, int r2)
{
    if (lua_isnil(L, r1))
        return lua_pushfstring(L, "refused (\"%s\")", luaL_tolstring(L, r2, NULL));
    if (lua_isnil(L, r2)) return lua_pushfstring(L, "%s", luaL_tolstring(L, r1, NULL));
    return lua_pushfstring(L, "%s to '%s'", luaL_tolstring(L, r1, NULL),
                           luaL_tolstring(L, r2, NULL));
}

/* Calls method `name` of the object at `obj` with the `nargs` values on
 * top; leaves `nresults` results.  Raises when the call raises. */
static void call_method(lua_State *L, int obj, const char *name, int nargs, int nresults)
{
    luaL_checkstack(L, 2, NULL);
    lua_getfield(L, obj, name);   /* [args.., fn] */
    lua_pushvalue(L, obj);        /* [args.., fn, obj] */
    lua_rotate(L, -nargs - 2, 2); /* [fn, obj, args..] */
    if (cm_pcall(L, nargs + 1, nresults) != LUA_OK)
        luaL_error(L, "%s: %s", name, lua_tostring(L, -1));
}

/* ---- the survey -------------------------------------------------------- */

typedef struct survey {
    findings_t gaps; /* uncovered pairs, duplicate names */
    int ncases;
    char **names; /* per case, malloc'd */
} survey_t;

/* Protected body of the survey: names the cases and finds the pairs no case
 * covers.  Called as fn(survey). */
static int survey_body(lua_State *L)
{
    survey_t *s = lua_touserdata(L, 1);
    luaL_checkstack(L, 20, "spec survey"); /* the loops check their own */
    push_def_and_spec(L);                  /* [s, def, spec] */
    lua_getfield(L, 3, "cases");           /* [s, def, spec, cases] */
    int ncase = (int)lua_rawlen(L, 4);
    s->names = calloc((size_t)(ncase > 0 ? ncase : 1), sizeof *s->names);
    if (s->names == NULL) return luaL_error(L, "out of memory");
    s->ncases = ncase;

    /* The names, and which pairs the cases cover: covered["state+event"]. */
    lua_newtable(L); /* [s, def, spec, cases, covered] */
    lua_newtable(L); /* [.., covered, names_seen] */
    for (int i = 1; i <= ncase; i++) {
        luaL_checkstack(L, 10, NULL);
        enum { CASE = 7, STATE, EVENT, LABEL };
        if (lua_rawgeti(L, 4, i) != LUA_TTABLE) /* [.., names_seen, case] */
            return luaL_error(L, "%s: case %d is not a table", spec_path, i);
        lua_getfield(L, CASE, "state");                     /* [.., case, state] */
        lua_getfield(L, CASE, "event");                     /* [.., case, state, event] */
        lua_getfield(L, CASE, "label");                     /* [.., case, state, event, label] */
        const char *state = luaL_tolstring(L, STATE, NULL); /* [.., label, state_s] */
        const char *event = luaL_tolstring(L, EVENT, NULL); /* [.., state_s, event_s] */
        const char *pair = lua_pushfstring(L, "%s+%s", state, event); /* [.., pair] */
        lua_pushboolean(L, 1);
        lua_setfield(L, 5, pair); /* covered[pair] = true */
        const char *name = pair;
        if (!lua_isnil(L, LABEL)) /* [.., pair, label_s, name] */
            name = lua_pushfstring(L, "%s[%s]", pair, luaL_tolstring(L, LABEL, NULL));
        if (lua_getfield(L, 6, name) != LUA_TNIL) /* [.., name, seen?] */
            note(&s->gaps, "two cases are named '%s' (give them labels)\n", name);
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
        lua_setfield(L, 6, name); /* names_seen[name] = true */
        s->names[i - 1] = strdup(name);
        if (s->names[i - 1] == NULL) return luaL_error(L, "out of memory");
        lua_settop(L, 6); /* [s, def, spec, cases, covered, names_seen] */
    }

    /* The pairs come from the engine itself, so a state or an event added to
     * the table shows up here without touching this runner. */
    lua_newtable(L);                 /* [.., names_seen, calls] */
    lua_getglobal(L, "cm");          /* [.., calls, cm] */
    lua_getfield(L, -1, "machine");  /* [.., calls, cm, machine] */
    lua_getfield(L, -1, "new");      /* [.., calls, cm, machine, new] */
    lua_pushvalue(L, 2);             /* [.., new, def] */
    push_fake_actions(L, 2, 7);      /* [.., new, def, actions] */
    if (cm_pcall(L, 2, 2) != LUA_OK) /* [.., calls, cm, machine, m, err] */
        return luaL_error(L, "cm.machine.new: %s", lua_tostring(L, -1));
    if (lua_isnil(L, -2))
        return luaL_error(L, "lua/lifecycle.lua is invalid: %s", lua_tostring(L, -1));
    lua_pop(L, 1); /* [.., calls, cm, machine, m] */
    int m = lua_gettop(L);
    call_method(L, m, "pairs", 0, 1); /* [.., m, pairs] */
    int npairs = (int)lua_rawlen(L, -1);
    int missing = 0;
    for (int i = 1; i <= npairs; i++) {
        luaL_checkstack(L, 4, NULL);
        lua_rawgeti(L, -1, i);          /* [.., pairs, pair] */
        lua_getfield(L, -1, "state");   /* [.., pairs, pair, state] */
        lua_getfield(L, -2, "event");   /* [.., pairs, pair, state, event] */
        lua_getfield(L, -3, "outcome"); /* [.., pair, state, event, outcome] */
        const char *key = lua_pushfstring(L, "%s+%s", lua_tostring(L, -3), lua_tostring(L, -2));
        if (lua_getfield(L, 5, key) == LUA_TNIL) { /* [.., key, covered?] */
            if (missing++ == 0) note(&s->gaps, "state x event pairs with no case in the spec:\n");
            note(&s->gaps, "  %s (the table: %s)\n", key, lua_tostring(L, -3));
        }
        lua_pop(L, 6); /* [.., pairs] */
    }
    lua_pop(L, 1); /* [.., m] */

    /* The rows, and what taking each looks like. */
    call_method(L, m, "rows", 0, 1); /* [.., m, rows] */
    int rows = lua_gettop(L);
    nrows = (int)lua_rawlen(L, rows);
    row_keys = calloc((size_t)(nrows > 0 ? nrows : 1), sizeof *row_keys);
    row_names = calloc((size_t)(nrows > 0 ? nrows : 1), sizeof *row_names);
    row_taken = calloc((size_t)(nrows > 0 ? nrows : 1), sizeof *row_taken);
    if (row_keys == NULL || row_names == NULL || row_taken == NULL)
        return luaL_error(L, "out of memory");
    for (int i = 1; i <= nrows; i++) {
        luaL_checkstack(L, 10, NULL);
        lua_rawgeti(L, rows, i);        /* [.., rows, row] */
        lua_getfield(L, -1, "from");    /* [.., row, from] */
        lua_getfield(L, -2, "event");   /* [.., row, from, event] */
        lua_getfield(L, -3, "to");      /* [.., row, from, event, to] */
        lua_getfield(L, -4, "guard");   /* [.., row, from, event, to, guard] */
        lua_getfield(L, -5, "ignore");  /* [.., guard, ignore] */
        lua_getfield(L, -6, "actions"); /* [.., guard, ignore, actions] */
        enum { FROM = 2, EVENT, TO, GUARD, IGNORE, ACTIONS }; /* above `rows` */
        const char *from = lua_tostring(L, rows + FROM), *event = lua_tostring(L, rows + EVENT);
        const char *key;
        if (lua_toboolean(L, rows + IGNORE)) {
            key = lua_pushfstring(L, "%s+%s ignored", from, event);
        } else {
            const char *actions = push_joined(L, rows + ACTIONS); /* [.., actions, joined] */
            key = lua_pushfstring(L, "%s+%s->%s %s", from, event, lua_tostring(L, rows + TO),
                                  actions);
        }
        const char *guard = lua_tostring(L, rows + GUARD);
        const char *name = lua_pushfstring(L, "%s%s%s%s", key, guard ? " (guard " : "",
                                           guard ? guard : "", guard ? ")" : "");
        for (int j = 0; j < i - 1; j++)
            if (strcmp(row_keys[j], key) == 0)
                note(&s->gaps, "rows %d and %d do the same (%s): a case cannot tell them apart\n",
                     j + 1, i, key);
        row_keys[i - 1] = strdup(key);
        row_names[i - 1] = strdup(name);
        if (row_keys[i - 1] == NULL || row_names[i - 1] == NULL)
            return luaL_error(L, "out of memory");
        lua_settop(L, rows); /* [.., m, rows] */
    }
    return 0;
}

/* Surveys the spec; sets cases, ncases and survey_problem. */
static void survey_spec(void)
{
    cm_runtime_t *rt = cm_runtime_new();
    if (rt == NULL) {
        survey_problem = strdup("cannot create a runtime");
        return;
    }
    lua_State *L = cm_runtime_lua(rt);
    survey_t s = {.ncases = 0};
    lua_pushcfunction(L, survey_body); /* [fn] */
    lua_pushlightuserdata(L, &s);      /* [fn, s] */
    if (cm_pcall(L, 1, 0) != LUA_OK) { /* [] or [err] */
        note(&s.gaps, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    cases = calloc((size_t)(s.ncases > 0 ? s.ncases : 1), sizeof *cases);
    for (int i = 0; i < s.ncases && cases != NULL; i++) {
        if (s.names[i] == NULL) continue; /* the survey stopped before it */
        cases[ncases++] = (spec_case_t){.index = i + 1, .name = s.names[i]};
    }
    free(s.names);
    if (cm_runtime_free(rt) != 0) note(&s.gaps, "the survey's event loop did not close empty\n");
    if (s.gaps.len > 0) survey_problem = strdup(s.gaps.text);
}

static void every_pair_has_a_case(void **state)
{
    (void)state;
    if (survey_problem != NULL) fail_msg("%s: %s", spec_path, survey_problem);
}

/* Runs after every case: each row of the table was taken by one. */
static void every_row_is_taken(void **state)
{
    (void)state;
    findings_t f = {.len = 0};
    for (int i = 0; i < nrows; i++)
        if (!row_taken[i]) note(&f, "  row %d: %s\n", i + 1, row_names[i]);
    if (nrows == 0) note(&f, "  the survey found no rows\n");
    if (f.len > 0) fail_msg("%s: rows no case takes:\n%s", spec_path, f.text);
}

/* Marks the row whose taking looks like `key` (see row_keys). */
static void mark_taken(const char *key)
{
    for (int i = 0; i < nrows; i++)
        if (strcmp(row_keys[i], key) == 0) row_taken[i] = 1;
}

/* ---- one case ---------------------------------------------------------- */

/* Protected body of a case: runs it and notes every difference from the
 * spec.  Called as fn(case, findings). */
static int case_body(lua_State *L)
{
    const spec_case_t *c = lua_touserdata(L, 1);
    findings_t *f = lua_touserdata(L, 2);
    lua_settop(L, 0);
    /* Everything below stays on the stack until the end: about 30 slots. */
    luaL_checkstack(L, 40, "spec case");
    push_def_and_spec(L);        /* [def, spec] */
    lua_getfield(L, 2, "cases"); /* [def, spec, cases] */
    lua_rawgeti(L, 3, c->index); /* [def, spec, cases, case] */
    enum { DEF = 1, SPEC, CASES, CASE, CALLS, ERRORS, HOOKS, CTX, M, R1, R2 };

    lua_newtable(L); /* [.., case, calls] */
    lua_newtable(L); /* [.., calls, errors] */
    lua_newtable(L); /* [.., errors, hooks] */

    /* Reported errors (a guard or an action that raised) fail the case. */
    lua_getglobal(L, "cm");                   /* [.., hooks, cm] */
    lua_getfield(L, -1, "set_error_handler"); /* [.., hooks, cm, set] */
    lua_pushvalue(L, ERRORS);
    lua_pushcclosure(L, record_error, 1); /* [.., hooks, cm, set, handler] */
    if (cm_pcall(L, 1, 0) != LUA_OK)
        return luaL_error(L, "set_error_handler: %s", lua_tostring(L, -1));
    lua_pop(L, 1); /* [.., hooks] */

    /* ctx: the spec's context, then the case's fields over it. */
    lua_newtable(L); /* [.., hooks, ctx] */
    for (int layer = 0; layer < 2; layer++) {
        if (layer == 0)
            lua_getfield(L, SPEC, "context"); /* [.., ctx, src] */
        else
            lua_getfield(L, CASE, "ctx");
        if (lua_istable(L, -1)) {
            lua_pushnil(L);           /* [.., ctx, src, nil] */
            while (lua_next(L, -2)) { /* [.., ctx, src, key, value] */
                lua_pushvalue(L, -2); /* [.., src, key, value, key] */
                lua_insert(L, -2);    /* [.., src, key, key, value] */
                lua_rawset(L, CTX);   /* [.., ctx, src, key] */
            }
        }
        lua_pop(L, 1); /* [.., ctx] */
    }

    lua_getglobal(L, "cm");         /* [.., ctx, cm] */
    lua_getfield(L, -1, "machine"); /* [.., ctx, cm, machine] */
    lua_getfield(L, -1, "new");     /* [.., ctx, cm, machine, new] */
    lua_remove(L, -2);
    lua_remove(L, -2);                /* [.., ctx, new] */
    lua_pushvalue(L, DEF);            /* [.., new, def] */
    push_fake_actions(L, DEF, CALLS); /* [.., new, def, actions] */
    lua_createtable(L, 0, 3);         /* [.., new, def, actions, opts] */
    lua_getfield(L, CASE, "state");
    lua_setfield(L, -2, "initial");
    lua_pushvalue(L, CTX);
    lua_setfield(L, -2, "context");
    lua_pushvalue(L, HOOKS);
    lua_pushcclosure(L, record_transition, 1);
    lua_setfield(L, -2, "on_transition");
    if (cm_pcall(L, 3, 2) != LUA_OK) /* [.., ctx, m, err] */
        return luaL_error(L, "cm.machine.new raised: %s", lua_tostring(L, -1));
    if (lua_isnil(L, -2)) {
        note(f, "cm.machine.new: %s\n", lua_tostring(L, -1));
        return 0;
    }
    lua_pop(L, 1); /* [.., ctx, m] */

    lua_getfield(L, CASE, "event");   /* [.., m, event] */
    lua_getfield(L, CASE, "payload"); /* [.., m, event, payload] */
    call_method(L, M, "fire", 2, 2);  /* [.., m, r1, r2] */

    lua_getfield(L, CASE, "state");   /* [.., r2, from] */
    lua_getfield(L, CASE, "expect");  /* [.., r2, from, expect] */
    lua_getfield(L, CASE, "to");      /* [.., r2, from, expect, to] */
    call_method(L, M, "state", 0, 1); /* [.., from, expect, to, now] */
    const char *from = lua_tostring(L, -4), *expect = lua_tostring(L, -3);
    const char *to = lua_tostring(L, -2), *now = lua_tostring(L, -1);
    const char *got = push_outcome(L, R1, R2);
    if (expect == NULL) expect = "(missing)";
    if (from == NULL) note(f, "the case has no 'state'\n");

    const char *end_state = from, *want_hooks = "{}";
    if (strcmp(expect, "transition") == 0) {
        if (to == NULL) note(f, "the case has no 'to'\n");
        if (!lua_isstring(L, R1) || strcmp(lua_tostring(L, R1), "transition") != 0 || to == NULL ||
            !lua_isstring(L, R2) || strcmp(lua_tostring(L, R2), to) != 0)
            note(f, "fire: expected transition to '%s', got %s\n", to ? to : "?", got);
        end_state = to;
        lua_getfield(L, CASE, "event"); /* [.., event] */
        want_hooks = lua_pushfstring(L, "{%s+%s->%s}", from, lua_tostring(L, -1), to ? to : "?");
    } else if (strcmp(expect, "ignored") == 0) {
        if (!lua_isstring(L, R1) || strcmp(lua_tostring(L, R1), "ignored") != 0)
            note(f, "fire: expected ignored, got %s\n", got);
    } else if (strcmp(expect, "refused") == 0) {
        lua_getfield(L, CASE, "message"); /* [.., message] */
        const char *message = lua_tostring(L, -1);
        if (message == NULL) note(f, "the case has no 'message'\n");
        if (!lua_isnil(L, R1) || !lua_isstring(L, R2) ||
            (message != NULL && strcmp(lua_tostring(L, R2), message) != 0))
            note(f, "fire: expected refused (\"%s\"), got %s\n", message ? message : "?", got);
    } else {
        note(f, "unknown expect '%s' (transition, ignored or refused)\n", expect);
    }

    if (end_state != NULL && (now == NULL || strcmp(now, end_state) != 0))
        note(f, "state: expected '%s', got '%s'\n", end_state, now ? now : "?");
    lua_getfield(L, CASE, "actions"); /* [.., actions] */
    const char *want_actions = push_joined(L, -1);
    const char *got_actions = push_joined(L, CALLS);
    if (strcmp(want_actions, got_actions) != 0)
        note(f, "actions: expected %s, got %s\n", want_actions, got_actions);
    if (lua_isstring(L, R1) && strcmp(lua_tostring(L, R1), "transition") == 0 && from != NULL) {
        lua_getfield(L, CASE, "event"); /* [.., event] */
        mark_taken(lua_pushfstring(L, "%s+%s->%s %s", from, lua_tostring(L, -1),
                                   lua_tostring(L, R2), got_actions));
    } else if (lua_isstring(L, R1) && strcmp(lua_tostring(L, R1), "ignored") == 0 && from != NULL) {
        lua_getfield(L, CASE, "event"); /* [.., event] */
        mark_taken(lua_pushfstring(L, "%s+%s ignored", from, lua_tostring(L, -1)));
    }
    const char *got_hooks = push_joined(L, HOOKS);
    if (strcmp(want_hooks, got_hooks) != 0)
        note(f, "on_transition: expected %s, got %s\n", want_hooks, got_hooks);
    if (lua_rawlen(L, ERRORS) > 0) note(f, "errors were reported: %s\n", push_joined(L, ERRORS));
    return 0;
}

static int case_setup(void **state)
{
    spec_case_t *c = *state;
    c->rt = cm_runtime_new();
    return c->rt != NULL ? 0 : -1;
}

static int case_teardown(void **state)
{
    spec_case_t *c = *state;
    int rc = cm_runtime_free(c->rt);
    c->rt = NULL;
    assert_int_equal(rc, 0); /* the loop closed empty */
    return 0;
}

static void run_case(void **state)
{
    spec_case_t *c = *state;
    lua_State *L = cm_runtime_lua(c->rt);
    findings_t f = {.len = 0};
    lua_pushcfunction(L, case_body);   /* [fn] */
    lua_pushlightuserdata(L, c);       /* [fn, case] */
    lua_pushlightuserdata(L, &f);      /* [fn, case, findings] */
    if (cm_pcall(L, 2, 0) != LUA_OK) { /* [] or [err] */
        note(&f, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    if (f.len > 0) fail_msg("%s:\n%s", c->name, f.text);
}

int main(void)
{
    const char *src = getenv("CM_SOURCE_DIR");
    if (src == NULL || src[0] == '\0') {
        fprintf(stderr, "CM_SOURCE_DIR is not set (run the suite through ctest)\n");
        return 1;
    }
    size_t len = strlen(src) + sizeof "/spec/lifecycle.lua";
    spec_path = malloc(len);
    if (spec_path == NULL) return 1;
    snprintf(spec_path, len, "%s/spec/lifecycle.lua", src);
    survey_spec();

    struct CMUnitTest *tests = calloc((size_t)ncases + 2, sizeof *tests);
    if (tests == NULL) return 1;
    tests[0] = (struct CMUnitTest){.name = "every state x event pair has a case",
                                   .test_func = every_pair_has_a_case};
    for (int i = 0; i < ncases; i++)
        tests[i + 1] = (struct CMUnitTest){.name = cases[i].name,
                                           .test_func = run_case,
                                           .setup_func = case_setup,
                                           .teardown_func = case_teardown,
                                           .initial_state = &cases[i]};
    tests[ncases + 1] = (struct CMUnitTest){.name = "every row of the table is taken by a case",
                                            .test_func = every_row_is_taken};
    int failed = _cmocka_run_group_tests("lifecycle_spec", tests, (size_t)ncases + 2, NULL, NULL);

    for (int i = 0; i < ncases; i++)
        free(cases[i].name);
    for (int i = 0; i < nrows; i++) {
        free(row_keys[i]);
        free(row_names[i]);
    }
    free(row_keys);
    free(row_names);
    free(row_taken);
    free(cases);
    free(tests);
    free(survey_problem);
    free(spec_path);
    return failed;
}
