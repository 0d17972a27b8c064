/*
 * What the I/O engines (net.c, http.c) and the primitives share without the
 * runtime (runtime.h): the handle ownership record and the one way to start
 * a timer.
 */
#ifndef CM_OWNER_H
#define CM_OWNER_H

#include <stdint.h>
#include <uv.h>

/*
 * HANDLE OWNERSHIP RULE (every src/lua_*.c must follow it).
 *
 * Every uv handle a primitive opens is malloc'd (never Lua memory) and its
 * `data` field points to a struct whose FIRST member is a cm_owner_t.  When
 * the runtime closes with handles still open (a task abandoned mid-wait),
 * cm_runtime_free calls owner->teardown(owner) for each such handle; the
 * teardown must be idempotent (it may be called once per handle of the same
 * owner), must uv_close every handle it owns that is not already closing
 * (uv_is_closing) with close callbacks that free, and must not call into Lua.
 * An owner referenced by a Lua userdata clears the userdata's pointer in its
 * teardown so the later __gc does nothing.
 */
typedef struct cm_owner {
    void (*teardown)(struct cm_owner *self);
} cm_owner_t;

/* uv_timer_start measured from now: libuv's cached loop time is brought up
 * to date first, so a timer started after long work in a callback does not
 * fire early.  Every timer start goes through this. */
int cm_timer_start(uv_timer_t *t, uv_timer_cb cb, uint64_t timeout, uint64_t repeat);

#endif
