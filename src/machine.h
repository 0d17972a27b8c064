/*
 * The lifecycle engine: a finite state machine whose transition table is data
 * (lua/lifecycle.lua) and whose guards and actions are Lua functions.
 *
 * A definition names its states and events and lists rows.  A row says: in
 * state `from`, event `event` goes to state `to` when its guard passes (or
 * always, without a guard), running its actions in order.  An ignore row says
 * the event is dropped in that state.  The rows of one (state, event) pair are
 * tried in table order; every row but the last has a guard and the last has
 * none, so a pair that has rows always has an outcome.  A pair with no row is
 * refused: the event makes no sense in that state and the caller is told so
 * ("cannot stop: not running").
 *
 * Everything is resolved once, when the machine is built: states, events,
 * guards and actions become indexes, guard and action functions become
 * registry refs, and firing never compares strings.  src/lua_machine.c reads
 * the Lua definition into this engine (cm.machine.new); this file knows
 * nothing of how the definition was written.
 *
 * Building a machine: cm_machine_init, then the cm_machine_add_* calls, then
 * cm_machine_seal (validation: pairs well formed, every state reachable).
 * Only a sealed machine may fire.  cm_machine_release frees everything,
 * sealed or not.
 */
#ifndef CM_MACHINE_H
#define CM_MACHINE_H

#include <lua.h>
#include <stddef.h>

/* Errors of the cm_machine_add_* calls. */
#define CM_MACHINE_ENOMEM (-1) /* out of memory */
#define CM_MACHINE_EDUP (-2)   /* the name is already defined */

/* A named Lua function the machine owns by a registry ref. */
typedef struct cm_machine_fn {
    char *name; /* "will_retry", "spawn_app" */
    int ref;    /* registry ref to the function */
} cm_machine_fn_t;

/* One row of the transition table, in indexes. */
typedef struct cm_machine_row {
    int from;     /* state index */
    int event;    /* event index */
    int to;       /* state index; -1 on an ignore row */
    int guard;    /* guard index, or -1 for none */
    int ignore;   /* 1: the event is dropped in `from` */
    int *actions; /* action indexes, run in this order (malloc'd) */
    int nactions;
} cm_machine_row_t;

/* An event fired while another was being processed, waiting its turn. */
typedef struct cm_machine_pending {
    int event;       /* event index */
    int payload_ref; /* registry ref to its payload */
} cm_machine_pending_t;

/* A state: its name and how a refusal describes it. */
typedef struct cm_machine_state {
    char *name;     /* "running" */
    char *describe; /* "already running", or NULL */
} cm_machine_state_t;

typedef struct cm_machine {
    cm_machine_state_t *states; /* by index */
    int nstates, capstates;
    char **events; /* event names, by index */
    int nevents, capevents;
    cm_machine_fn_t *guards;
    int nguards, capguards;
    cm_machine_fn_t *actions;
    int nactions, capactions;
    cm_machine_row_t *rows; /* in table order */
    int nrows, caprows;

    /* Built by cm_machine_seal: the rows of pair p = state * nevents + event
     * are pair_rows[pair_start[p] .. pair_start[p + 1]), in table order. */
    int *pair_start;
    int *pair_rows;
    int sealed;

    int state;             /* the current state: seal sets the initial one; a
                            * binding may place the machine elsewhere before
                            * the first fire (restoring, tests) */
    int context_ref;       /* registry ref: the table given to guards and actions */
    int on_transition_ref; /* registry ref: fn(from, event, to, payload), or LUA_NOREF */

    int busy; /* an event is being processed: new ones are queued */
    cm_machine_pending_t *queue;
    size_t qhead, qlen, qcap; /* pending events are queue[qhead .. qhead + qlen) */
} cm_machine_t;

/* What happened to a fired event. */
typedef enum cm_machine_result {
    CM_MACHINE_TRANSITION, /* a row was taken (`to` may equal `from`) */
    CM_MACHINE_IGNORED,    /* an ignore row: nothing ran */
    CM_MACHINE_REFUSED,    /* no row for the pair: nothing ran */
    CM_MACHINE_QUEUED      /* fired during another event: runs right after it */
} cm_machine_result_t;

/* What a pair of the table does, for listings and coverage checks. */
typedef enum cm_machine_pair_kind {
    CM_PAIR_ROWS,   /* one or more rows: a transition, chosen by the guards */
    CM_PAIR_IGNORE, /* an ignore row */
    CM_PAIR_REFUSED /* no row */
} cm_machine_pair_kind_t;

/* Makes `m` an empty machine (no allocation; release is safe after it). */
void cm_machine_init(cm_machine_t *m);

/* Frees everything and drops every registry ref the machine owns (functions,
 * context, hook, queued payloads).  Idempotent; `m` is empty afterwards. */
void cm_machine_release(cm_machine_t *m, lua_State *L);

/* Adds a state or an event (the name is copied); returns its index,
 * CM_MACHINE_EDUP or CM_MACHINE_ENOMEM.  Indexes count from 0 in the order
 * of the calls. */
int cm_machine_add_state(cm_machine_t *m, const char *name);
int cm_machine_add_event(cm_machine_t *m, const char *name);

/* How a refusal in `state` describes it ("not running"); copied.  Returns 0
 * or CM_MACHINE_ENOMEM. */
int cm_machine_set_describe(cm_machine_t *m, int state, const char *text);

/* Adds a guard or an action; the machine takes over `ref` (a registry ref to
 * the function) even when the call fails, so the caller never unrefs it.
 * Returns the index, CM_MACHINE_EDUP or CM_MACHINE_ENOMEM. */
int cm_machine_add_guard(cm_machine_t *m, lua_State *L, const char *name, int ref);
int cm_machine_add_action(cm_machine_t *m, lua_State *L, const char *name, int ref);

/* Index lookups by name; -1 when unknown. */
int cm_machine_state_index(const cm_machine_t *m, const char *name);
int cm_machine_event_index(const cm_machine_t *m, const char *name);
int cm_machine_guard_index(const cm_machine_t *m, const char *name);
int cm_machine_action_index(const cm_machine_t *m, const char *name);

/* Appends a row; `actions` (nactions indexes) is copied.  The indexes must be
 * valid: the caller resolved them.  Returns 0 or CM_MACHINE_ENOMEM. */
int cm_machine_add_row(cm_machine_t *m, const cm_machine_row_t *row);

/* Validates the table and makes the machine ready to fire, in `initial`:
 * - an ignore row is alone in its pair;
 * - in a pair of several rows, only the last has no guard, and it has none;
 * - every state is reachable from `initial` by the rows.
 * Returns 0, or -1 with a message in err ("state 'failed' is unreachable"). */
int cm_machine_seal(cm_machine_t *m, int initial, char *err, size_t errlen);

/* The registry refs used when firing (the machine takes them over): the
 * context table and the on_transition hook (LUA_NOREF for none). */
void cm_machine_set_context(cm_machine_t *m, lua_State *L, int context_ref, int hook_ref);

/* Fires `event` (an index) with the value at stack index `payload`, to run
 * to completion: when no event is being processed, the event is processed
 * now, then every event queued meanwhile, in order, and the result is the
 * first event's.  When one is being processed (fire from inside a guard,
 * an action or the hook) the event is queued and the result is QUEUED.
 *
 * Processing an event: the rows of (state, event) are tried in order; a guard
 * is called as guard(ctx, payload) and passes when it returns a true value
 * (an error counts as false, and is reported).  For the first row that
 * passes, the state becomes `to`, then each action runs as action(ctx,
 * payload) (an error is reported and the next actions still run), then the
 * hook runs as on_transition(from, event, to, payload).  A queued event that
 * is refused is reported, since nobody is left to read the refusal.
 *
 * Every call into Lua is protected (cm_pcall).  The function raises only when
 * Lua itself fails (out of memory); the queue is then dropped so the machine
 * stays usable.  `*from` and `*to` receive the state before and after (both
 * the current state unless the result is TRANSITION); either may be NULL. */
cm_machine_result_t cm_machine_fire(cm_machine_t *m, lua_State *L, int event, int payload,
                                    int *from, int *to);

/* What pair (state, event) does. */
cm_machine_pair_kind_t cm_machine_pair_kind(const cm_machine_t *m, int state, int event);

/* How a refusal describes `state`: its describe text, else "in state '<name>'"
 * formatted into buf. */
const char *cm_machine_describe(const cm_machine_t *m, int state, char *buf, size_t len);

#endif
