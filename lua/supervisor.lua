-- The supervisor: one process per root that runs the app, watches it and
-- drives the lifecycle machine (lua/lifecycle.lua) from libuv events.
--
-- Events come from: the app leader's exit (plus its group emptying), the
-- readiness probe, the start/stop/retry timers, and signals (TERM/INT stop,
-- HUP restarts the app, USR1 checks the backends now).  Each machine action
-- below is small and does not wait: anything that waits runs in its own task.
--
-- The supervisor holds an exclusive flock on run/lock for its whole life;
-- that lock, not a PID file, is how commands know it is alive.

local settings_mod = require("settings")
local instance_mod = require("instance")
local lifecycle = require("lifecycle")
local app = require("app")

local M = {}

local PROBE_WRONG_PORT = 3 -- commands/_probe.lua's exit code

local Supervisor = {}
Supervisor.__index = Supervisor

function Supervisor:log(fmt, ...)
    local msg = select("#", ...) > 0 and fmt:format(...) or fmt
    local ok, err = cm.log.event(msg)
    if not ok and err and not self.log_failed then
        -- The disk may be full: the app keeps running; state.json (and so
        -- `status`) says so at once.
        self.log_failed = err
        self:save_state()
    end
    -- In the foreground (`run`) the log is echoed to stdout as it grows; a
    -- line that could not be logged is printed here instead (once, either way).
    if not ok and self.foreground then io.stderr:write("[chat-manager] ", msg, "\n") end
end

-- Tells a waiting `start` how it went (once): "ready ..." or "failed ...".
-- From an action, the line waits until the transition is in the log and in
-- run/state.json (on_transition sends it): `start` must not return before a
-- `status` run right after it can see the new state.
function Supervisor:report(line)
    if not self.ready_fd then return end
    if self.in_transition then
        self.pending_report = self.pending_report or line
        return
    end
    cm.sys.write(self.ready_fd, line .. "\n")
    cm.fs.close(self.ready_fd)
    self.ready_fd = nil
end

function Supervisor:snapshot()
    local ctx = self.ctx
    return {
        state = self.machine and self.machine:state() or "stopped",
        since = self.since,
        pid = ctx.pid,
        pid_start = ctx.pid_start,
        pgid = ctx.pid,
        port = self.port,
        url = ("http://localhost:%d"):format(self.port),
        backend = self.settings:get("backend.active"),
        -- The backend the app serves with: runtime state, never config.json.
        serving = ctx.serving or self.settings:get("backend.active"),
        serving_by = ctx.serving_by,
        serving_reason = ctx.serving_reason,
        serving_since = ctx.serving_since,
        restarts = ctx.restarts,
        last_exit = ctx.last_exit,
        retry_at = ctx.retry_at,
        ready_ms = ctx.ready_ms,
        log = cm.log.path(),
        log_error = self.log_failed,
        config_error = self.config_error,
        supervisor_pid = cm.sys.pid(),
        foreground = self.foreground or nil,
        instance = self.inst.id,
        root = self.inst.root,
        leftovers = self.leftovers_checked and self.leftovers or nil,
    }
end

function Supervisor:save_state()
    local ok, err = self.inst:write_state(self:snapshot())
    if not ok then self:log("cannot write state: %s", err) end
end

-- Re-reads config.json for a new start.  A broken or deleted config is
-- logged and the last good one kept: a running app is never harmed by it.
function Supervisor:reload_settings()
    local s, err = settings_mod.load(self.inst.root)
    if s and s.missing and not self.settings.missing then
        s, err = nil, self.settings.path .. ": No such file or directory (deleted?)"
    end
    if s then
        self.settings = s
        self.config_error = nil
    else
        self.config_error = err
        self:log("config error, keeping the last good config: %s", err)
    end
end

-- ---- the machine's actions --------------------------------------------

local actions = {}

function actions.spawn_app(sv)
    local ctx = sv.ctx
    sv:reload_settings()
    ctx.attempt = (ctx.attempt or 0) + 1
    -- The app reads its port (and backend) from its config file, so an
    -- override reaches it through run/app-config.json.
    local config_file, cerr = app.config_for(sv.settings, sv.inst,
        { port = sv.port, backend = ctx.serving })
    if not config_file then
        sv:log("cannot write the app's config: %s", cerr)
        ctx.pid, ctx.pid_start = nil, nil
        sv.machine:fire("exited", { code = 127, error = "cannot write the app's config: " .. cerr })
        return
    end
    local launch = app.launch(sv.settings, sv.inst, sv.port, config_file)
    ctx.spawned_at = cm.time.now()
    ctx.app_config = launch.env.CONFIG_FILE
    local attempt = ctx.attempt
    local child, err = cm.proc.spawn({
        argv = launch.argv,
        cwd = launch.cwd,
        env = launch.env,
        new_session = true, -- its own session and process group
        stdout_fd = cm.log.fd(),
        stderr_fd = cm.log.fd(),
        on_exit = function(code, signal) sv:on_leader_exit(attempt, code, signal) end,
    })
    if not child then
        sv:log("cannot start %s: %s", table.concat(launch.argv, " "), err)
        ctx.pid, ctx.pid_start = nil, nil
        ctx.spawn_error = err
        sv.machine:fire("exited", { code = 127, error = err })
        return
    end
    local info = cm.proc.info(child.pid)
    ctx.pid = child.pid
    ctx.pid_start = info and info.start_time
    ctx.leader_exit = nil
    sv.inst:write_pid_file(ctx.pid, ctx.pid_start)
    sv:log("started %s (pid %d, port %d)", table.concat(launch.argv, " "), child.pid, sv.port)
end

function actions.arm_start_timer(sv)
    local ms = sv.settings:get("manager.start_timeout") * 1000
    sv.start_timer = cm.time.timer(ms, 0, function()
        sv.start_timer = nil
        sv:stop_probe()
        sv.machine:fire("start_timeout")
    end)
end

function actions.cancel_start_timer(sv)
    if sv.start_timer then sv.start_timer:stop() end
    sv.start_timer = nil
    sv:stop_probe()
end

-- Readiness: a TCP connect to the port, answered by the app's own group,
-- then (with manager.health_path) an HTTP 2xx.  A child does the probing
-- (commands/_probe.lua) and exits 0 when the app answers, 3 when the app
-- listens on another port; it belongs to one attempt and is stopped when
-- that attempt ends.
function actions.probe_ready(sv)
    local ctx = sv.ctx
    local attempt = ctx.attempt
    local path = sv.settings:get("manager.health_path")
    local argv = { cm.sys.exe(), "_probe", tostring(sv.port), tostring(ctx.pid or 0),
                   tostring(math.floor(sv.settings:get("manager.start_timeout") * 1000)) }
    if path then
        argv[#argv + 1] = path
        argv[#argv + 1] = tostring(math.floor(sv.settings:get("manager.health_timeout") * 1000))
    end
    if not ctx.pid then return end -- the spawn failed; `exited` is queued
    sv.probe = cm.proc.spawn({
        argv = argv,
        stderr_fd = cm.log.fd(),
        on_exit = function(code)
            if sv.ctx.attempt ~= attempt then return end
            sv.probe = nil
            if code == 0 then
                sv.machine:fire("ready", { ms = math.floor(cm.time.now() - ctx.spawned_at + 0.5) })
            elseif code == PROBE_WRONG_PORT then
                -- It will not become ready on this port: end the start now,
                -- as its timeout would.
                if sv.start_timer then sv.start_timer:stop() end
                sv.start_timer = nil
                sv.machine:fire("start_timeout", { reason = sv:wrong_port_reason() })
            end
        end,
    })
end

-- "the app listens on 3113, not on 8080 (it reads server.port from FILE)"
function Supervisor:wrong_port_reason()
    local ports = self.ctx.pid and cm.net.group_ports(self.ctx.pid) or {}
    local list = {}
    for i, p in ipairs(ports) do list[i] = tostring(p) end
    local where = self.ctx.app_config and (" (it reads server.port from %s)"):format(self.ctx.app_config)
        or ""
    return ("the app listens on %s, not on %d%s"):format(#list > 0 and table.concat(list, ", ")
        or "another port", self.port, where)
end

-- Once per supervisor, after the first ready (off start's path): this
-- root's processes from before this supervisor (carrying the marker, outside
-- the app's group and not ours).  While the supervisor lives, every later
-- process of the app stays in its subtree (it is the subreaper), so `status`
-- checks these few PIDs instead of reading every process's environment.
function Supervisor:find_leftovers()
    if self.leftovers then return end
    self.leftovers = {}
    local sv = self
    cm.task.spawn(function()
        cm.time.sleep(0)
        local me, found = cm.sys.pid(), {}
        for _, p in ipairs(sv.inst:marked_processes()) do
            if p.pgid ~= sv.ctx.pid and p.ppid ~= me then
                found[#found + 1] = { pid = p.pid, start_time = p.start_time, name = p.name }
            end
        end
        sv.leftovers = found
        sv.leftovers_checked = true
        sv:save_state()
    end)
end

function Supervisor:stop_probe()
    if self.probe then self.probe:kill("KILL") end
    self.probe = nil
end

function actions.report_ready(sv, payload)
    local ctx = sv.ctx
    ctx.ready_ms = payload.ms
    ctx.ever_ready = true
    ctx.running_since = cm.time.now()
    sv:report(("ready pid=%d port=%d ms=%d log=%s"):format(ctx.pid, sv.port, ctx.ready_ms or 0,
        cm.log.path() or ""))
    sv:start_health_loop()
    sv:find_leftovers()
end

function actions.report_failed(sv)
    local why = sv.ctx.last_exit and sv.ctx.last_exit.text or "stopped before it was ready"
    sv:report("failed " .. why)
end

local function describe_exit(payload)
    if payload.error then return payload.error end
    if payload.signal then return "killed by SIG" .. payload.signal end
    return ("exit code %d"):format(payload.code or -1)
end

local SIGNAL_NAMES = { [1] = "HUP", [2] = "INT", [3] = "QUIT", [6] = "ABRT", [9] = "KILL",
                       [11] = "SEGV", [13] = "PIPE", [15] = "TERM" }

function actions.record_exit(sv, payload)
    local ctx = sv.ctx
    ctx.last_exit = { code = payload.code, signal = payload.signal, text = describe_exit(payload),
                      at = cm.time.wall() }
    ctx.pid, ctx.pid_start = nil, nil
    cm.fs.remove(sv.inst.pid_file)
end

function actions.record_timeout(sv, payload)
    local t = sv.settings:get("manager.start_timeout")
    sv.ctx.last_exit = { text = payload.reason or ("not ready within %g s (start_timeout)"):format(t),
                         at = cm.time.wall() }
end

-- Fires `retry` after `delay` seconds (0: on the next turn of the loop).
local function retry_in(sv, delay, why)
    local ctx = sv.ctx
    ctx.restarts = ctx.restarts + 1
    ctx.retry_at = cm.time.wall() + delay
    sv:log("restart %d of %d in %g s (%s)", ctx.restarts, ctx.max_restarts, delay, why)
    sv.retry_timer = cm.time.timer(delay * 1000, 0, function()
        sv.retry_timer = nil
        sv.machine:fire("retry")
    end)
end

-- A crash in a row (restarts > 0: no stable run of reset_after since the
-- last restart) backs off: backoff_initial for the second crash, doubling up
-- to backoff_max, so a crash loop cannot spin.
function actions.schedule_retry(sv)
    local r = sv.settings:get("manager.restart")
    local n = math.max(sv.ctx.restarts - 1, 0)
    retry_in(sv, math.min(r.backoff_initial * 2 ^ n, r.backoff_max), "backing off")
end

-- The first crash after a stable run (or since a user's start) restarts at
-- once: the users of a chat server see every second of the gap.
function actions.retry_at_once(sv)
    retry_in(sv, 0, "first crash")
end

function actions.cancel_retry(sv)
    if sv.retry_timer then sv.retry_timer:stop() end
    sv.retry_timer = nil
    sv.ctx.retry_at = nil
end

function actions.reset_restarts(sv)
    sv.ctx.restarts = 0
end

function actions.want_restart(sv)
    sv.ctx.restart_wanted = true
end

function actions.drop_restart(sv)
    sv.ctx.restart_wanted = false
end

function actions.give_up(sv)
    if sv.ctx.ever_ready then
        sv:log("giving up after %d restarts; state failed until you act", sv.ctx.restarts)
    end
    sv:finish_when_group_gone()
end

function actions.term_group(sv)
    local pgid = sv.ctx.pid
    if not pgid then return end
    -- A stopped (SIGSTOP) app cannot act on TERM until it continues: CONT
    -- first.  Never after the TERM: a CONT that arrives while the process
    -- is already exiting cancels the stop of a ptrace attach it may be in
    -- (LeakSanitizer's scan at exit in the sanitizer build attaches to
    -- itself), which then waits forever; a late CONT left such apps and
    -- supervisors hung until SIGKILL.
    cm.proc.kill_group(pgid, "CONT")
    cm.proc.kill_group(pgid, "TERM")
end

function actions.arm_stop_timer(sv)
    local ms = sv.settings:get("manager.stop_timeout") * 1000
    sv.stop_timer = cm.time.timer(ms, 0, function()
        sv.stop_timer = nil
        sv.machine:fire("stop_timeout")
    end)
end

function actions.cancel_stop_timer(sv)
    if sv.stop_timer then sv.stop_timer:stop() end
    sv.stop_timer = nil
end

function actions.kill_group(sv)
    local pgid = sv.ctx.pid or sv.ctx.last_pgid
    if pgid then
        sv:log("killing process group %d", pgid)
        cm.proc.kill_group(pgid, "KILL")
    end
end

-- The leader of a crashed app exited: what is left of its group goes at
-- once (during a stop it gets the rest of the grace period instead).
function actions.kill_leftovers(sv)
    local pgid = sv.ctx.pid
    if pgid and cm.proc.group_alive(pgid) then
        sv:log("killing what is left of process group %d", pgid)
        cm.proc.kill_group(pgid, "KILL")
    end
end

function actions.finish_stop(sv)
    sv:finish_when_group_gone()
end

-- The supervisor ends (0 after a stop, 1 after giving up) once the
-- transition is recorded: on_transition sets `done`.
function actions.exit_stopped(sv)
    sv.exit_code = 0
end

function actions.exit_failed(sv)
    sv.exit_code = 1
end

-- ---- events from the loop ---------------------------------------------

-- The leader exited (`leader_exit`: the table says what happens to the rest
-- of its group).  The app is over only when its whole group is gone, and
-- only then does `exited` fire.
function Supervisor:on_leader_exit(attempt, code, signal)
    local ctx = self.ctx
    if attempt ~= ctx.attempt then return end
    local pgid = ctx.pid
    ctx.last_pgid = pgid
    self.machine:fire("leader_exit")
    if pgid then
        local limit = (self.settings:get("manager.stop_timeout") + 5) * 1000
        if not cm.proc.wait_group(pgid, limit) then
            self:log("process group %d outlived its leader", pgid)
        end
    end
    cm.proc.reap_orphans()
    -- cm.proc reports 128+N and the signal number; the machine wants a name
    -- or nil ("exited cleanly" is code 0 and no signal).  ran_ms: how long
    -- it ran since it was ready (the table's reset_after rule).
    local payload = { code = code, ran_ms = ctx.running_since and cm.time.now() - ctx.running_since }
    ctx.running_since = nil
    if signal and signal ~= 0 then
        payload.signal = SIGNAL_NAMES[signal] or tostring(signal)
        payload.code = nil
    end
    if attempt == ctx.attempt then self.machine:fire("exited", payload) end
end

function Supervisor:on_transition(from, event, to)
    self.in_transition = false
    self.since = cm.time.wall()
    local ctx = self.ctx
    local detail = ""
    if to == "running" then
        detail = (" (pid %d, ready in %d ms)"):format(ctx.pid or 0, ctx.ready_ms or 0)
    elseif to == "starting" then
        detail = ctx.pid and (" (pid %d)"):format(ctx.pid) or ""
    elseif (to == "failed" or to == "stopped") and ctx.last_exit then
        detail = " (" .. ctx.last_exit.text .. ")"
    end
    self:log("%s -> %s on %s%s", from, to, event, detail)
    if self.notifier then self.notifier:transition(to, detail) end
    if from ~= to and self.ctx.last_exit and to == "stopped" then
        -- After a clean stop, make sure nothing else holds the port.
        if not cm.net.port_free(self.port) then
            local owner = cm.net.port_owner(self.port)
            self:log("port %d is still in use%s", self.port,
                owner and (" by PID %d (%s)"):format(owner.pid, owner.name) or "")
        end
    end
    self:save_state()
    if self.pending_report then
        local line = self.pending_report
        self.pending_report = nil
        self:report(line)
    end
    if self.exit_code then self.done:set(self.exit_code) end
end

-- Fires `finish` once the app's group is gone; the table decides whether
-- the supervisor ends then (a restart may have begun a new attempt).
function Supervisor:finish_when_group_gone()
    local sv = self
    local attempt = sv.ctx.attempt
    local pgid = sv.ctx.pid or sv.ctx.last_pgid
    cm.task.spawn(function()
        if pgid then cm.proc.wait_group(pgid, 5000) end
        sv.machine:fire("finish", { attempt = attempt })
    end)
end

-- Periodic backend checks while running (policy in lua/policy/fallback.lua).
function Supervisor:start_health_loop()
    if self.health_timer then return end
    local interval = self.settings:get("backend.health_check_interval") * 1000
    -- The first check a second after ready (not on top of `start`'s own
    -- return), so that `status` soon has the supervisor's view.
    self.health_timer = cm.time.timer(math.min(interval, 1000), interval,
        function() self:check_backends() end)
end

-- One check at a time; a request that arrives during a check (USR1, the
-- timer) runs right after it, so none is lost.
function Supervisor:check_backends()
    if self.checking then
        self.check_again = true
        return
    end
    self.checking = true
    repeat
        self.check_again = false
        if self.machine:state() == "running" then
            local ok, err = pcall(require("health").tick, self)
            if not ok then self:log("health check failed: %s", err) end
            self:save_state()
        end
    until not self.check_again
    self.checking = false
end

-- Restarts the app gracefully (HUP, or a backend switch); the table says
-- what a restart means in each state.
function Supervisor:restart_app(reason)
    self:log("restart requested: %s", reason)
    self.machine:fire("restart")
end

-- TERM or INT: stop the app and end.
function Supervisor:stop_requested()
    if self.notifier then self.notifier:stopping() end
    self.machine:fire("stop")
end

-- ---- entry point ---------------------------------------------------------

-- opts: root, port, foreground (bool), ready_fd (number or nil).
-- Returns the process exit code: 0 stopped cleanly, 1 failed.
function M.run(opts)
    local inst = instance_mod.new(opts.root)
    local settings, err = settings_mod.load(opts.root)
    local function early_fail(msg)
        if opts.ready_fd then
            cm.sys.write(opts.ready_fd, "failed " .. msg .. "\n")
            cm.fs.close(opts.ready_fd)
        end
        io.stderr:write("[ERROR] ", msg, "\n")
        return 1
    end
    if not settings then return early_fail(err) end
    local ok, derr = inst:ensure_dirs()
    if not ok then return early_fail(derr) end
    local lock, lerr, lcode = cm.fs.lock(inst.lock_file)
    if not lock then
        return early_fail(lcode == "busy" and "a supervisor is already running for " .. inst.root
            or lerr)
    end

    local stamp = cm.time.strftime("%Y%m%d_%H%M%S")
    local log_path = ("%s/chat-o-llama_%s.log"):format(inst.logs_dir, stamp)
    ok, err = cm.log.open(log_path)
    if not ok then
        lock:unlock()
        return early_fail(err)
    end
    local pruned = inst:prune_logs(settings:get("manager.log_keep"))
    cm.fs.write_atomic(inst.supervisor_pid_file, ("%d\n"):format(cm.sys.pid()), tonumber("644", 8),
        false)
    cm.proc.set_subreaper()

    local restart = settings:get("manager.restart")
    local sv = setmetatable({
        inst = inst,
        settings = settings,
        port = opts.port,
        foreground = opts.foreground,
        ready_fd = opts.ready_fd,
        done = cm.task.event(),
        ctx = { policy = restart.policy, restarts = 0, max_restarts = restart.max_restarts,
                reset_after = restart.reset_after, ever_ready = false, started_at = cm.time.wall() },
    }, Supervisor)
    if opts.serving and opts.serving ~= settings:get("backend.active") then
        -- start's fallback policy chose another backend than config.json's.
        require("health").set_serving(sv, opts.serving, "start", opts.serving_reason or "chosen at start")
        sv.ctx.last_switch, sv.ctx.last_switch_by = cm.time.wall(), "policy"
    end
    cm.set_error_handler(function(msg) sv:log("error: %s", msg) end)
    if opts.foreground then
        sv.notifier = require("sdnotify").from_environment(function(...) sv:log(...) end)
    end

    local bound = {}
    for name, fn in pairs(actions) do
        bound[name] = function(_, payload)
            sv.in_transition = true
            return fn(sv, payload or {})
        end
    end
    local machine, merr = cm.machine.new(lifecycle, bound, {
        context = sv.ctx,
        on_transition = function(from, event, to) sv:on_transition(from, event, to) end,
    })
    if not machine then
        lock:unlock()
        return early_fail("invalid lifecycle table: " .. merr)
    end
    sv.machine = machine
    sv:log("supervisor %d started for %s (log %s)", cm.sys.pid(), inst.root, log_path)
    if #pruned > 0 then
        sv:log("removed old logs (log_keep %d): %s", settings:get("manager.log_keep"),
            table.concat(pruned, ", "))
    end
    local rotation = require("logrotate").watch(log_path, settings:get("manager.log_max_bytes"),
        settings:get("manager.log_backups"), function(msg) sv:log("%s", msg) end)

    local handlers = {
        cm.sys.on_signal("TERM", function() sv:stop_requested() end),
        cm.sys.on_signal("INT", function() sv:stop_requested() end),
        cm.sys.on_signal("HUP", function()
            if sv.notifier then sv.notifier:reloading() end
            sv:restart_app("SIGHUP")
        end),
        cm.sys.on_signal("USR1", function() sv:check_backends() end),
        cm.sys.on_signal("CHLD", function() cm.proc.reap_orphans() end),
    }
    -- `start` may let other commands in now: run/lock serialises starts,
    -- and a `stop` finds the signal handlers in place.
    if opts.ready_fd then cm.sys.write(opts.ready_fd, "locked\n") end
    machine:fire("start")

    local code = sv.done:wait()
    for _, h in ipairs(handlers) do h:close() end
    if rotation then rotation:close() end
    if sv.health_timer then sv.health_timer:stop() end
    if sv.notifier then sv.notifier:close() end
    sv:report("failed " .. (sv.ctx.last_exit and sv.ctx.last_exit.text or "supervisor stopped"))
    sv:save_state()
    sv:log("supervisor %d exiting (%s)", cm.sys.pid(), machine:state())
    cm.fs.remove(inst.supervisor_pid_file)
    cm.fs.remove(inst.pid_file)
    lock:unlock()
    return code
end

return M
