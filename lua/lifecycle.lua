--[[
The lifecycle of the supervised app, as data (docs/design.md §4).  src/machine.c
loads this table (cm.machine.new), checks it, and fires the events that come
from libuv: the child's exit, the start and stop timers, the readiness probe,
the retry timer, and the user's start/stop/restart (commands, signals).
Every decision about the app's life is a row here; lua/supervisor.lua only
turns libuv events into events and carries out the actions.

    stopped --start--> starting --ready--> running --stop--> stopping --exited--> stopped
                          |                   |                  ^  |
                          |                   +----restart-------+  +--exited (restart)--> starting
                          +--exited/timeout---+-> failed --retry/restart--> starting

Shape of the table, which the engine validates:
  states, events   the names; `initial` is where a new supervisor begins.
  describe         how a refusal names each state: a (state, event) pair with
                   no row is refused with "cannot <event>: <describe[state]>".
  guards           name -> function(ctx, payload) -> bool.
  transitions      rows { from=, event=, to=, guard="name"?, actions={...} }
                   or { from=, event=, ignore=true }.  The rows of one pair
                   are tried in order; every row but the last has a guard and
                   the last has none.  Actions are names resolved in the
                   actions table the supervisor passes to cm.machine.new; they
                   run in order, each as action(ctx, payload).

ctx is the supervisor's context: policy ("no" | "on-failure" | "always"),
restarts (automatic restarts in a row so far), max_restarts, reset_after
(seconds), ever_ready (the app reached `running` in this supervisor's life),
attempt (the number of the current spawn), restart_wanted (the stop under way
is the first half of a restart).  The payloads: `exited` { code = int|nil,
signal = string|nil, ran_ms = ms since ready|nil }, fired once the leader
has exited AND its group is gone; `leader_exit` {}, fired the moment the
leader exits; `ready` { ms = time to ready }; `finish` { attempt }, fired
once the group of a stopped or given-up app is gone.  `start_timeout`
carries no exit, only, when the probe saw the app listen on another port,
{ reason = text }.

Every one of the 50 state x event pairs is deliberately a row, an ignore row,
or absent (refused); spec/lifecycle.lua states the outcome of each and takes
every row at least once (its runner fails otherwise).

Why the less obvious rows are as they are:
- Late events are ignored, not refused.  Timers, the readiness probe and the
  child's exit are asynchronous: a timer cancelled by an action may already
  have fired, a probe may answer after the app failed, a killed group reports
  its exit after the machine moved on.  Those are the ignore rows of
  ready/exited/start_timeout/stop_timeout/retry in states that no longer
  expect them.  Only a user's start or stop is ever refused: a person asked
  for something that makes no sense now and must be told why.
- failed + exited is ignored: a start timeout kills the group and moves to
  failed at once; the killed app's exit arrives afterwards.  (The supervisor
  must only fire `exited` for its current child: a retry may already have
  spawned the next one.)
- stopping + stop is ignored, while a second start is refused: stop is
  idempotent (TERM sent twice, systemd and a user at once, a stop retried
  after a timeout) and what it asks for is already happening, whereas a
  second start could only be answered by a second app, so the user is told
  the state instead.
- stopping + stop_timeout stays in stopping and escalates to SIGKILL: the
  group is not gone yet, and only its exit ends the stop.
- starting + stop reports the start as failed: the `start` command waiting
  on the readiness pipe must get an answer, and the app never became ready.
- A start that never became ready is not retried (will_retry needs
  ever_ready): a crash at the first start is a broken setup, which the user
  sees at once as a failed start instead of a restart loop.  After a retry,
  starting + exited and starting + start_timeout retry again while restarts
  remain.
- running + exited: retry when the policy says so; a clean exit that is not
  retried ends in stopped, not failed (the app chose to stop); anything else
  gives up in failed.  The `start` command has its answer already, so
  nothing is reported to it.  The first crash since the restart count was
  reset (a user's start, or a run longer than reset_after) restarts at once
  (retry_at_once); only crashes in a row wait (schedule_retry:
  backoff_initial, doubling up to backoff_max).
- failed + start is a fresh start by a user: the pending retry is cancelled
  and the restart count reset.  failed + stop cancels the retry and ends in
  stopped: there is no process left to signal.
- stopped + stop is refused ("cannot stop: not running") so that
  `chat-manager stop` can say so, as the old script did.
- restart (HUP, `backend switch --restart`, a policy's switch) is a stop
  that remembers to start again: running/starting + restart go to stopping
  with want_restart, and stopping + exited starts the next attempt when
  restart_wanted (the group is gone by then, so the port is free).  A stop
  during that stop wins (drop_restart); a restart during a user's stop is
  ignored.  failed + restart is a user's fresh start.  starting + restart
  does not answer the waiting `start`: the next attempt does.
- reset_after: a crash after `reset_after` seconds of running forgets the
  restarts before it (retry_after_stable_run, tried first; it restarts at once), so a
  long-lived app that crashes now and then is never given up on.
- leader_exit in starting/running kills what is left of the crashed app's
  group at once; in stopping the leftovers get the rest of the grace period
  (the stop timer KILLs them).
- finish ends the supervisor: in stopped always (nothing leaves stopped), in
  failed only for the attempt that gave up; a restart may have started a
  later attempt meanwhile, whose own exit decides.
]]

-- An exit the app chose: status 0 and no signal.  A start timeout has no
-- code at all, so it is never clean.
local function clean_exit(payload)
  return payload.code == 0 and payload.signal == nil
end

-- The policy asks for a restart after this exit.
local function policy_retries(ctx, payload)
  if ctx.policy == "always" then return true end
  return ctx.policy == "on-failure" and not clean_exit(payload)
end

-- The app ran `reset_after` seconds or more since it was ready: the
-- restarts before it no longer count as "in a row".  The exit's payload
-- carries how long it ran (ran_ms); a start that never got ready has none.
local function stable_run(ctx, payload)
  return payload.ran_ms ~= nil and ctx.reset_after ~= nil and payload.ran_ms >= ctx.reset_after * 1000
end

-- An automatic restart: only for an app that has been ready once, while
-- restarts remain, when the policy asks for it.
local function will_retry(ctx, payload)
  if not ctx.ever_ready then return false end
  if (ctx.restarts or 0) >= (ctx.max_restarts or 0) then return false end
  return policy_retries(ctx, payload)
end

return {
  states = { "stopped", "starting", "running", "stopping", "failed" },
  events = { "start", "ready", "exited", "start_timeout", "stop", "stop_timeout", "retry",
             "restart", "leader_exit", "finish" },
  initial = "stopped",

  describe = {
    stopped = "not running",
    starting = "already starting",
    running = "already running",
    stopping = "it is stopping",
    failed = "it has failed",
  },

  guards = {
    will_retry = will_retry,
    -- The first crash since the restart count was reset (by a user's
    -- start) restarts at once; a crash in a row backs off (schedule_retry),
    -- so a crash loop cannot spin.
    will_retry_at_once = function(ctx, payload)
      return (ctx.restarts or 0) == 0 and will_retry(ctx, payload)
    end,
    -- A crash after a stable run (reset_after): the count starts again from
    -- zero, so only max_restarts = 0 rules the restart out, and it is the
    -- first crash since, so it restarts at once.
    retry_after_stable_run = function(ctx, payload)
      return stable_run(ctx, payload) and (ctx.max_restarts or 0) > 0 and policy_retries(ctx, payload)
    end,
    exited_cleanly = function(_, payload)
      return clean_exit(payload)
    end,
    -- This stop is the first half of a restart (HUP, a backend switch).
    restart_wanted = function(ctx)
      return ctx.restart_wanted == true
    end,
    -- `finish` belongs to the attempt that gave up, not to a later one that a
    -- restart began meanwhile.
    same_attempt = function(ctx, payload)
      return payload.attempt == ctx.attempt
    end,
  },

  transitions = {
    -- stopped
    { from = "stopped", event = "start", to = "starting",
      actions = { "spawn_app", "arm_start_timer", "probe_ready" } },
    { from = "stopped", event = "finish", to = "stopped",
      actions = { "exit_stopped" } },
    { from = "stopped", event = "ready", ignore = true },
    { from = "stopped", event = "exited", ignore = true },
    { from = "stopped", event = "start_timeout", ignore = true },
    { from = "stopped", event = "stop_timeout", ignore = true },
    { from = "stopped", event = "retry", ignore = true },
    { from = "stopped", event = "restart", ignore = true },
    { from = "stopped", event = "leader_exit", ignore = true },
    -- stopped + stop: refused, "cannot stop: not running"

    -- starting
    { from = "starting", event = "ready", to = "running",
      actions = { "cancel_start_timer", "report_ready" } },
    { from = "starting", event = "leader_exit", to = "starting",
      actions = { "kill_leftovers" } },
    { from = "starting", event = "exited", guard = "will_retry", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "schedule_retry" } },
    { from = "starting", event = "exited", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "report_failed", "give_up" } },
    { from = "starting", event = "start_timeout", guard = "will_retry", to = "failed",
      actions = { "kill_group", "record_timeout", "schedule_retry" } },
    { from = "starting", event = "start_timeout", to = "failed",
      actions = { "kill_group", "record_timeout", "report_failed", "give_up" } },
    { from = "starting", event = "stop", to = "stopping",
      actions = { "cancel_start_timer", "term_group", "arm_stop_timer", "report_failed" } },
    { from = "starting", event = "restart", to = "stopping",
      actions = { "want_restart", "cancel_start_timer", "term_group", "arm_stop_timer" } },
    { from = "starting", event = "stop_timeout", ignore = true },
    { from = "starting", event = "retry", ignore = true },
    { from = "starting", event = "finish", ignore = true },
    -- starting + start: refused, "cannot start: already starting"

    -- running
    { from = "running", event = "leader_exit", to = "running",
      actions = { "kill_leftovers" } },
    { from = "running", event = "exited", guard = "retry_after_stable_run", to = "failed",
      actions = { "record_exit", "reset_restarts", "retry_at_once" } },
    { from = "running", event = "exited", guard = "will_retry_at_once", to = "failed",
      actions = { "record_exit", "retry_at_once" } },
    { from = "running", event = "exited", guard = "will_retry", to = "failed",
      actions = { "record_exit", "schedule_retry" } },
    { from = "running", event = "exited", guard = "exited_cleanly", to = "stopped",
      actions = { "record_exit", "finish_stop" } },
    { from = "running", event = "exited", to = "failed",
      actions = { "record_exit", "give_up" } },
    { from = "running", event = "stop", to = "stopping",
      actions = { "term_group", "arm_stop_timer" } },
    { from = "running", event = "restart", to = "stopping",
      actions = { "want_restart", "term_group", "arm_stop_timer" } },
    { from = "running", event = "ready", ignore = true },
    { from = "running", event = "start_timeout", ignore = true },
    { from = "running", event = "stop_timeout", ignore = true },
    { from = "running", event = "retry", ignore = true },
    { from = "running", event = "finish", ignore = true },
    -- running + start: refused, "cannot start: already running"

    -- stopping
    { from = "stopping", event = "exited", guard = "restart_wanted", to = "starting",
      actions = { "cancel_stop_timer", "record_exit", "drop_restart", "reset_restarts",
                  "spawn_app", "arm_start_timer", "probe_ready" } },
    { from = "stopping", event = "exited", to = "stopped",
      actions = { "cancel_stop_timer", "record_exit", "finish_stop" } },
    { from = "stopping", event = "stop_timeout", to = "stopping",
      actions = { "kill_group" } },
    { from = "stopping", event = "stop", to = "stopping",
      actions = { "drop_restart" } },
    { from = "stopping", event = "restart", ignore = true },
    { from = "stopping", event = "leader_exit", ignore = true },
    { from = "stopping", event = "ready", ignore = true },
    { from = "stopping", event = "start_timeout", ignore = true },
    { from = "stopping", event = "retry", ignore = true },
    { from = "stopping", event = "finish", ignore = true },
    -- stopping + start: refused, "cannot start: it is stopping"

    -- failed
    { from = "failed", event = "start", to = "starting",
      actions = { "cancel_retry", "reset_restarts",
                  "spawn_app", "arm_start_timer", "probe_ready" } },
    { from = "failed", event = "restart", to = "starting",
      actions = { "cancel_retry", "reset_restarts",
                  "spawn_app", "arm_start_timer", "probe_ready" } },
    { from = "failed", event = "retry", to = "starting",
      actions = { "spawn_app", "arm_start_timer", "probe_ready" } },
    { from = "failed", event = "stop", to = "stopped",
      actions = { "cancel_retry", "finish_stop" } },
    { from = "failed", event = "finish", guard = "same_attempt", to = "failed",
      actions = { "exit_failed" } },
    { from = "failed", event = "finish", to = "failed" },
    { from = "failed", event = "ready", ignore = true },
    { from = "failed", event = "exited", ignore = true },
    { from = "failed", event = "start_timeout", ignore = true },
    { from = "failed", event = "stop_timeout", ignore = true },
    { from = "failed", event = "leader_exit", ignore = true },
  },
}
