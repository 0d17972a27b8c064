--[[
The fault matrix (docs/design.md §5 and §9): one row per failure mode, each
run by tests/test_faults.c as its own cmocka test named after the row, with
the real binary, the fixture app (fixtures/README.md) and real processes in a
fresh temporary root.  This file is data; the runner is the only code.

A row:
  name        the test's name (unique; letters, digits and _)
  app         FAKE_APP_MODE of the fixture app ("instant" when absent)
  app_env     more variables for the app (manager.app.env), strings
  config      merged key by key over `base_config` below; strings "$APP",
              "$PYTHON" and "$PORT" (the row's own free port, a number) are
              filled in, and "$URL:<server>" is the URL of a fake-http the
              row declares in `servers`
  servers     { <id> = "<fake-http mode>" }: started (each on a free port)
              before config.json is written; steps can kill and restart them
  models      true: copies the fixture GGUF valid-v3.gguf into <root>/models
  cm_env      extra environment of every command the row runs
  needs       "mount": the row mounts a tmpfs; skipped where mount is refused
  steps       the injection, run in order (vocabulary below)
  expect      the end state, checked after the steps:
                state        what `status --json` says ("stopped", "running",
                             "failed", "unknown"); "running|stopped" is decided
                             by the start_and_stop_at_once step
                status       its exit code (LSB: 0 running, 1 dead, 3 not,
                             4 unknown)
                app_running  true: exactly one app (plus its supervisor)
                             carries the instance marker, and it is the pid
                             state.json names; false (default): no process
                             carrying CHAT_MANAGER_INSTANCE=<id> is left
                config       "unchanged" (default): config.json is byte-
                             identical to what the row last wrote (a step
                             that deletes or corrupts it sets that); or
                             { switched_to = name }: the only difference is
                             backend.active, now `name`, every other key and
                             their order kept
  expect_fail a diagnosis: the product is known to fail this row.  The row
              still runs; when it fails with `symptom` (a text of the
              failure report) the diagnosis is printed and the test is
              skipped (XFAIL); any other failure, and any safety finding
              (a foreign process harmed, config.json changed) fails it as
              usual; should it pass, it fails so that the mark is removed.
              CM_FAULTS_STRICT=1 runs such rows as normal tests.

Always checked as well: every foreign process the row started (sentinels,
a fake-http holding the port) is alive, was never signalled (a sentinel
records every catchable signal and is never found stopped), and fake-http
servers the row did not stop itself are still serving.  Every row checks a
message somewhere (a step with `says`).

Steps (first element the verb; `says` is a string or a list of strings that
must all occur in the command's stdout+stderr, `not_says` likewise must not;
`code` the exit code; `timeout` ms, each wait is bounded):
  { "cm", args..., code=, says=, not_says=, retry_ms= }
        runs `chat-manager --root ROOT args...`; with retry_ms the command
        is repeated until its expectations hold or the time is up
  { "cm_bg", args..., id= }          starts a command in the background
  { "wait_bg", id, code=, says= }    waits for it and checks it
  { "concurrent", {args...}, {args...}, codes={...}, loser_says= }
        starts both commands at the same moment; `codes` is the sorted list
        of their exit codes; the one that failed says `loser_says`
  { "start_and_stop_at_once" }       start and stop at the same moment; stop
        exits 0, start exits 0 or, when stop reached the supervisor while it
        was starting, 1 "stopped before it was ready"; the end state must
        follow the order they ran in (stop first: "not running", then
        running; otherwise stopped)
  { "wait_state", state }            state.json says `state`
  { "state_is", field = value, ... } state.json fields (numbers, strings)
  { "remember_app" } / { "wait_new_app" }   the app pid of state.json, then
        wait for a running app with another pid
  { "app_alive" }                    the app's pid lives and GET /health on
                                     its port answers 200
  { "supervisor_alive" }             run/lock is held and the pid in
                                     run/supervisor.pid lives
  { "wait_supervisor_gone" }         run/lock released
  { "kill_supervisor" }              SIGKILL to the supervisor
  { "signal_supervisor", SIG }       e.g. "HUP", "USR1"
  { "signal_app", SIG }              to the app (state.json pid); "STOP" waits
                                     until /proc shows it stopped; "KILL"
                                     waits until it is gone
  { "delete_config" }                removes config.json
  { "corrupt_config", fixture= | text= }   replaces config.json's bytes
  { "mount_tmpfs", dir, size= }     a tmpfs on <root>/<dir> (run, logs)
  { "read_only", dir }               <root>/<dir> (created if missing)
        becomes read-only for every new open, root's included: a read-only
        bind mount of it on itself (open files stay writable)
  { "replace_with_file", dir }       <root>/<dir> becomes a regular file
  { "fill_disk", dir, log= }         fills the tmpfs on dir (a filler file,
                                     then the newest log, to the last byte;
                                     log = false: the filler alone)
  { "limit_log_size" }               RLIMIT_FSIZE of the supervisor set to
                                     the size of its log (prlimit), once
                                     the log is padded to 64 KiB
  { "take_port" }                    a fake-http (foreign) binds the app's
                                     port on 127.0.0.1
  { "sentinel", id }                 a foreign process recording signals
  { "write_pid_file", of=id, start_time=true|false }   process.pid naming
        the sentinel, with a start time that is not its own, or in the old
        script's format (the PID alone)
  { "write_supervisor_pid", of=id }  run/supervisor.pid naming the sentinel
  { "write_state", of=id }           run/state.json: running, pid and pgid
                                     the sentinel, with a wrong pid_start
  { "write_state", text= }           run/state.json holds exactly `text`
  { "write_file", path, text= }      <root>/<path> holds exactly `text`
  { "kill_server", id } / { "start_server", id }   a fake-http of `servers`
                                     (restarted on the same port)
  { "wait_served", id, n= }          that server answered n requests with
                                     200 since it was last started
  { "wait_log", text, count= }       the session logs contain text (count
                                     times at least)
  { "log_has", text... } / { "log_count", text, n= | max= }
  { "log_order", text... }           each text first occurs after the
                                     previous one's first occurrence
]]

local stop_msg = "Chat-O-Llama stopped"

-- Shared by the rows that list an empty logs/ directory (status does).
local qsort_bug = "src/lua_fs.c l_list (cm.fs.list) calls qsort(names, n, ...) with " ..
  "names == NULL when the directory is empty (n == 0): undefined behaviour, which the " ..
  "sanitizer build (CM_SANITIZE, what CI runs) reports as 'null pointer passed as " ..
  "argument 1' and aborts, so `status` exits 1 with no output whenever logs/ exists but " ..
  "is empty (instance.newest_log lists it); qsort only when n > 1"

return {
  base_config = {
    backend = { active = "ollama", auto_fallback = false, health_check_interval = 3600 },
    ollama = { base_url = "http://127.0.0.1:1" },
    llamacpp = { python = "$PYTHON", model_path = "./models" },
    server = { port = "$PORT" },
    manager = {
      app = { command = { "$APP" }, env = {} },
      start_timeout = 20,
      stop_timeout = 5,
      restart = { policy = "on-failure", max_restarts = 5, backoff_initial = 0.05,
                  backoff_max = 0.2, reset_after = 30 },
    },
  },
  -- The llama.cpp import probe fails fast unless a row says otherwise.
  cm_env = { FAKE_PYTHON_LLAMA = "missing" },

  rows = {
    ---- the supervisor killed (SIGKILL) in each state ---------------------
    { name = "supervisor_sigkill_while_starting",
      app = "slow", app_env = { FAKE_APP_DELAY_MS = "3000" },
      steps = {
        { "cm_bg", "start", id = "start" },
        { "wait_state", "starting" },
        { "kill_supervisor" },
        { "wait_bg", "start", code = 1, says = "failed to start" },
        { "cm", "status", code = 0, says = "supervisor is gone" },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "supervisor_sigkill_while_running",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "wait_state", "running" },
        { "kill_supervisor" },
        { "app_alive" },
        { "cm", "status", code = 0, says = "supervisor is gone" },
        { "cm", "start", code = 1, says = "already running without its supervisor" },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    -- A stop in flight (the app ignores TERM, so it stays in stopping).
    { name = "supervisor_sigkill_while_stopping",
      app = "ignore-term", config = { manager = { stop_timeout = 20 } },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "cm_bg", "stop", id = "stop" },
        { "wait_state", "stopping" },
        { "kill_supervisor" },
        { "wait_bg", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    ---- the app misbehaves -------------------------------------------------
    { name = "app_sigstopped_stop_still_finishes",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "signal_app", "STOP" },
        { "cm", "stop", code = 0, says = stop_msg },
        -- TERM and CONT end it: no need to wait for stop_timeout's KILL
        { "log_count", "killing process group", n = 0 },
      },
      expect = { state = "stopped", status = 3 } },

    -- The same with the supervisor gone: stop works from process.pid, and
    -- its CONT lets the app act on TERM well inside stop_timeout.
    { name = "app_sigstopped_without_supervisor_stop_still_finishes",
      config = { manager = { stop_timeout = 3 } },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "wait_state", "running" },
        { "kill_supervisor" },
        { "signal_app", "STOP" },
        { "cm", "stop", code = 0, says = { "no supervisor", stop_msg },
          not_says = "sending SIGKILL" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "app_sigstopped_ignoring_term_stop_finishes_by_kill",
      app = "ignore-term", config = { manager = { stop_timeout = 1 } },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "signal_app", "STOP" },
        { "cm", "stop", code = 0, says = stop_msg },
        -- an action is logged before the transition that ran it
        { "log_order", "running -> stopping on stop", "killing process group",
          "stopping -> stopping on stop_timeout", "stopping -> stopped on exited (killed by SIGKILL)" },
      },
      expect = { state = "stopped", status = 3 } },

    ---- user code cannot freeze the supervisor ----------------------------
    -- The policy loops inside a C function during a health check (USR1);
    -- it runs in a child, so the supervisor still answers stop at once and
    -- the child ends with it.  (The policy file appears after the start, so
    -- that start itself does not wait for it.)
    { name = "policy_c_loop_supervisor_still_stops",
      config = { manager = { policy = "policy.lua", user_code = { timeout = 60 } } },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "write_file", "policy.lua", text = "return function(ctx)\n  return ('').rep('', 2^62)\nend\n" },
        { "signal_supervisor", "USR1" },
        { "wait_log", "unhealthy (1 in a row)" },
        { "cm", "stop", code = 0, says = stop_msg, timeout = 5000 },
      },
      expect = { state = "stopped", status = 3 } },

    ---- the supervisor SIGSTOPped: stop continues it, then stops ------------
    { name = "supervisor_sigstopped_stop_still_finishes",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "signal_supervisor", "STOP" },
        { "cm", "stop", code = 0, says = stop_msg, timeout = 12000 },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "app_crash_loop_backoff_cap_then_failed",
      app = "crash-later", app_env = { FAKE_APP_DELAY_MS = "150" },
      config = { manager = { restart = { max_restarts = 3, backoff_initial = 0.2,
                                         backoff_max = 0.4 } } },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "wait_state", "failed", timeout = 30000 },
        { "wait_supervisor_gone" },
        { "state_is", state = "failed", restarts = 3 },
        -- the first crash at once, then crashes in a row from 0.2 s, capped
        -- at 0.4 s, then no fourth restart
        { "log_order", "restart 1 of 3 in 0 s", "restart 2 of 3 in 0.2 s",
          "restart 3 of 3 in 0.4 s", "giving up after 3 restarts" },
        { "log_count", "restart 4 of", n = 0 },
        { "log_count", "simulated crash after start", n = 4 },
        { "cm", "status", code = 3, says = { "has failed", "exit code 3" } },
      },
      expect = { state = "failed", status = 3 } },

    { name = "app_exits_zero_on_its_own",
      app = "exit-zero", app_env = { FAKE_APP_DELAY_MS = "300" },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "wait_state", "stopped" },
        { "wait_supervisor_gone" },
        { "log_has", "running -> stopped on exited (exit code 0)" },
        { "log_count", "restart 1 of", n = 0 },
        { "cm", "status", code = 3, says = "not running" },
      },
      expect = { state = "stopped", status = 3 } },

    ---- the config changes under a running app ----------------------------
    -- The supervisor reads config.json again when it (re)starts the app:
    -- a restart (HUP) or a crash.  It must keep its last good config.
    { name = "config_deleted_while_running",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "remember_app" },
        { "delete_config" },
        { "signal_supervisor", "HUP" },
        { "wait_new_app", timeout = 15000 }, -- a restart takes well under a second
        { "app_alive" },
        { "wait_log", "keeping the last good config" },
        { "log_count", "started python3 app.py", n = 0 },
        { "cm", "status", code = 0, says = "is running" },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "config_invalid_while_running",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "remember_app" },
        { "corrupt_config", fixture = "configs/syntax-error-line7.json" },
        { "signal_app", "KILL" }, -- a crash: the supervisor restarts the app
        { "wait_new_app" },
        { "app_alive" },
        { "wait_log", "config error, keeping the last good config" },
        { "log_has", "config.json:7:3:" },
        { "cm", "status", code = 0, says = { "is running", "config.json:7:3: invalid JSON" } },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "config_wrong_type_while_running",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "remember_app" },
        { "corrupt_config", text = '{ "server": { "port": "abc" } }\n' },
        { "signal_supervisor", "HUP" },
        { "wait_new_app" },
        { "app_alive" },
        { "wait_log", "config error, keeping the last good config" },
        { "cm", "status", code = 0, says = { "is running", "'server.port' must be" } },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    ---- run/ and logs/ not writable (root ignores modes: mounts, files) ----
    { name = "run_dir_read_only_at_start", needs = "mount",
      steps = {
        { "read_only", "run" },
        { "cm", "start", code = 1, says = { "run/cmd.lock", "Read-only file system" },
          not_says = "another command is still working" },
        { "cm", "status", code = 3, says = "not running" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "run_dir_read_only_while_running", needs = "mount",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "read_only", "run" },
        { "cm", "status", code = 0, says = "is running" },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "logs_dir_read_only_at_start", needs = "mount",
      steps = {
        { "read_only", "logs" },
        { "cm", "start", code = 1, says = { "failed to start", "/logs/", "Read-only file system" } },
        { "cm", "status", code = 3, says = "not running" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "run_dir_is_a_file",
      steps = {
        { "replace_with_file", "run" },
        { "cm", "start", code = 1, says = "/run" },
        { "cm", "status", code = 3, says = "not running" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "logs_dir_is_a_file",
      steps = {
        { "replace_with_file", "logs" },
        { "cm", "start", code = 1, says = "/logs" },
        { "cm", "status", code = 3, says = "not running" },
      },
      expect = { state = "stopped", status = 3 } },

    ---- the log's disk full ------------------------------------------------
    { name = "log_disk_full_tmpfs", needs = "mount",
      steps = {
        { "mount_tmpfs", "logs", size = "64k" },
        { "cm", "start", code = 0, says = "started successfully" },
        { "fill_disk", "logs" },
        { "signal_supervisor", "USR1" }, -- a health check: the supervisor logs
        { "app_alive" },
        { "cm", "status", code = 0, says = { "is running", "No space left on device" },
          retry_ms = 10000 },
        { "supervisor_alive" },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    -- run/ full before start: run/supervisor.pid and state.json cannot be
    -- written; status must still find the live supervisor (run/lock is
    -- held), not call it an orphan and say "not running".
    { name = "run_dir_full_status_finds_the_supervisor",
      needs = "mount",
      steps = {
        { "mount_tmpfs", "run", size = "64k" },
        { "fill_disk", "run", log = false },
        { "cm", "start", code = 0, says = "started successfully" },
        { "cm", "status", code = 0, says = "is running", not_says = { "rphan", "supervisor is gone" } },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "log_file_size_limit_on_supervisor",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "limit_log_size" },
        { "signal_supervisor", "USR1" }, -- its next log line exceeds RLIMIT_FSIZE
        { "app_alive" },
        { "cm", "status", code = 0, says = { "is running", "File too large" },
          not_says = "supervisor is gone", retry_ms = 10000 },
        { "supervisor_alive" },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    ---- the port taken between the check and the app's bind ---------------
    -- start has checked the port; the app binds it only after a delay, and
    -- a foreign server (fake-http on 127.0.0.1) takes it meanwhile.
    { name = "port_taken_before_the_app_binds",
      app = "slow", app_env = { FAKE_APP_DELAY_MS = "3000" },
      steps = {
        { "cm_bg", "start", id = "start" },
        { "wait_state", "starting" },
        { "take_port" },
        { "wait_bg", "start", code = 1, says = { "failed to start", "already in use" } },
        { "wait_supervisor_gone" },
      },
      expect = { state = "failed", status = 3 } },

    { name = "port_taken_before_the_app_binds_with_health_path",
      app = "slow", app_env = { FAKE_APP_DELAY_MS = "3000" },
      config = { manager = { health_path = "/health" } },
      steps = {
        { "cm_bg", "start", id = "start" },
        { "wait_state", "starting" },
        { "take_port" },
        { "wait_bg", "start", code = 1, says = { "failed to start", "already in use" } },
        { "wait_supervisor_gone" },
      },
      expect = { state = "failed", status = 3 } },

    ---- commands racing ----------------------------------------------------
    { name = "stop_during_starting",
      app = "slow", app_env = { FAKE_APP_DELAY_MS = "5000" },
      steps = {
        { "cm_bg", "start", id = "start" },
        { "wait_state", "starting" },
        { "cm", "stop", code = 0, says = stop_msg },
        { "wait_bg", "start", code = 1, says = "stopped before it was ready" },
      },
      expect = { state = "stopped", status = 3 } },

    -- What systemd does: TERM to the supervisor while the app is starting.
    { name = "stop_during_starting_by_sigterm",
      app = "slow", app_env = { FAKE_APP_DELAY_MS = "5000" },
      steps = {
        { "cm_bg", "start", id = "start" },
        { "wait_state", "starting" },
        { "signal_supervisor", "TERM" },
        { "wait_bg", "start", code = 1, says = "stopped before it was ready" },
        { "wait_supervisor_gone" },
        { "log_order", "starting -> stopping on stop", "stopping -> stopped on exited" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "two_starts_at_once",
      app = "slow", app_env = { FAKE_APP_DELAY_MS = "300" },
      steps = {
        { "concurrent", { "start" }, { "start" }, codes = { 0, 1 },
          loser_says = "already running" },
        { "app_alive" },
        { "log_count", "stopped -> starting on start", n = 1 },
      },
      expect = { state = "running", status = 0, app_running = true } },

    { name = "start_and_stop_at_once",
      app = "slow", app_env = { FAKE_APP_DELAY_MS = "300" },
      steps = {
        { "start_and_stop_at_once" },
      },
      expect = { state = "running|stopped" } },

    ---- backend flapping ---------------------------------------------------
    -- Ollama and a llama.cpp server die and come back around short health
    -- checks (fallback after 1 failure).  The policy switches once; within
    -- the cooldown it never switches again, however the backends flap.
    { name = "backend_flapping_one_switch_per_cooldown",
      servers = { ollama = "ollama", llamacpp = "llamacpp" },
      models = true,
      cm_env = { FAKE_PYTHON_LLAMA = "present" },
      config = {
        backend = { auto_fallback = true, health_check_interval = 0.2,
                    order = { "ollama", "llamacpp" } },
        ollama = { base_url = "$URL:ollama", connect_timeout = 1, timeout = 2 },
        llamacpp = { server_url = "$URL:llamacpp" },
        manager = { fallback_after = 1, fallback_cooldown = 3600 },
      },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "kill_server", "ollama" },
        { "wait_log", "backend switched from 'ollama' to 'llamacpp'" },
        { "wait_state", "running" },
        -- llama.cpp down, Ollama back: the policy would switch back
        { "start_server", "ollama" },
        { "kill_server", "llamacpp" },
        { "wait_log", "backend 'llamacpp' unhealthy (5 in a row)" },
        { "start_server", "llamacpp" },
        { "wait_served", "llamacpp", n = 2 },
        -- both down, then Ollama back again
        { "kill_server", "ollama" },
        { "kill_server", "llamacpp" },
        { "wait_log", "backend 'llamacpp' unhealthy (3 in a row)", count = 2 },
        { "start_server", "ollama" },
        { "wait_log", "backend 'llamacpp' unhealthy (5 in a row)", count = 2 },
        { "start_server", "llamacpp" },
        { "wait_served", "llamacpp", n = 2 },
        { "log_count", "backend switched from", n = 1 },
        { "state_is", state = "running", backend = "ollama", serving = "llamacpp" },
        { "app_alive" },
        { "cm", "status", code = 0, says = "is running" },
      },
      -- a fallback is runtime state: config.json stays as it was
      expect = { state = "running", status = 0, app_running = true } },

    -- The same with a short cooldown: the second switch waits for it.
    { name = "backend_flapping_switches_back_only_after_the_cooldown",
      servers = { ollama = "ollama", llamacpp = "llamacpp" },
      models = true,
      cm_env = { FAKE_PYTHON_LLAMA = "present" },
      config = {
        backend = { auto_fallback = true, health_check_interval = 0.2,
                    order = { "ollama", "llamacpp" } },
        ollama = { base_url = "$URL:ollama", connect_timeout = 1, timeout = 2 },
        llamacpp = { server_url = "$URL:llamacpp" },
        manager = { fallback_after = 1, fallback_cooldown = 4 },
      },
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "kill_server", "ollama" },
        { "wait_log", "backend switched from 'ollama' to 'llamacpp'" },
        -- llama.cpp dies at once, Ollama comes back: with fallback_after = 1
        -- only the cooldown holds the switch back, and the log says so
        -- (not a count of failures, which a slow check on a loaded machine
        -- makes smaller)
        { "kill_server", "llamacpp" },
        { "start_server", "ollama" },
        { "wait_log", "backend switched from 'llamacpp' to 'ollama'" },
        { "log_order", "backend switched from 'ollama' to 'llamacpp'",
          "keeping 'llamacpp': active backend 'llamacpp' is unhealthy, but the last switch was",
          "backend switched from 'llamacpp' to 'ollama'" },
        { "start_server", "llamacpp" },
        { "wait_served", "llamacpp", n = 2 },
        { "log_count", "backend switched from", n = 2 },
        { "wait_state", "running" },
        { "app_alive" },
        { "cm", "status", code = 0, says = "is running" },
      },
      expect = { state = "running", status = 0, app_running = true } },

    ---- PID reuse: a pid file naming a live process that is not ours -------
    -- The sentinel records every signal it gets; none may arrive.
    { name = "pid_reuse_pid_file_with_start_time",
      steps = {
        { "sentinel", "victim" },
        { "write_pid_file", of = "victim", start_time = true },
        { "cm", "status", code = 1, says = "process.pid names PID" },
        { "cm", "stop", code = 0, says = "stale PID file" },
        { "write_pid_file", of = "victim", start_time = true },
        { "cm", "force-stop", code = 0, says = "Nothing to stop" },
        { "write_pid_file", of = "victim", start_time = true },
        { "cm", "start", code = 0, says = { "stale PID file", "started successfully" } },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    -- The old script's format naming a live process that is not provably
    -- the app (its working directory and command line are not the app's):
    -- never signalled, never called "not running", the pid file kept.
    { name = "pid_reuse_pid_file_without_start_time",
      steps = {
        { "sentinel", "victim" },
        { "write_pid_file", of = "victim", start_time = false },
        { "cm", "status", code = 4, says = "not provably this checkout's app" },
        { "cm", "stop", code = 1, says = "left alone" },
        { "cm", "force-stop", code = 0, says = "left alone" },
        { "cm", "restart", code = 1, says = "left alone" },
        { "cm", "start", code = 1, says = "left alone" },
      },
      expect = { state = "unknown", status = 4 } },

    { name = "pid_reuse_state_file",
      steps = {
        { "sentinel", "victim" },
        { "write_state", of = "victim" },
        { "cm", "status", code = 3, says = "not running" },
        { "cm", "stop", code = 0, says = "not running" },
        { "write_state", of = "victim" },
        { "cm", "force-stop", code = 0, says = "Nothing to stop" },
      },
      expect = { state = "stopped", status = 3 },
      -- stop has created an empty logs/ by then
       },

    -- A live supervisor, but run/supervisor.pid names another process:
    -- stop must not signal it (the marker proves whose it is).
    { name = "pid_reuse_supervisor_pid_file_while_running",
      steps = {
        { "sentinel", "victim" },
        { "cm", "start", code = 0, says = "started successfully" },
        { "write_supervisor_pid", of = "victim" },
        { "cm", "stop", code = 0, says = stop_msg },
        { "wait_supervisor_gone" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "pid_reuse_supervisor_pid_file",
      steps = {
        { "sentinel", "victim" },
        { "write_supervisor_pid", of = "victim" },
        { "cm", "stop", code = 0, says = "not running" },
        { "cm", "force-stop", code = 0, says = "Nothing to stop" },
        { "write_supervisor_pid", of = "victim" },
        { "cm", "start", code = 0, says = "started successfully" },
        { "cm", "stop", code = 0, says = stop_msg },
      },
      expect = { state = "stopped", status = 3 } },

    ---- a corrupt run/state.json (the supervisor gone): reported, treated as
    ---- stopped, and the app still found through process.pid and the marker
    { name = "state_json_pid_null_status_and_stop",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "kill_supervisor" },
        { "write_state", text = '{"state": "running", "pid": null, "pgid": null}\n' },
        { "cm", "status", code = 0, says = { "corrupt state, treated as stopped", "supervisor is gone" },
          not_says = "traceback" },
        { "cm", "stop", code = 0, says = stop_msg, not_says = "traceback" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "state_json_array_force_stop",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "kill_supervisor" },
        { "write_state", text = "[]\n" },
        { "cm", "force-stop", code = 0, says = "corrupt state, treated as stopped", not_says = "traceback" },
      },
      expect = { state = "stopped", status = 3 } },

    { name = "state_json_truncated_restart",
      steps = {
        { "cm", "start", code = 0, says = "started successfully" },
        { "kill_supervisor" },
        { "write_state", text = '{"state": "running", "pid": 12' },
        { "cm", "restart", code = 0, says = { "corrupt state, treated as stopped", "started successfully" },
          not_says = "traceback" },
        { "wait_state", "running" },
      },
      expect = { state = "running", status = 0, app_running = true } },
  },
}
