/*
 * The lifecycle engine (machine.h has the model and the contracts).
 *
 * Building copies names and resolves everything to indexes; sealing groups
 * the rows by (state, event) pair with a counting sort, so that firing finds
 * the rows of a pair with two array reads, then checks the table's shape.
 *
 * Firing is run to completion over a small FIFO queue.  cm_machine_fire marks
 * the machine busy, processes its event, then drains whatever the guards,
 * actions and hook fired meanwhile; a fire that finds the machine busy only
 * appends to the queue.  So an action that fires an event never sees the
 * machine half-way through a transition, and events are handled in the order
 * they were fired.  The processing runs inside one protected call: a Lua
 * failure that escapes the per-function protection (out of memory) cannot
 * leave the machine marked busy, which would queue every later event forever.
 */
#include "machine.h"

#include "runtime.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

/* ---- building ---------------------------------------------------------- */

void cm_machine_init(cm_machine_t *m)
{
    memset(m, 0, sizeof *m);
    m->context_ref = LUA_NOREF;
    m->on_transition_ref = LUA_NOREF;
}

/* Returns `items` grown so that element `n` fits (updating *cap), or NULL
 * when out of memory (then `items` is unchanged and still owned). */
static void *room_for(void *items, int n, int *cap, size_t size)
{
    if (n < *cap) return items;
    int grown_cap = *cap > 0 ? *cap * 2 : 8;
    void *grown = realloc(items, (size_t)grown_cap * size);
    if (grown != NULL) *cap = grown_cap;
    return grown;
}

int cm_machine_state_index(const cm_machine_t *m, const char *name)
{
    for (int i = 0; i < m->nstates; i++)
        if (strcmp(m->states[i].name, name) == 0) return i;
    return -1;
}

int cm_machine_event_index(const cm_machine_t *m, const char *name)
{
    for (int i = 0; i < m->nevents; i++)
        if (strcmp(m->events[i], name) == 0) return i;
    return -1;
}

static int fn_index(const cm_machine_fn_t *fns, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(fns[i].name, name) == 0) return i;
    return -1;
}

int cm_machine_guard_index(const cm_machine_t *m, const char *name)
{
    return fn_index(m->guards, m->nguards, name);
}

int cm_machine_action_index(const cm_machine_t *m, const char *name)
{
    return fn_index(m->actions, m->nactions, name);
}

int cm_machine_add_state(cm_machine_t *m, const char *name)
{
    if (cm_machine_state_index(m, name) >= 0) return CM_MACHINE_EDUP;
    cm_machine_state_t *states = room_for(m->states, m->nstates, &m->capstates, sizeof *states);
    if (states == NULL) return CM_MACHINE_ENOMEM;
    m->states = states;
    char *copy = strdup(name);
    if (copy == NULL) return CM_MACHINE_ENOMEM;
    m->states[m->nstates] = (cm_machine_state_t){.name = copy, .describe = NULL};
    return m->nstates++;
}

int cm_machine_add_event(cm_machine_t *m, const char *name)
{
    if (cm_machine_event_index(m, name) >= 0) return CM_MACHINE_EDUP;
    char **events = room_for(m->events, m->nevents, &m->capevents, sizeof *events);
    if (events == NULL) return CM_MACHINE_ENOMEM;
    m->events = events;
    char *copy = strdup(name);
    if (copy == NULL) return CM_MACHINE_ENOMEM;
    m->events[m->nevents] = copy;
    return m->nevents++;
}

int cm_machine_set_describe(cm_machine_t *m, int state, const char *text)
{
    char *copy = strdup(text);
    if (copy == NULL) return CM_MACHINE_ENOMEM;
    free(m->states[state].describe);
    m->states[state].describe = copy;
    return 0;
}

/* Appends a named function to *fns; takes over `ref` in every case. */
static int add_fn(lua_State *L, cm_machine_fn_t **fns, int *n, int *cap, const char *name, int ref)
{
    if (fn_index(*fns, *n, name) >= 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return CM_MACHINE_EDUP;
    }
    cm_machine_fn_t *grown = room_for(*fns, *n, cap, sizeof *grown);
    char *copy = grown != NULL ? strdup(name) : NULL;
    if (grown != NULL) *fns = grown;
    if (copy == NULL) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return CM_MACHINE_ENOMEM;
    }
    (*fns)[*n] = (cm_machine_fn_t){.name = copy, .ref = ref};
    return (*n)++;
}

int cm_machine_add_guard(cm_machine_t *m, lua_State *L, const char *name, int ref)
{
    return add_fn(L, &m->guards, &m->nguards, &m->capguards, name, ref);
}

int cm_machine_add_action(cm_machine_t *m, lua_State *L, const char *name, int ref)
{
    return add_fn(L, &m->actions, &m->nactions, &m->capactions, name, ref);
}

int cm_machine_add_row(cm_machine_t *m, const cm_machine_row_t *row)
{
    cm_machine_row_t *rows = room_for(m->rows, m->nrows, &m->caprows, sizeof *rows);
    if (rows == NULL) return CM_MACHINE_ENOMEM;
    m->rows = rows;
    int *actions = NULL;
    if (row->nactions > 0) {
        actions = malloc((size_t)row->nactions * sizeof *actions);
        if (actions == NULL) return CM_MACHINE_ENOMEM;
        memcpy(actions, row->actions, (size_t)row->nactions * sizeof *actions);
    }
    m->rows[m->nrows] = *row;
    m->rows[m->nrows].actions = actions;
    m->nrows++;
    return 0;
}

void cm_machine_set_context(cm_machine_t *m, lua_State *L, int context_ref, int hook_ref)
{
    luaL_unref(L, LUA_REGISTRYINDEX, m->context_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, m->on_transition_ref);
    m->context_ref = context_ref;
    m->on_transition_ref = hook_ref;
}

/* Drops the queued events and their payloads. */
static void drop_queue(cm_machine_t *m, lua_State *L)
{
    for (size_t i = 0; i < m->qlen; i++)
        luaL_unref(L, LUA_REGISTRYINDEX, m->queue[m->qhead + i].payload_ref);
    m->qhead = m->qlen = 0;
}

void cm_machine_release(cm_machine_t *m, lua_State *L)
{
    for (int i = 0; i < m->nstates; i++) {
        free(m->states[i].name);
        free(m->states[i].describe);
    }
    free(m->states);
    for (int i = 0; i < m->nevents; i++)
        free(m->events[i]);
    free(m->events);
    for (int i = 0; i < m->nguards; i++) {
        free(m->guards[i].name);
        luaL_unref(L, LUA_REGISTRYINDEX, m->guards[i].ref);
    }
    free(m->guards);
    for (int i = 0; i < m->nactions; i++) {
        free(m->actions[i].name);
        luaL_unref(L, LUA_REGISTRYINDEX, m->actions[i].ref);
    }
    free(m->actions);
    for (int i = 0; i < m->nrows; i++)
        free(m->rows[i].actions);
    free(m->rows);
    free(m->pair_start);
    free(m->pair_rows);
    drop_queue(m, L);
    free(m->queue);
    luaL_unref(L, LUA_REGISTRYINDEX, m->context_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, m->on_transition_ref);
    cm_machine_init(m);
}

/* ---- sealing ----------------------------------------------------------- */

/* Groups the rows by pair, keeping table order within a pair. */
static int index_pairs(cm_machine_t *m)
{
    int npairs = m->nstates * m->nevents;
    free(m->pair_start);
    free(m->pair_rows);
    m->pair_start = calloc((size_t)npairs + 1, sizeof *m->pair_start);
    m->pair_rows = malloc((size_t)(m->nrows > 0 ? m->nrows : 1) * sizeof *m->pair_rows);
    if (m->pair_start == NULL || m->pair_rows == NULL) return -1;
    /* Count the rows of each pair into pair_start[p + 1], then sum, so that
     * pair_start[p] is where pair p's rows begin. */
    for (int r = 0; r < m->nrows; r++)
        m->pair_start[m->rows[r].from * m->nevents + m->rows[r].event + 1]++;
    for (int p = 0; p < npairs; p++)
        m->pair_start[p + 1] += m->pair_start[p];
    int *next = malloc((size_t)(npairs > 0 ? npairs : 1) * sizeof *next);
    if (next == NULL) return -1;
    memcpy(next, m->pair_start, (size_t)npairs * sizeof *next);
    for (int r = 0; r < m->nrows; r++)
        m->pair_rows[next[m->rows[r].from * m->nevents + m->rows[r].event]++] = r;
    free(next);
    return 0;
}

/* Checks the rows of every pair: an ignore row alone, guards on every row
 * but the last, none on the last (it is what happens when every guard says
 * no, so a defined pair never ends without an outcome). */
static int check_pairs(const cm_machine_t *m, char *err, size_t errlen)
{
    for (int s = 0; s < m->nstates; s++) {
        for (int e = 0; e < m->nevents; e++) {
            int p = s * m->nevents + e;
            int first = m->pair_start[p], end = m->pair_start[p + 1];
            const char *pair_state = m->states[s].name, *pair_event = m->events[e];
            for (int k = first; k < end; k++) {
                const cm_machine_row_t *row = &m->rows[m->pair_rows[k]];
                if (row->ignore && end - first > 1) {
                    snprintf(err, errlen,
                             "%s + %s: an ignore row cannot share its pair with other rows",
                             pair_state, pair_event);
                    return -1;
                }
                if (k < end - 1 && row->guard < 0) {
                    snprintf(err, errlen, "%s + %s: only the last row of a pair may have no guard",
                             pair_state, pair_event);
                    return -1;
                }
                if (k == end - 1 && row->guard >= 0) {
                    snprintf(err, errlen,
                             "%s + %s: the last row of a pair must have no guard "
                             "(it is taken when every guard before it fails)",
                             pair_state, pair_event);
                    return -1;
                }
            }
        }
    }
    return 0;
}

/* Checks that the rows lead from `initial` to every state. */
static int check_reachable(const cm_machine_t *m, int initial, char *err, size_t errlen)
{
    char *seen = calloc((size_t)m->nstates, 1);
    if (seen == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    seen[initial] = 1;
    /* A fixed point over the rows: tables are a few dozen rows, so the
     * quadratic worst case costs nothing and reads simply. */
    for (int changed = 1; changed;) {
        changed = 0;
        for (int r = 0; r < m->nrows; r++) {
            const cm_machine_row_t *row = &m->rows[r];
            if (!row->ignore && seen[row->from] && !seen[row->to]) {
                seen[row->to] = 1;
                changed = 1;
            }
        }
    }
    int unreachable = -1;
    for (int s = 0; s < m->nstates && unreachable < 0; s++)
        if (!seen[s]) unreachable = s;
    free(seen);
    if (unreachable >= 0) {
        snprintf(err, errlen, "state '%s' is unreachable", m->states[unreachable].name);
        return -1;
    }
    return 0;
}

int cm_machine_seal(cm_machine_t *m, int initial, char *err, size_t errlen)
{
    if (m->nstates == 0 || m->nevents == 0) {
        snprintf(err, errlen, "a machine needs states and events");
        return -1;
    }
    if (initial < 0 || initial >= m->nstates) {
        snprintf(err, errlen, "no initial state");
        return -1;
    }
    if (index_pairs(m) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (check_pairs(m, err, errlen) != 0) return -1;
    if (check_reachable(m, initial, err, errlen) != 0) return -1;
    m->state = initial;
    m->sealed = 1;
    return 0;
}

/* ---- queries ----------------------------------------------------------- */

cm_machine_pair_kind_t cm_machine_pair_kind(const cm_machine_t *m, int state, int event)
{
    int p = state * m->nevents + event;
    int first = m->pair_start[p], end = m->pair_start[p + 1];
    if (first == end) return CM_PAIR_REFUSED;
    return m->rows[m->pair_rows[first]].ignore ? CM_PAIR_IGNORE : CM_PAIR_ROWS;
}

const char *cm_machine_describe(const cm_machine_t *m, int state, char *buf, size_t len)
{
    if (m->states[state].describe != NULL) return m->states[state].describe;
    snprintf(buf, len, "in state '%s'", m->states[state].name);
    return buf;
}

/* ---- firing ------------------------------------------------------------ */

/* Reports the error message on top of L (and pops it), naming the function
 * that raised it and the pair being processed. */
static void report_failure(const cm_machine_t *m, lua_State *L, const char *what, const char *name,
                           const cm_machine_row_t *row)
{
    luaL_checkstack(L, 2, "machine report");
    const char *where =
        lua_pushfstring(L, "machine %s '%s' (%s + %s)", what, name, m->states[row->from].name,
                        m->events[row->event]); /* [err, where] */
    lua_insert(L, -2);                          /* [where, err] */
    cm_report_error(L, where);                  /* [where] */
    lua_pop(L, 1);                              /* [] */
}

/* Calls the row's guard; an error counts as "no". */
static int guard_passes(const cm_machine_t *m, lua_State *L, const cm_machine_row_t *row,
                        int payload)
{
    const cm_machine_fn_t *guard = &m->guards[row->guard];
    luaL_checkstack(L, 3, "machine guard");
    lua_rawgeti(L, LUA_REGISTRYINDEX, guard->ref);     /* [guard] */
    lua_rawgeti(L, LUA_REGISTRYINDEX, m->context_ref); /* [guard, ctx] */
    lua_pushvalue(L, payload);                         /* [guard, ctx, payload] */
    if (cm_pcall(L, 2, 1) != LUA_OK) {                 /* [err] */
        report_failure(m, L, "guard", guard->name, row);
        return 0;
    }
    int passes = lua_toboolean(L, -1); /* [result] */
    lua_pop(L, 1);
    return passes;
}

/* Takes a row: the new state, then the actions, then the hook. */
static void take_row(cm_machine_t *m, lua_State *L, const cm_machine_row_t *row, int payload)
{
    /* The state changes first, so an action that asks the machine where it
     * is gets the state it is working towards. */
    m->state = row->to;
    for (int i = 0; i < row->nactions; i++) {
        const cm_machine_fn_t *action = &m->actions[row->actions[i]];
        luaL_checkstack(L, 3, "machine action");
        lua_rawgeti(L, LUA_REGISTRYINDEX, action->ref);    /* [action] */
        lua_rawgeti(L, LUA_REGISTRYINDEX, m->context_ref); /* [action, ctx] */
        lua_pushvalue(L, payload);                         /* [action, ctx, payload] */
        if (cm_pcall(L, 2, 0) != LUA_OK)                   /* [] or [err] */
            report_failure(m, L, "action", action->name, row);
    }
    if (m->on_transition_ref == LUA_NOREF) return;
    luaL_checkstack(L, 5, "machine hook");
    lua_rawgeti(L, LUA_REGISTRYINDEX, m->on_transition_ref); /* [hook] */
    lua_pushstring(L, m->states[row->from].name);            /* [hook, from] */
    lua_pushstring(L, m->events[row->event]);                /* [hook, from, event] */
    lua_pushstring(L, m->states[row->to].name);              /* [hook, from, event, to] */
    lua_pushvalue(L, payload);                               /* [hook, from, event, to, payload] */
    if (cm_pcall(L, 4, 0) != LUA_OK)                         /* [] or [err] */
        report_failure(m, L, "hook", "on_transition", row);
}

/* Processes one event in the current state (see cm_machine_fire); *to gets
 * the state after it. */
static cm_machine_result_t process(cm_machine_t *m, lua_State *L, int event, int payload, int *to)
{
    int p = m->state * m->nevents + event;
    int first = m->pair_start[p], end = m->pair_start[p + 1];
    *to = m->state;
    if (first == end) return CM_MACHINE_REFUSED;
    if (m->rows[m->pair_rows[first]].ignore) return CM_MACHINE_IGNORED;
    for (int k = first; k < end; k++) {
        const cm_machine_row_t *row = &m->rows[m->pair_rows[k]];
        if (row->guard >= 0 && !guard_passes(m, L, row, payload)) continue;
        take_row(m, L, row, payload);
        *to = row->to;
        return CM_MACHINE_TRANSITION;
    }
    /* Not reached: sealing makes the last row of every pair unguarded. */
    return CM_MACHINE_REFUSED;
}

/* Appends an event to the queue, its payload held by a registry ref. */
static void enqueue(cm_machine_t *m, lua_State *L, int event, int payload)
{
    if (m->qhead + m->qlen == m->qcap) {
        if (m->qhead > 0) {
            /* Slide the pending events to the front before growing. */
            memmove(m->queue, m->queue + m->qhead, m->qlen * sizeof *m->queue);
            m->qhead = 0;
        } else {
            size_t cap = m->qcap > 0 ? m->qcap * 2 : 8;
            cm_machine_pending_t *grown = realloc(m->queue, cap * sizeof *grown);
            if (grown == NULL) {
                luaL_error(L, "out of memory");
                return;
            }
            m->queue = grown;
            m->qcap = cap;
        }
    }
    lua_pushvalue(L, payload);                /* [payload] */
    int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [] */
    m->queue[m->qhead + m->qlen] = (cm_machine_pending_t){.event = event, .payload_ref = ref};
    m->qlen++;
}

/* One run to completion, passed to the protected call. */
typedef struct fire_run {
    cm_machine_t *m;
    int event;                  /* the event fired */
    cm_machine_result_t result; /* what became of it */
    int from, to;               /* the states before and after it */
} fire_run_t;

/* The protected part of cm_machine_fire: the event, then the queue.
 * Called as fn(run, payload). */
static int run_to_completion(lua_State *L)
{
    fire_run_t *run = lua_touserdata(L, 1); /* [run, payload] */
    cm_machine_t *m = run->m;
    run->from = m->state;
    run->result = process(m, L, run->event, 2, &run->to);
    while (m->qlen > 0) {
        cm_machine_pending_t next = m->queue[m->qhead];
        m->qhead++;
        m->qlen--;
        if (m->qlen == 0) m->qhead = 0;
        luaL_checkstack(L, 3, "machine queue");
        lua_rawgeti(L, LUA_REGISTRYINDEX, next.payload_ref); /* [run, payload, queued] */
        luaL_unref(L, LUA_REGISTRYINDEX, next.payload_ref);  /* the stack keeps it */
        int state = m->state, to;
        if (process(m, L, next.event, 3, &to) == CM_MACHINE_REFUSED) {
            /* The fire that queued it returned "queued": nobody else will
             * ever see this refusal. */
            char buf[128];
            const char *where = lua_pushfstring(L, "machine: queued event '%s'",
                                                m->events[next.event]); /* [.., queued, where] */
            lua_pushfstring(L, "cannot %s: %s", m->events[next.event],
                            cm_machine_describe(m, state, buf, sizeof buf)); /* [.., where, msg] */
            cm_report_error(L, where); /* [.., queued, where] */
            lua_pop(L, 1);
        }
        lua_pop(L, 1); /* [run, payload] */
    }
    return 0;
}

cm_machine_result_t cm_machine_fire(cm_machine_t *m, lua_State *L, int event, int payload,
                                    int *from, int *to)
{
    if (!m->sealed) luaL_error(L, "machine: fired before it was sealed");
    payload = lua_absindex(L, payload);
    if (m->busy) {
        enqueue(m, L, event, payload);
        if (from != NULL) *from = m->state;
        if (to != NULL) *to = m->state;
        return CM_MACHINE_QUEUED;
    }
    fire_run_t run = {.m = m, .event = event, .result = CM_MACHINE_REFUSED};
    luaL_checkstack(L, 3, "machine fire");
    lua_pushcfunction(L, run_to_completion); /* [fn] */
    lua_pushlightuserdata(L, &run);          /* [fn, run] */
    lua_pushvalue(L, payload);               /* [fn, run, payload] */
    m->busy = 1;
    int status = cm_pcall(L, 2, 0); /* [] or [err] */
    m->busy = 0;
    if (status != LUA_OK) {
        drop_queue(m, L);
        lua_error(L);
    }
    if (from != NULL) *from = run.from;
    if (to != NULL) *to = run.to;
    return run.result;
}
