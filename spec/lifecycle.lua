--[[
The expected behaviour of lua/lifecycle.lua, one case per situation.  Run by
tests/test_lifecycle_spec.c, which fails when any state x event pair of the
table has no case here, and runs each case as its own test:

  a fresh machine placed in `state`, with `context` overlaid by the case's
  `ctx`, fires `event` with `payload`; then
  expect = "transition": fire returned "transition", `to`; the machine is in
           `to`; the actions ran exactly as `actions` (in order; {} if
           absent); on_transition was called once;
  expect = "ignored":    nothing ran, the state is unchanged;
  expect = "refused":    fire returned nil, `message`; nothing ran.
  In every case no guard or action raised.

`label` (optional) tells apart cases of the same pair in the test name:
"running+exited[on-failure, code 1]".
]]

local start_actions = { "spawn_app", "arm_start_timer", "probe_ready" }
local fresh_start_actions = { "cancel_retry", "reset_restarts",
                              "spawn_app", "arm_start_timer", "probe_ready" }

return {
  -- A supervisor's context at the first start, with the default config.
  context = { policy = "on-failure", restarts = 0, max_restarts = 5, reset_after = 30,
              ever_ready = false, attempt = 1 },

  cases = {
    ---- stopped ------------------------------------------------------------
    { state = "stopped", event = "start", expect = "transition", to = "starting",
      actions = start_actions },
    { state = "stopped", event = "ready", expect = "ignored" },
    { state = "stopped", event = "exited", label = "stale exit", payload = { code = 0 },
      expect = "ignored" },
    { state = "stopped", event = "start_timeout", expect = "ignored" },
    { state = "stopped", event = "stop", expect = "refused", message = "cannot stop: not running" },
    { state = "stopped", event = "stop_timeout", expect = "ignored" },
    { state = "stopped", event = "retry", expect = "ignored" },
    -- stopped is where a supervisor ends: nothing restarts it.
    { state = "stopped", event = "restart", expect = "ignored" },
    { state = "stopped", event = "leader_exit", expect = "ignored" },
    { state = "stopped", event = "finish", payload = { attempt = 1 },
      expect = "transition", to = "stopped", actions = { "exit_stopped" } },

    ---- starting -----------------------------------------------------------
    { state = "starting", event = "start", expect = "refused",
      message = "cannot start: already starting" },
    { state = "starting", event = "ready", expect = "transition", to = "running",
      actions = { "cancel_start_timer", "report_ready" } },

    -- A crash before the app was ever ready is a failed start, whatever the
    -- policy: the user sees it at once.
    { state = "starting", event = "exited", label = "first start, on-failure, code 1",
      payload = { code = 1 },
      expect = "transition", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "report_failed", "give_up" } },
    { state = "starting", event = "exited", label = "first start, always, code 1",
      ctx = { policy = "always" }, payload = { code = 1 },
      expect = "transition", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "report_failed", "give_up" } },
    -- After an automatic restart (the app was ready once) a crash retries ...
    { state = "starting", event = "exited", label = "after a retry, on-failure, code 1",
      ctx = { ever_ready = true, restarts = 1 }, payload = { code = 1 },
      expect = "transition", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "schedule_retry" } },
    { state = "starting", event = "exited", label = "after a retry, always, code 0",
      ctx = { ever_ready = true, restarts = 1, policy = "always" }, payload = { code = 0 },
      expect = "transition", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "schedule_retry" } },
    -- ... until the restarts run out, or when the policy does not ask for it.
    { state = "starting", event = "exited", label = "after a retry, restarts exhausted",
      ctx = { ever_ready = true, restarts = 5 }, payload = { code = 1 },
      expect = "transition", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "report_failed", "give_up" } },
    { state = "starting", event = "exited", label = "after a retry, on-failure, code 0",
      ctx = { ever_ready = true, restarts = 1 }, payload = { code = 0 },
      expect = "transition", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "report_failed", "give_up" } },
    { state = "starting", event = "exited", label = "after a retry, no, signal KILL",
      ctx = { ever_ready = true, restarts = 1, policy = "no" }, payload = { signal = "KILL" },
      expect = "transition", to = "failed",
      actions = { "cancel_start_timer", "record_exit", "report_failed", "give_up" } },

    { state = "starting", event = "start_timeout", label = "first start",
      expect = "transition", to = "failed",
      actions = { "kill_group", "record_timeout", "report_failed", "give_up" } },
    { state = "starting", event = "start_timeout", label = "after a retry, on-failure",
      ctx = { ever_ready = true, restarts = 2 },
      expect = "transition", to = "failed",
      actions = { "kill_group", "record_timeout", "schedule_retry" } },
    { state = "starting", event = "start_timeout", label = "after a retry, restarts exhausted",
      ctx = { ever_ready = true, restarts = 5 },
      expect = "transition", to = "failed",
      actions = { "kill_group", "record_timeout", "report_failed", "give_up" } },
    { state = "starting", event = "start_timeout", label = "after a retry, no",
      ctx = { ever_ready = true, restarts = 1, policy = "no" },
      expect = "transition", to = "failed",
      actions = { "kill_group", "record_timeout", "report_failed", "give_up" } },

    { state = "starting", event = "stop", expect = "transition", to = "stopping",
      actions = { "cancel_start_timer", "term_group", "arm_stop_timer", "report_failed" } },
    { state = "starting", event = "stop_timeout", expect = "ignored" },
    { state = "starting", event = "retry", expect = "ignored" },
    -- A crash while starting: the rest of its group goes at once.
    { state = "starting", event = "leader_exit", expect = "transition", to = "starting",
      actions = { "kill_leftovers" } },
    -- A restart (HUP, a backend switch) stops the app and starts it again;
    -- the `start` command still waiting hears from the new attempt.
    { state = "starting", event = "restart", expect = "transition", to = "stopping",
      actions = { "want_restart", "cancel_start_timer", "term_group", "arm_stop_timer" } },
    { state = "starting", event = "finish", expect = "ignored" },

    ---- running (the app has been ready) -----------------------------------
    { state = "running", event = "start", ctx = { ever_ready = true }, expect = "refused",
      message = "cannot start: already running" },
    { state = "running", event = "ready", ctx = { ever_ready = true }, expect = "ignored" },

    -- The first crash after a stable run (restarts reset to 0 by reset_after,
    -- or by a user's start) restarts at once ...
    { state = "running", event = "exited", label = "on-failure, code 1, first crash",
      ctx = { ever_ready = true }, payload = { code = 1 },
      expect = "transition", to = "failed", actions = { "record_exit", "retry_at_once" } },
    -- reset_after: a crash after a stable run no longer counts the restarts
    -- before it, even when they had run out, and is a first crash ...
    { state = "running", event = "exited", label = "on-failure, code 1 after a stable run",
      ctx = { ever_ready = true, restarts = 5 }, payload = { code = 1, ran_ms = 30000 },
      expect = "transition", to = "failed",
      actions = { "record_exit", "reset_restarts", "retry_at_once" } },
    { state = "running", event = "exited", label = "always, code 0 after a stable run",
      ctx = { ever_ready = true, restarts = 2, policy = "always" },
      payload = { code = 0, ran_ms = 60000 },
      expect = "transition", to = "failed",
      actions = { "record_exit", "reset_restarts", "retry_at_once" } },
    -- ... but a run just short of it does, ...
    { state = "running", event = "exited", label = "on-failure, code 1 just before reset_after",
      ctx = { ever_ready = true, restarts = 5 }, payload = { code = 1, ran_ms = 29999 },
      expect = "transition", to = "failed", actions = { "record_exit", "give_up" } },
    { state = "running", event = "exited", label = "on-failure, code 1 in a row, just before reset_after",
      ctx = { ever_ready = true, restarts = 2 }, payload = { code = 1, ran_ms = 29999 },
      expect = "transition", to = "failed", actions = { "record_exit", "schedule_retry" } },
    -- ... and a stable run changes nothing the policy or max_restarts = 0 rule out.
    { state = "running", event = "exited", label = "on-failure, code 0 after a stable run",
      ctx = { ever_ready = true }, payload = { code = 0, ran_ms = 30000 },
      expect = "transition", to = "stopped", actions = { "record_exit", "finish_stop" } },
    { state = "running", event = "exited", label = "no, code 1 after a stable run",
      ctx = { ever_ready = true, policy = "no" }, payload = { code = 1, ran_ms = 30000 },
      expect = "transition", to = "failed", actions = { "record_exit", "give_up" } },
    { state = "running", event = "exited", label = "max_restarts 0, code 1 after a stable run",
      ctx = { ever_ready = true, max_restarts = 0 }, payload = { code = 1, ran_ms = 30000 },
      expect = "transition", to = "failed", actions = { "record_exit", "give_up" } },
    { state = "running", event = "exited", label = "on-failure, signal SEGV, first crash",
      ctx = { ever_ready = true }, payload = { signal = "SEGV" },
      expect = "transition", to = "failed", actions = { "record_exit", "retry_at_once" } },
    { state = "running", event = "exited", label = "on-failure, no exit code, first crash",
      ctx = { ever_ready = true }, payload = {},
      expect = "transition", to = "failed", actions = { "record_exit", "retry_at_once" } },
    -- ... a crash in a row (an automatic restart earlier, no stable run since)
    -- backs off.
    { state = "running", event = "exited", label = "on-failure, code 1, crash in a row",
      ctx = { ever_ready = true, restarts = 1 }, payload = { code = 1 },
      expect = "transition", to = "failed", actions = { "record_exit", "schedule_retry" } },
    { state = "running", event = "exited", label = "on-failure, signal SEGV, crash in a row",
      ctx = { ever_ready = true, restarts = 2 }, payload = { signal = "SEGV" },
      expect = "transition", to = "failed", actions = { "record_exit", "schedule_retry" } },
    { state = "running", event = "exited", label = "on-failure, last restart left",
      ctx = { ever_ready = true, restarts = 4 }, payload = { code = 1 },
      expect = "transition", to = "failed", actions = { "record_exit", "schedule_retry" } },
    { state = "running", event = "exited", label = "on-failure, code 0",
      ctx = { ever_ready = true }, payload = { code = 0 },
      expect = "transition", to = "stopped", actions = { "record_exit", "finish_stop" } },
    { state = "running", event = "exited", label = "on-failure, restarts exhausted",
      ctx = { ever_ready = true, restarts = 5 }, payload = { code = 1 },
      expect = "transition", to = "failed", actions = { "record_exit", "give_up" } },
    { state = "running", event = "exited", label = "always, code 0",
      ctx = { ever_ready = true, policy = "always" }, payload = { code = 0 },
      expect = "transition", to = "failed", actions = { "record_exit", "retry_at_once" } },
    { state = "running", event = "exited", label = "always, code 0, in a row",
      ctx = { ever_ready = true, policy = "always", restarts = 1 }, payload = { code = 0 },
      expect = "transition", to = "failed", actions = { "record_exit", "schedule_retry" } },
    { state = "running", event = "exited", label = "always, restarts exhausted, code 0",
      ctx = { ever_ready = true, policy = "always", restarts = 5 }, payload = { code = 0 },
      expect = "transition", to = "stopped", actions = { "record_exit", "finish_stop" } },
    { state = "running", event = "exited", label = "always, restarts exhausted, code 1",
      ctx = { ever_ready = true, policy = "always", restarts = 5 }, payload = { code = 1 },
      expect = "transition", to = "failed", actions = { "record_exit", "give_up" } },
    { state = "running", event = "exited", label = "no, code 1",
      ctx = { ever_ready = true, policy = "no" }, payload = { code = 1 },
      expect = "transition", to = "failed", actions = { "record_exit", "give_up" } },
    { state = "running", event = "exited", label = "no, code 0",
      ctx = { ever_ready = true, policy = "no" }, payload = { code = 0 },
      expect = "transition", to = "stopped", actions = { "record_exit", "finish_stop" } },

    { state = "running", event = "start_timeout", ctx = { ever_ready = true }, expect = "ignored" },
    { state = "running", event = "stop", ctx = { ever_ready = true },
      expect = "transition", to = "stopping", actions = { "term_group", "arm_stop_timer" } },
    { state = "running", event = "stop_timeout", ctx = { ever_ready = true }, expect = "ignored" },
    { state = "running", event = "retry", ctx = { ever_ready = true }, expect = "ignored" },
    { state = "running", event = "leader_exit", ctx = { ever_ready = true },
      expect = "transition", to = "running", actions = { "kill_leftovers" } },
    { state = "running", event = "restart", ctx = { ever_ready = true },
      expect = "transition", to = "stopping",
      actions = { "want_restart", "term_group", "arm_stop_timer" } },
    { state = "running", event = "finish", ctx = { ever_ready = true }, expect = "ignored" },

    ---- stopping -----------------------------------------------------------
    { state = "stopping", event = "start", expect = "refused",
      message = "cannot start: it is stopping" },
    { state = "stopping", event = "ready", expect = "ignored" },
    { state = "stopping", event = "exited", label = "signal TERM",
      ctx = { ever_ready = true }, payload = { signal = "TERM" },
      expect = "transition", to = "stopped",
      actions = { "cancel_stop_timer", "record_exit", "finish_stop" } },
    -- A stop is never undone by the restart policy.
    { state = "stopping", event = "exited", label = "always, signal KILL",
      ctx = { ever_ready = true, policy = "always" }, payload = { signal = "KILL" },
      expect = "transition", to = "stopped",
      actions = { "cancel_stop_timer", "record_exit", "finish_stop" } },
    -- The second half of a restart: the group is gone, start again as a
    -- user's start would (the restart count begins anew).
    { state = "stopping", event = "exited", label = "restart wanted",
      ctx = { ever_ready = true, restart_wanted = true, restarts = 3 }, payload = { signal = "TERM" },
      expect = "transition", to = "starting",
      actions = { "cancel_stop_timer", "record_exit", "drop_restart", "reset_restarts",
                  "spawn_app", "arm_start_timer", "probe_ready" } },
    { state = "stopping", event = "start_timeout", expect = "ignored" },
    -- A second stop changes nothing but a pending restart: stop wins.
    { state = "stopping", event = "stop", label = "during a restart",
      ctx = { restart_wanted = true },
      expect = "transition", to = "stopping", actions = { "drop_restart" } },
    -- A restart during a stop is ignored: it would undo what a user asked.
    { state = "stopping", event = "restart", expect = "ignored" },
    -- During a stop the leftovers get the rest of the grace period.
    { state = "stopping", event = "leader_exit", expect = "ignored" },
    { state = "stopping", event = "finish", expect = "ignored" },
    { state = "stopping", event = "stop_timeout", expect = "transition", to = "stopping",
      actions = { "kill_group" } },
    { state = "stopping", event = "retry", expect = "ignored" },

    ---- failed -------------------------------------------------------------
    { state = "failed", event = "start", label = "by a user",
      ctx = { ever_ready = true, restarts = 5 },
      expect = "transition", to = "starting", actions = fresh_start_actions },
    -- A restart of a failed app is a fresh start.
    { state = "failed", event = "restart", ctx = { ever_ready = true, restarts = 5 },
      expect = "transition", to = "starting", actions = fresh_start_actions },
    { state = "failed", event = "leader_exit", label = "group of a timed-out start",
      expect = "ignored" },
    -- The supervisor ends after giving up, unless a restart began another
    -- attempt meanwhile (its own `finish` decides then).
    { state = "failed", event = "finish", label = "the attempt that gave up",
      ctx = { attempt = 3 }, payload = { attempt = 3 },
      expect = "transition", to = "failed", actions = { "exit_failed" } },
    { state = "failed", event = "finish", label = "an earlier attempt",
      ctx = { attempt = 4 }, payload = { attempt = 3 },
      expect = "transition", to = "failed", actions = {} },
    { state = "failed", event = "ready", label = "late probe", expect = "ignored" },
    { state = "failed", event = "exited", label = "killed group of a timed-out start",
      payload = { signal = "KILL" }, expect = "ignored" },
    { state = "failed", event = "start_timeout", expect = "ignored" },
    { state = "failed", event = "stop", expect = "transition", to = "stopped",
      actions = { "cancel_retry", "finish_stop" } },
    { state = "failed", event = "stop_timeout", expect = "ignored" },
    { state = "failed", event = "retry", ctx = { ever_ready = true, restarts = 1 },
      expect = "transition", to = "starting", actions = start_actions },
  },
}
