/*
 * Unit tests of the lifecycle engine (src/machine.c through cm.machine):
 * load-time validation, guards, actions, errors, run to completion.  Each
 * test is a small Lua chunk on a fresh runtime over a tiny inline definition;
 * the chunk asserts, and a failed assertion prints its traceback.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The Lua chunks below are laid out one C string per Lua line, which
 * clang-format would re-split mid-expression. */
/* clang-format off */

/* Helpers every chunk starts with.
 * def(patch): a fresh two-state definition, with patch(d) applied.
 * new(d, opts): cm.machine.new with the recording actions a, b, c, boom.
 * rejects(d, msg): new(d) fails with exactly msg.
 * eq(got, want, what): equality with a readable failure.
 * collect_errors(): reported errors are appended to the returned list. */
static const char prelude[] =
    "local calls = {}\n"
    "local function recorder(name) return function() calls[#calls + 1] = name end end\n"
    "local actions = { a = recorder('a'), b = recorder('b'), c = recorder('c'),\n"
    "  boom = function() error('action exploded') end }\n"
    "local function def(patch)\n"
    "  local d = {\n"
    "    states = { 'off', 'on' },\n"
    "    events = { 'flip', 'poke' },\n"
    "    initial = 'off',\n"
    "    describe = { off = 'it is off' },\n"
    "    guards = { yes = function() return true end, no = function() return false end },\n"
    "    transitions = {\n"
    "      { from = 'off', event = 'flip', to = 'on', actions = { 'a' } },\n"
    "      { from = 'on', event = 'flip', to = 'off', actions = { 'b' } },\n"
    "      { from = 'on', event = 'poke', ignore = true },\n"
    "    },\n"
    "  }\n"
    "  if patch then patch(d) end\n"
    "  return d\n"
    "end\n"
    "local function new(d, opts)\n"
    "  local m, err = cm.machine.new(d, actions, opts)\n"
    "  assert(m, err)\n"
    "  return m\n"
    "end\n"
    "local function eq(got, want, what)\n"
    "  if got ~= want then\n"
    "    local text = ('%s: expected %s, got %s')\n"
    "    error(text:format(what or 'value', tostring(want), tostring(got)), 2)\n"
    "  end\n"
    "end\n"
    "local function rejects(d, msg)\n"
    "  local m, err = cm.machine.new(d, actions)\n"
    "  eq(m, nil, 'machine for a bad definition')\n"
    "  eq(err, msg, 'message')\n"
    "end\n"
    "local function list(t) return '{' .. table.concat(t, ', ') .. '}' end\n"
    "local function collect_errors()\n"
    "  local errs = {}\n"
    "  cm.set_error_handler(function(msg) errs[#errs + 1] = msg end)\n"
    "  return errs\n"
    "end\n";

/* Runs prelude + body on a fresh runtime; the chunk must end without error. */
static void run_lua(const char *body)
{
    size_t len = sizeof prelude + strlen(body);
    char *code = malloc(len);
    assert_non_null(code);
    snprintf(code, len, "%s%s", prelude, body);
    int rc = cmt_lua(code);
    free(code);
    assert_int_equal(rc, 0);
}

/* ---- firing ------------------------------------------------------------ */

static void fires_transitions_ignores_and_refusals(void **state)
{
    (void)state;
    run_lua("local m = new(def())\n"
            "eq(m:state(), 'off', 'initial state')\n"
            "local r, to = m:fire('flip')\n"
            "eq(r, 'transition', 'result'); eq(to, 'on', 'target'); eq(m:state(), 'on', 'state')\n"
            "eq(list(calls), '{a}', 'actions')\n"
            "eq(m:fire('poke'), 'ignored', 'ignore row')\n"
            "eq(m:state(), 'on', 'state after an ignored event')\n"
            "m:fire('flip')\n"
            "local none, msg = m:fire('poke')\n"
            "eq(none, nil, 'refusal'); eq(msg, 'cannot poke: it is off', 'refusal message')\n"
            "eq(m:state(), 'off', 'state after a refusal')\n"
            "eq(list(calls), '{a, b}', 'actions after all')\n");
}

static void refusal_without_describe_names_the_state(void **state)
{
    (void)state;
    run_lua("local m = new(def(function(d) d.describe = nil end))\n"
            "local _, msg = m:fire('poke')\n"
            "eq(msg, \"cannot poke: in state 'off'\", 'message')\n");
}

static void unknown_event_is_an_error_result(void **state)
{
    (void)state;
    run_lua("local m = new(def())\n"
            "local none, msg = m:fire('explode')\n"
            "eq(none, nil, 'result'); eq(msg, \"unknown event 'explode'\", 'message')\n"
            "eq(m:state(), 'off', 'state'); eq(#calls, 0, 'actions run')\n");
}

static void options_initial_context_and_payload(void **state)
{
    (void)state;
    run_lua("local ctx = { n = 0 }\n"
            "local seen = {}\n"
            "local d = def(function(d)\n"
            "  d.guards.check = function(c, p) seen.guard = { c, p }; return true end\n"
            "  d.transitions[2] = { from = 'on', event = 'flip', guard = 'check', to = 'off',\n"
            "                       actions = { 'count' } }\n"
            "  table.insert(d.transitions, 3, { from = 'on', event = 'flip', to = 'on' })\n"
            "end)\n"
            "actions.count = function(c, p) c.n = c.n + 1; seen.action = { c, p } end\n"
            "local m = new(d, { initial = 'on', context = ctx,\n"
            "  on_transition = function(...) seen.hook = { ... } end })\n"
            "eq(m:state(), 'on', 'opts.initial'); eq(m:context(), ctx, 'context')\n"
            "local payload = { code = 3 }\n"
            "m:fire('flip', payload)\n"
            "eq(ctx.n, 1, 'action saw the context')\n"
            "eq(seen.guard[1], ctx, 'guard ctx'); eq(seen.guard[2], payload, 'guard payload')\n"
            "eq(seen.action[1], ctx, 'action ctx'); eq(seen.action[2], payload, 'action payload')\n"
            "eq(table.concat(seen.hook, ' ', 1, 3), 'on flip off', 'hook from, event, to')\n"
            "eq(seen.hook[4], payload, 'hook payload')\n"
            "m:fire('flip'); m:fire('flip')\n"
            "eq(type(seen.action[2]), 'table', 'a missing payload is an empty table')\n"
            "assert(seen.action[2] ~= payload, 'a fresh one')\n"
            "local bad, err = cm.machine.new(def(), actions, { initial = 'sideways' })\n"
            "eq(bad, nil); eq(err, \"opts.initial: unknown state 'sideways'\", 'message')\n");
}

static void pairs_and_rows_describe_the_table(void **state)
{
    (void)state;
    run_lua("local m = new(def())\n"
            "local p = m:pairs()\n"
            "eq(#p, 4, 'states x events')\n"
            "local got = {}\n"
            "for _, x in ipairs(p) do\n"
            "  got[#got + 1] = x.state .. '+' .. x.event .. '=' .. x.outcome\n"
            "end\n"
            "eq(list(got), '{off+flip=transition, off+poke=refused, on+flip=transition, "
            "on+poke=ignored}', 'pairs')\n"
            "local rows = m:rows()\n"
            "eq(#rows, 3, 'rows'); eq(rows[1].to, 'on'); eq(list(rows[1].actions), '{a}')\n"
            "eq(rows[3].ignore, true, 'ignore row'); eq(rows[3].to, nil)\n"
            "assert(tostring(m):find('off'), tostring(m))\n");
}

/* ---- guards and errors ------------------------------------------------- */

static void guards_are_tried_in_order(void **state)
{
    (void)state;
    run_lua("local asked = {}\n"
            "local function guard(name, answer)\n"
            "  return function() asked[#asked + 1] = name; return answer end\n"
            "end\n"
            "local d = def(function(d)\n"
            "  d.states[3] = 'third'\n"
            "  d.guards = { g1 = guard('g1', false), g2 = guard('g2', 1),\n"
            "               g3 = guard('g3', true) }\n"
            "  d.transitions = {\n"
            "    { from = 'off', event = 'flip', guard = 'g1', to = 'on', actions = { 'a' } },\n"
            "    { from = 'off', event = 'flip', guard = 'g2', to = 'third', actions = { 'b' } },\n"
            "    { from = 'off', event = 'flip', guard = 'g3', to = 'on', actions = { 'c' } },\n"
            "    { from = 'off', event = 'flip', to = 'on' },\n"
            "    { from = 'third', event = 'poke', to = 'off' },\n"
            "  }\n"
            "end)\n"
            "local m = new(d)\n"
            "local r, to = m:fire('flip')\n"
            "eq(to, 'third', 'the first passing row wins')\n"
            "eq(list(asked), '{g1, g2}', 'guards asked, in order, none after the winner')\n"
            "eq(list(calls), '{b}', 'only the winner acts')\n"
            "local m2 = new(def(function(x)\n"
            "  x.guards = { n1 = function() return false end, n2 = function() return nil end }\n"
            "  table.insert(x.transitions, 1,\n"
            "    { from = 'off', event = 'flip', guard = 'n1', to = 'off' })\n"
            "  table.insert(x.transitions, 2,\n"
            "    { from = 'off', event = 'flip', guard = 'n2', to = 'off' })\n"
            "end))\n"
            "local _, to2 = m2:fire('flip')\n"
            "eq(to2, 'on', 'the unguarded last row when every guard fails')\n");
}

static void raising_guard_counts_as_false_and_is_reported(void **state)
{
    (void)state;
    run_lua("local errs = collect_errors()\n"
            "local m = new(def(function(d)\n"
            "  d.guards.bad = function() error('guard exploded') end\n"
            "  table.insert(d.transitions, 1,\n"
            "    { from = 'off', event = 'flip', guard = 'bad', to = 'off', actions = { 'c' } })\n"
            "end))\n"
            "local r, to = m:fire('flip')\n"
            "eq(r, 'transition'); eq(to, 'on', 'fell through to the next row')\n"
            "eq(list(calls), '{a}', 'actions of the row taken')\n"
            "eq(#errs, 1, 'errors reported')\n"
            "assert(errs[1]:find(\"machine guard 'bad' (off + flip)\", 1, true), errs[1])\n"
            "assert(errs[1]:find('guard exploded', 1, true), errs[1])\n");
}

static void raising_action_does_not_stop_later_actions(void **state)
{
    (void)state;
    run_lua("local errs = collect_errors()\n"
            "local hooked = 0\n"
            "local d = def(function(d) d.transitions[1].actions = { 'a', 'boom', 'b', 'c' } end)\n"
            "local m = new(d,\n"
            "  { on_transition = function() hooked = hooked + 1 end })\n"
            "local r, to = m:fire('flip')\n"
            "eq(r, 'transition'); eq(to, 'on'); eq(m:state(), 'on', 'state')\n"
            "eq(list(calls), '{a, b, c}', 'actions after the failing one still ran')\n"
            "eq(hooked, 1, 'the hook still ran')\n"
            "eq(#errs, 1, 'errors reported')\n"
            "assert(errs[1]:find(\"machine action 'boom' (off + flip)\", 1, true), errs[1])\n"
            "assert(errs[1]:find('action exploded', 1, true), errs[1])\n");
}

static void raising_hook_is_reported(void **state)
{
    (void)state;
    run_lua("local errs = collect_errors()\n"
            "local m = new(def(), { on_transition = function() error('hook exploded') end })\n"
            "eq(select(2, m:fire('flip')), 'on', 'the transition stands')\n"
            "eq(#errs, 1)\n"
            "assert(errs[1]:find(\"machine hook 'on_transition'\", 1, true), errs[1])\n");
}

static void waiting_in_an_action_is_refused_clearly(void **state)
{
    (void)state;
    run_lua("local errs = collect_errors()\n"
            "actions.a = function() cm.time.sleep(1) end\n"
            "local m = new(def())\n"
            "eq(select(2, m:fire('flip')), 'on')\n"
            "eq(#errs, 1)\n"
            "assert(errs[1]:find('machine action', 1, true), errs[1])\n"
            "assert(errs[1]:find('spawn a task', 1, true), errs[1])\n");
}

/* ---- run to completion ------------------------------------------------- */

static void event_fired_from_an_action_is_queued(void **state)
{
    (void)state;
    run_lua("local m\n"
            "local log, inner = {}, {}\n"
            "actions.again = function(ctx, payload)\n"
            "  calls[#calls + 1] = 'again'\n"
            "  inner[#inner + 1] = m:fire('flip', { from_action = true })\n"
            "  inner[#inner + 1] = m:state()\n"
            "end\n"
            "m = new(def(function(d) d.transitions[1].actions = { 'again', 'a' } end),\n"
            "  { on_transition = function(from, event, to, payload)\n"
            "      log[#log + 1] = from .. '>' .. to .. (payload.from_action and '*' or '')\n"
            "    end })\n"
            "local r, to = m:fire('flip')\n"
            "eq(r, 'transition'); eq(to, 'on', 'the result is the first event')\n"
            "eq(list(inner), '{queued, on}', 'the inner fire waits its turn')\n"
            "eq(list(calls), '{again, a, b}', 'the outer actions finish first')\n"
            "eq(list(log), '{off>on, on>off*}', 'transitions in order, payload kept')\n"
            "eq(m:state(), 'off', 'the queued event ran before fire returned')\n");
}

static void events_from_guards_and_hooks_are_queued_in_order(void **state)
{
    (void)state;
    run_lua("local m\n"
            "local log = {}\n"
            "local d = def(function(d)\n"
            "  d.guards.noisy = function() m:fire('poke', { n = 1 }); return false end\n"
            "  table.insert(d.transitions, 1,\n"
            "    { from = 'off', event = 'flip', guard = 'noisy', to = 'off' })\n"
            "  table.insert(d.transitions,\n"
            "    { from = 'on', event = 'poke', to = 'on', actions = { 'c' } })\n"
            "  table.remove(d.transitions, 4)\n"
            "end)\n"
            "m = new(d, { on_transition = function(from, event, to, p)\n"
            "  log[#log + 1] = event .. (p.n or '')\n"
            "  if #log == 1 then\n"
            "    eq(m:fire('flip', { n = 2 }), 'queued', 'fire from the hook')\n"
            "  end\n"
            "end })\n"
            "m:fire('flip')\n"
            "eq(list(log), '{flip, poke1, flip2}', 'the queue is first in, first out')\n"
            "eq(m:state(), 'off')\n");
}

static void queued_refusal_is_reported(void **state)
{
    (void)state;
    /* off -flip-> on queues flip (on -> off) then poke, which off refuses. */
    run_lua("local errs = collect_errors()\n"
            "local m\n"
            "actions.a = function()\n"
            "  eq(m:fire('flip'), 'queued'); eq(m:fire('poke'), 'queued')\n"
            "end\n"
            "m = new(def())\n"
            "eq(select(2, m:fire('flip')), 'on', 'the first event')\n"
            "eq(m:state(), 'off', 'after the queue')\n"
            "eq(#errs, 1, 'errors reported')\n"
            "eq(errs[1], \"machine: queued event 'poke': cannot poke: it is off\", 'report')\n");
}

/* ---- validation -------------------------------------------------------- */

static void rejects_unknown_names_in_rows(void **state)
{
    (void)state;
    run_lua("rejects(def(function(d) d.transitions[2].from = 'onn' end),\n"
            "  \"transition 2: unknown state 'onn'\")\n"
            "rejects(def(function(d) d.transitions[1].to = 'runing' end),\n"
            "  \"transition 1: unknown state 'runing'\")\n"
            "rejects(def(function(d) d.transitions[3].event = 'pokee' end),\n"
            "  \"transition 3: unknown event 'pokee'\")\n"
            "rejects(def(function(d) d.transitions[1].from = nil end),\n"
            "  \"transition 1: missing 'from'\")\n"
            "rejects(def(function(d) d.transitions[1].event = 7 end),\n"
            "  \"transition 1: 'event' must be an event name\")\n");
}

static void rejects_a_row_without_to(void **state)
{
    (void)state;
    run_lua("rejects(def(function(d) d.transitions[2].to = nil end),\n"
            "  \"transition 2: missing 'to' (or ignore = true)\")\n"
            "rejects(def(function(d) d.transitions[3].to = 'off' end),\n"
            "  \"transition 3: an ignore row has no 'to', 'guard' or 'actions'\")\n");
}

static void rejects_unknown_guards_and_actions(void **state)
{
    (void)state;
    run_lua("rejects(def(function(d) d.transitions[1].guard = 'maybe' end),\n"
            "  \"transition 1: unknown guard 'maybe'\")\n"
            "rejects(def(function(d) d.transitions[2].actions = { 'b', 'spawn' } end),\n"
            "  \"transition 2: unknown action 'spawn'\")\n"
            "actions.notfn = 42\n"
            "rejects(def(function(d) d.transitions[2].actions = { 'notfn' } end),\n"
            "  \"transition 2: action 'notfn' is not a function\")\n"
            "rejects(def(function(d) d.guards.yes = 'yes' end),\n"
            "  \"guard 'yes' is not a function\")\n");
}

static void rejects_badly_ordered_guards(void **state)
{
    (void)state;
    run_lua("rejects(def(function(d)\n"
            "  table.insert(d.transitions, 1, { from = 'off', event = 'flip', to = 'off' })\n"
            "end), 'off + flip: only the last row of a pair may have no guard')\n"
            "rejects(def(function(d) d.transitions[2].guard = 'yes' end),\n"
            "  'on + flip: the last row of a pair must have no guard '\n"
            "  .. '(it is taken when every guard before it fails)')\n");
}

static void rejects_an_ignore_row_mixed_with_rows(void **state)
{
    (void)state;
    run_lua("rejects(def(function(d)\n"
            "  table.insert(d.transitions, { from = 'on', event = 'poke', to = 'off' })\n"
            "end), 'on + poke: an ignore row cannot share its pair with other rows')\n");
}

static void rejects_an_unreachable_state(void **state)
{
    (void)state;
    run_lua("rejects(def(function(d) table.insert(d.states, 'failed') end),\n"
            "  \"state 'failed' is unreachable\")\n"
            "rejects(def(function(d)\n"
            "  d.transitions[1] = { from = 'off', event = 'flip', ignore = true }\n"
            "end), \"state 'on' is unreachable\")\n"
            "-- A state reachable only through an ignore row is still unreachable,\n"
            "-- and reachability is judged from def.initial, not opts.initial.\n"
            "local d = def(function(d) d.initial = 'on' end)\n"
            "local m = new(d, { initial = 'off' })\n"
            "eq(m:state(), 'off')\n");
}

static void rejects_malformed_definitions(void **state)
{
    (void)state;
    run_lua("rejects(def(function(d) d.states = 'off' end),\n"
            "  'def.states must be a list of state names')\n"
            "rejects(def(function(d) d.events = {} end), 'def.events is empty')\n"
            "rejects(def(function(d) d.states[2] = 'off' end), \"state 'off' is listed twice\")\n"
            "rejects(def(function(d) d.initial = 'up' end), \"def.initial: unknown state 'up'\")\n"
            "rejects(def(function(d) d.describe.offf = 'x' end),\n"
            "  \"def.describe: unknown state 'offf'\")\n"
            "rejects(def(function(d) d.transitions = {} end), 'def.transitions is empty')\n"
            "rejects(def(function(d) d.transitions[2] = 'row' end),\n"
            "  'transition 2 is not a table')\n"
            "local ok, err = pcall(cm.machine.new, 'def', actions)\n"
            "eq(ok, false, 'a definition that is not a table raises')\n"
            "ok = pcall(cm.machine.new, def(), actions, { on_transition = 1 })\n"
            "eq(ok, false, 'a hook that is not a function raises')\n");
}

static void loads_the_real_lifecycle_table(void **state)
{
    (void)state;
    run_lua("local d = require('lifecycle')\n"
            "local fake = setmetatable({}, { __index = function(_, name)\n"
            "  return function() calls[#calls + 1] = name end end })\n"
            "local m, err = cm.machine.new(d, fake)\n"
            "assert(m, err)\n"
            "eq(#m:pairs(), #d.states * #d.events, 'pairs')\n"
            "eq(m:state(), 'stopped')\n"
            "eq(select(2, m:fire('stop')), 'cannot stop: not running')\n"
            "eq(select(2, m:fire('start')), 'starting')\n"
            "eq(list(calls), '{spawn_app, arm_start_timer, probe_ready}')\n");
}

/* clang-format on */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fires_transitions_ignores_and_refusals),
        cmocka_unit_test(refusal_without_describe_names_the_state),
        cmocka_unit_test(unknown_event_is_an_error_result),
        cmocka_unit_test(options_initial_context_and_payload),
        cmocka_unit_test(pairs_and_rows_describe_the_table),
        cmocka_unit_test(guards_are_tried_in_order),
        cmocka_unit_test(raising_guard_counts_as_false_and_is_reported),
        cmocka_unit_test(raising_action_does_not_stop_later_actions),
        cmocka_unit_test(raising_hook_is_reported),
        cmocka_unit_test(waiting_in_an_action_is_refused_clearly),
        cmocka_unit_test(event_fired_from_an_action_is_queued),
        cmocka_unit_test(events_from_guards_and_hooks_are_queued_in_order),
        cmocka_unit_test(queued_refusal_is_reported),
        cmocka_unit_test(rejects_unknown_names_in_rows),
        cmocka_unit_test(rejects_a_row_without_to),
        cmocka_unit_test(rejects_unknown_guards_and_actions),
        cmocka_unit_test(rejects_badly_ordered_guards),
        cmocka_unit_test(rejects_an_ignore_row_mixed_with_rows),
        cmocka_unit_test(rejects_an_unreachable_state),
        cmocka_unit_test(rejects_malformed_definitions),
        cmocka_unit_test(loads_the_real_lifecycle_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
