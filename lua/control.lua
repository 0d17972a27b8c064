-- What start, stop, restart and force-stop do, shared by their commands
-- (and by `backend switch --restart`).  The commands that change state take
-- run/cmd.lock first, so two of them at once are serialised: two `start`s
-- give one app.

local ui = require("ui")
local settings_mod = require("settings")
local instance_mod = require("instance")

local M = {}

local EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
local CMD_LOCK_WAIT_MS = 60000

function M.load(ctx)
    local settings, err = settings_mod.load(ctx.root)
    if not settings then
        ui.error("%s", err)
        return nil
    end
    return settings, instance_mod.new(ctx.root)
end

-- Serialises state-changing commands for this root.  With `read_only`
-- (stop, force-stop) a root that has no run/ yet is left as it is: no
-- supervisor ever ran there, so there is nothing to serialise against, and
-- a directory that holds no app must not gain run/ and logs/.
function M.with_lock(inst, fn, read_only)
    if read_only and not cm.fs.exists(inst.run_dir) then return fn(nil) end
    local ok, err = inst:ensure_dirs()
    if not ok then
        ui.error("%s", err)
        return EXIT_FAIL
    end
    local lock, lerr, lcode = cm.fs.lock(inst.cmd_lock_file, { timeout = CMD_LOCK_WAIT_MS })
    if not lock then
        if lcode == "busy" then
            ui.error("another command is still working on %s", inst.root)
        else
            ui.error("cannot lock %s: %s", inst.cmd_lock_file, lerr)
        end
        return EXIT_FAIL
    end
    -- fn may release the lock early (start does, once the supervisor holds
    -- run/lock); unlocking twice is harmless.
    local results = table.pack(pcall(fn, lock))
    lock:unlock()
    if not results[1] then error(results[2], 0) end
    return table.unpack(results, 2, results.n)
end

local function read_supervisor_pid(inst)
    local text = cm.fs.read(inst.supervisor_pid_file, 64)
    return text and math.tointeger(tonumber(text:match("%d+")))
end

-- The supervisor's PID when it is alive and provably ours.  When
-- run/supervisor.pid could not be written (a full disk) while run/lock is
-- held, it is the marked process whose parent is not marked (the app and
-- the helpers are its children) and whose command line is exactly the one a
-- supervisor is started with: this executable, --root, then `_supervise` or
-- `run` (an app's own `npm run x` or `uv run ...` is not it).
function M.supervisor_pid(inst)
    if not inst:supervisor_alive() then return nil end
    local pid = read_supervisor_pid(inst)
    if pid and cm.proc.has_marker(pid, instance_mod.MARKER, inst.id) then return pid end
    local exe = cm.sys.exe()
    local marked, by_pid = inst:marked_processes(), {}
    for _, p in ipairs(marked) do by_pid[p.pid] = p end
    for _, p in ipairs(marked) do
        local cmd = p.cmdline or {}
        if not by_pid[p.ppid] and cmd[1] == exe and cmd[2] == "--root" and
            (cmd[4] == "_supervise" or cmd[4] == "run") then
            return p.pid
        end
    end
    return nil
end

-- Pre-flight checks of `start`: the app's program, its script and the venv.
local function check_app(launch)
    local cwd_st = cm.fs.stat(launch.cwd)
    if not cwd_st or cwd_st.type ~= "dir" then
        return nil, ("app directory not found: %s"):format(launch.cwd)
    end
    local prog = launch.argv[1]
    local resolved = prog:find("/") and (prog:sub(1, 1) == "/" and prog or launch.cwd .. "/" .. prog)
    if not require("app").find_program(resolved or prog, launch.env.PATH, launch.cwd) then
        return nil, ("%s not found%s"):format(prog,
            launch.venv and (" (also looked in %s/bin)"):format(launch.venv) or " in PATH")
    end
    for i = 2, #launch.argv do
        local a = launch.argv[i]
        if a:match("%.py$") and not a:find("^%-") then
            local path = a:sub(1, 1) == "/" and a or launch.cwd .. "/" .. a
            if not cm.fs.exists(path) then
                return nil, ("%s not found in %s"):format(a, launch.cwd)
            end
        end
    end
    return true
end

local function show_log_tail(path, n)
    if not path then return end
    local lines = instance_mod.tail(path, n)
    if #lines == 0 then return end
    ui.say("Last lines of %s:", path)
    for _, l in ipairs(lines) do ui.say("  %s", l) end
end

-- Checks the backends (all at once) and lets the fallback policy choose the
-- backend the app starts with.  A fallback is runtime state: the app is
-- given it through run/app-config.json, config.json is left as it is.
-- Never fatal: the old script only warned.  Returns the serving backend
-- when it differs from the configured one, and why.
local function check_backends_at_start(settings)
    local backends = require("backends")
    local results = backends.check_all(settings)
    local active = settings:get("backend.active")
    local fallback = require("policy.fallback")
    local health = {}
    for name, r in pairs(results) do health[name] = r.healthy end
    local decision, policy_err = fallback.evaluate(settings, fallback.context(settings, {
        health = health, why = "start", order = backends.names(settings.root, settings),
    }))
    if policy_err then
        -- a refused file is the user's to fix (chmod), not a passing failure
        local report = policy_err:find(": not run (", 1, true) and ui.error or ui.warn
        report("user policy failed: %s", policy_err)
    end
    local serving, reason
    if decision.action == "switch" and decision.to ~= active then
        ui.info("Starting with backend '%s' instead of '%s' (config.json unchanged): %s",
            decision.to, active, decision.reason or "")
        serving, reason = decision.to, decision.reason
    end
    backends.print_section(settings, results, { serving = serving })
    local used = serving or active
    if results[used] and results[used].healthy ~= true then
        ui.warn("Backend '%s' is not healthy - some features may not work", used)
    end
    return serving, reason
end

-- A start in a directory without an app fails before creating anything.
function M.check_root(settings, inst)
    if inst:holds_app(settings.path) then return true end
    ui.error("no Chat-O-Llama app in %s (neither app.py nor %s): run chat-manager from " ..
        "the checkout, put it there, or give --root DIR", inst.root, settings.path)
    return false
end

-- start [port]: exit 0 when the app answers, 1 when it could not start.
function M.start(ctx, port_arg)
    local settings, inst = M.load(ctx)
    if not settings then return EXIT_FAIL end
    local port, perr = settings:port(port_arg)
    if not port then
        ui.error("%s", perr)
        return EXIT_USAGE
    end
    if not M.check_root(settings, inst) then return EXIT_FAIL end
    return M.with_lock(inst, function(lock) return M.start_locked(ctx, settings, inst, port, lock) end)
end

-- What `start` shows while it waits: on a terminal one line, rewritten,
-- with the time waited of start_timeout and what it waits for; otherwise
-- (a log, a pipe) a line every 5 s.
local function start_progress(settings, port, timeout, t0)
    local path = settings:get("manager.health_path")
    local what = path and ("http://127.0.0.1:%d%s to answer 2xx"):format(port, path)
        or ("the app to answer on port %d"):format(port)
    -- A line redrawn in place is for a person at a terminal, never --json.
    local tty = cm.sys.isatty(1) and not ui.collecting
    local shown = false
    local p = { every_ms = tty and 200 or 5000 }
    function p.show()
        local waited = (cm.time.now() - t0) / 1000
        if tty then
            io.stdout:write(("\r\27[K%s Waiting for %s: %.1f s of %g s"):format(
                ui.paint("blue", "[INFO]"), what, waited, timeout)):flush()
            shown = true
        else
            ui.info("Still waiting for %s (%d s of %g s)", what, math.floor(waited + 0.5), timeout)
            io.stdout:flush()
        end
    end
    function p.done()
        if shown then io.stdout:write("\r\27[K"):flush() end
    end
    return p
end

-- With `lock` (run/cmd.lock) held; released as soon as the supervisor holds
-- run/lock, so that a `stop` during a long start is not kept waiting.
function M.start_locked(ctx, settings, inst, port, lock)
    if inst:supervisor_alive() then
        local st = inst:read_state() or {}
        ui.warn("Chat-O-Llama is already running (PID %s, port %s)", tostring(st.pid or "?"),
            tostring(st.port or "?"))
        return EXIT_FAIL
    end
    local app = inst:app(settings)
    if app and app.alive then
        ui.warn("Chat-O-Llama is already running %s (PID %d); " ..
            "use 'chat-manager restart' to put it under supervision",
            app.adopted and "(started outside chat-manager, not supervised)" or "without its supervisor",
            app.pid)
        return EXIT_FAIL
    end
    if app and app.unproven then
        M.warn_unproven(inst, app)
        return EXIT_FAIL
    end
    if app and cm.fs.exists(inst.pid_file) then
        ui.warn("Removing stale PID file (PID %d is not running)", app.pid)
        cm.fs.remove(inst.pid_file)
    end
    if not cm.net.port_free(port) then
        local owner = cm.net.port_owner(port)
        if owner then
            ui.error("Port %d is already in use by PID %d (%s)", port, owner.pid, owner.name)
        else
            ui.error("Port %d is already in use", port)
        end
        return EXIT_FAIL
    end
    local ok, err = require("venv").prepare(settings, inst)
    if not ok then
        ui.error("%s", err)
        return EXIT_FAIL
    end
    local launch = require("app").launch(settings, inst, port)
    ok, err = check_app(launch)
    if not ok then
        ui.error("%s", err)
        return EXIT_FAIL
    end
    if launch.venv then ui.info("Using virtual environment: %s", launch.venv) end
    local serving, serving_reason = check_backends_at_start(settings)

    ui.info("Starting Chat-O-Llama on port %d...", port)
    local t0 = cm.time.now()
    local rfd, wfd = cm.proc.pipe()
    local out_fd = assert(cm.fs.open_append(inst.run_dir .. "/supervisor.log"))
    local env = cm.sys.environ()
    env.CHAT_MANAGER_READY_FD = "3"
    env[instance_mod.MARKER] = inst.id
    local exe = assert(cm.sys.exe())
    local child, serr = cm.proc.spawn({
        argv = { exe, "--root", inst.root, "_supervise", tostring(port), serving, serving_reason },
        env = env, cwd = inst.root, detach = true, new_session = true,
        stdout_fd = out_fd, stderr_fd = out_fd, extra_fds = { wfd },
    })
    cm.fs.close(wfd)
    cm.fs.close(out_fd)
    if not child then
        cm.fs.close(rfd)
        ui.error("cannot launch the supervisor: %s", serr)
        return EXIT_FAIL
    end
    -- The supervisor writes "locked" once it holds run/lock, then "ready
    -- ..." or "failed ...".
    local timeout = settings:get("manager.start_timeout")
    local deadline = t0 + (timeout + 10) * 1000
    local progress = start_progress(settings, port, timeout, t0)
    local buffer, line = "", ""
    while true do
        local nl = buffer:find("\n")
        if nl then
            line, buffer = buffer:sub(1, nl - 1), buffer:sub(nl + 1)
            if line ~= "locked" then break end
            if lock then lock:unlock() end
        else
            local left = math.max(0, math.floor(deadline - cm.time.now()))
            local data, _, code = cm.proc.read_fd(rfd, math.min(left, progress.every_ms))
            if data then
                buffer = buffer .. data
            elseif code ~= "timeout" or left == 0 then
                line = buffer
                break
            else
                progress.show()
            end
        end
    end
    progress.done()
    cm.fs.close(rfd)
    local total = math.floor(cm.time.now() - t0 + 0.5)
    local state = inst:read_state() or {}
    if line:match("^ready") then
        local pid = line:match("pid=(%d+)")
        local ms = line:match("ms=(%d+)")
        ui.info("Chat-O-Llama started successfully (PID %s) in %s ms", pid, ms or total)
        ui.result("pid", math.tointeger(tonumber(pid)))
        ui.result("port", port)
        ui.result("url", ("http://localhost:%d"):format(port))
        ui.result("ready_ms", math.tointeger(tonumber(ms or total)))
        ui.result("log", line:match("log=(%S+)") or state.log)
        ui.say("  Port:     %d", port)
        ui.say("  URL:      http://localhost:%d", port)
        ui.say("  Log file: %s", line:match("log=(%S+)") or state.log or "?")
        return EXIT_OK
    end
    local reason = line:match("^failed (.-)%s*$") or "the supervisor exited unexpectedly"
    if reason:match("^the app listens on ") then
        ui.error("%s", reason)
    else
        ui.error("Chat-O-Llama failed to start: %s", reason)
    end
    ui.result("reason", reason)
    ui.result("log", state.log or inst:newest_log())
    show_log_tail(state.log or inst:newest_log(), 10)
    if line == "" then show_log_tail(inst.run_dir .. "/supervisor.log", 5) end
    return EXIT_FAIL
end

-- Waits for `done` (a task) while printing a dot a second, like the old
-- script's progress indicator.
local function with_dots(fn)
    local timer = cm.time.timer(1000, 1000, function() ui.progress(".") end)
    local results = table.pack(fn())
    timer:stop()
    return table.unpack(results, 1, results.n)
end

-- Signals a verified app (instance.app()): its group when it leads one,
-- else only the process itself.
local function signal_app(app, sig)
    if app.pgid then return cm.proc.kill_group(app.pgid, sig) end
    return cm.proc.kill(app.pid, sig)
end

local function wait_app(app, ms)
    if app.pgid then return cm.proc.wait_group(app.pgid, ms) end
    return cm.proc.wait_exit(app.pid, ms)
end

-- Stops an app whose supervisor is gone, from the pid file and /proc.
local function stop_unsupervised(settings, inst, app)
    ui.info("Stopping Chat-O-Llama (PID %d, no supervisor)...", app.pid)
    -- CONT first (a stopped app cannot act on TERM), never after: see
    -- actions.term_group in lua/supervisor.lua.
    signal_app(app, "CONT")
    signal_app(app, "TERM")
    local grace = settings:get("manager.stop_timeout") * 1000
    local gone = with_dots(function() return wait_app(app, grace) end)
    if not gone then
        ui.warn("still running after %g s: sending SIGKILL", grace / 1000)
        signal_app(app, "KILL")
        gone = wait_app(app, 5000)
    end
    return gone
end

-- process.pid names a live process that is not provably this checkout's
-- app: it is left alone, and so is the pid file.
function M.warn_unproven(inst, app)
    ui.error("process.pid names PID %d, which is running but is not provably this checkout's app: " ..
        "%s; left alone (remove %s if that process is not the app)", app.pid, app.unproven,
        inst.pid_file)
end

-- The processes of an adopted app that does not lead its own group, still
-- alive and the same (start time).
local function live_members(tree)
    local left = {}
    for _, p in ipairs(tree) do
        local info = cm.proc.info(p.pid)
        if info and info.state ~= "Z" and info.start_time == p.start_time then left[#left + 1] = p end
    end
    return left
end

-- Signals an app started outside chat-manager: its group when it leads
-- one, else it and its descendants (found before the first signal).
-- Returns a function that waits (at most ms) until they are all gone.
local function signal_adopted(app, sig, tree)
    if app.pgid then
        signal_app(app, sig)
        return function(ms) return wait_app(app, ms) end
    end
    for _, p in ipairs(live_members(tree)) do cm.proc.kill(p.pid, sig) end
    return function(ms)
        local deadline = cm.time.now() + ms
        for _, p in ipairs(tree) do
            if not cm.proc.wait_exit(p.pid, math.max(0, deadline - cm.time.now())) then
                return #live_members(tree) == 0
            end
        end
        return true
    end
end

-- Stops the old script's app (adopted): TERM, KILL after stop_timeout.
local function stop_adopted(settings, app)
    ui.info("Stopping Chat-O-Llama (PID %d, started outside chat-manager)...", app.pid)
    local tree = app.pgid and {} or instance_mod.process_tree(app.pid)
    signal_adopted(app, "CONT", tree) -- first: see stop_unsupervised
    local wait = signal_adopted(app, "TERM", tree)
    local grace = settings:get("manager.stop_timeout") * 1000
    local gone = with_dots(function() return wait(grace) end)
    if not gone then
        ui.warn("still running after %g s: sending SIGKILL", grace / 1000)
        gone = signal_adopted(app, "KILL", tree)(5000)
    end
    return gone
end

-- Marked processes left over (not in the app's group): TERM, then KILL.
local function stop_orphans(inst)
    local orphans = inst:marked_processes()
    if #orphans == 0 then return 0 end
    for _, p in ipairs(orphans) do
        ui.warn("Stopping orphaned process %d (%s)", p.pid, p.name)
        cm.proc.kill(p.pid, "TERM")
    end
    for _, p in ipairs(orphans) do
        if not cm.proc.wait_exit(p.pid, 2000) then cm.proc.kill(p.pid, "KILL") end
    end
    return #orphans
end

function M.stop_locked(ctx, settings, inst)
    local sup = M.supervisor_pid(inst)
    local stopped_something = false
    if sup then
        local st = inst:read_state() or {}
        ui.info("Stopping Chat-O-Llama (PID %s)...", tostring(st.pid or "-"))
        -- A SIGSTOPped supervisor would keep the TERM pending forever, so
        -- CONT, and before the TERM (see actions.term_group).
        cm.proc.kill(sup, "CONT")
        cm.proc.kill(sup, "TERM")
        local limit = (settings:get("manager.stop_timeout") + 10) * 1000
        local gone = with_dots(function() return cm.proc.wait_exit(sup, limit) end)
        if not gone then
            ui.error("the supervisor (PID %d) did not stop within %g s", sup, limit / 1000)
            return EXIT_FAIL
        end
        stopped_something = true
    end
    -- No supervisor (any more): whatever it left behind is handled here, so
    -- a supervisor that died in the middle of a stop is finished off too.
    local app = inst:app(settings)
    if app and app.unproven then
        M.warn_unproven(inst, app)
        return EXIT_FAIL
    end
    if app and app.alive then
        if sup then ui.warn("the supervisor ended before the app did") end
        local stopped
        if app.adopted then
            stopped = stop_adopted(settings, app)
        else
            stopped = stop_unsupervised(settings, inst, app)
        end
        if not stopped then
            ui.error("could not stop PID %d", app.pid)
            return EXIT_FAIL
        end
        stopped_something = true
    elseif app and not sup and cm.fs.exists(inst.pid_file) then
        ui.warn("Removing stale PID file (PID %d is not running)", app.pid)
    end
    -- run/state.json is the supervisor's alone: without a supervisor holding
    -- run/lock, readers take a live state in it for the last one it wrote.
    cm.fs.remove(inst.pid_file)
    if stop_orphans(inst) > 0 then stopped_something = true end
    ui.result("stopped", stopped_something)
    if stopped_something then
        ui.progress("\n")
        ui.info("Chat-O-Llama stopped")
    else
        ui.info("Chat-O-Llama is not running")
    end
    return EXIT_OK
end

function M.stop(ctx)
    local settings, inst = M.load(ctx)
    if not settings then
        -- A broken config must not prevent stopping: use the defaults.
        settings = settings_mod.defaults_only(ctx.root)
        inst = instance_mod.new(ctx.root)
    end
    return M.with_lock(inst, function() return M.stop_locked(ctx, settings, inst) end, true)
end

-- A supervisor in the foreground (`run`) is the process a service manager
-- or a container watches: restart asks it to restart the app (HUP) rather
-- than ending it, and waits until the app runs again (a new PID) or fails.
local function restart_in_place(settings, inst, sup, port)
    local st = inst:read_state() or {}
    if port ~= st.port then
        ui.error("the supervisor (PID %d) runs in the foreground ('run') on port %s: " ..
            "restart its service to change the port", sup, tostring(st.port))
        return EXIT_FAIL
    end
    local old = st.pid
    ui.info("Restarting Chat-O-Llama (PID %s) in its supervisor (PID %d)...", tostring(old or "-"), sup)
    local watcher = cm.fs.watch(inst.run_dir)
    cm.proc.kill(sup, "HUP")
    local limit = (settings:get("manager.stop_timeout") + settings:get("manager.start_timeout") + 10) * 1000
    local deadline = cm.time.now() + limit
    local code, why = nil, nil
    repeat
        st = inst:read_state() or {}
        if st.state == "running" and st.pid and st.pid ~= old then
            code = EXIT_OK
        elseif st.state == "failed" then
            code, why = EXIT_FAIL, st.last_exit and st.last_exit.text or "failed"
        elseif not cm.proc.alive(sup) then
            code, why = EXIT_FAIL, "the supervisor ended"
        elseif cm.time.now() >= deadline then
            code, why = EXIT_FAIL, ("not running again within %g s"):format(limit / 1000)
        else
            -- state.json is replaced by a rename: a change in run/ wakes us.
            local wait_ms = math.min(500, deadline - cm.time.now())
            if watcher then watcher:wait(wait_ms) else cm.time.sleep(wait_ms) end
        end
    until code
    if watcher then watcher:close() end
    if code ~= EXIT_OK then
        ui.error("Chat-O-Llama failed to restart: %s", why)
        show_log_tail(st.log or inst:newest_log(), 10)
        return code
    end
    ui.info("Chat-O-Llama restarted (PID %d) in %s ms", st.pid, tostring(st.ready_ms or "?"))
    return EXIT_OK
end

function M.restart(ctx, port_arg)
    local settings, inst = M.load(ctx)
    if not settings then return EXIT_FAIL end
    local port, perr
    if port_arg then
        port, perr = settings:port(port_arg)
        if not port then
            ui.error("%s", perr)
            return EXIT_USAGE
        end
    else
        -- The port of the last start, unless that start never got the app
        -- answering on it (a failed `start PORT` must not stick).
        local st = inst:read_state()
        port = st and math.tointeger(st.port) and st.ready_ms and st.port or settings:port()
    end
    if not M.check_root(settings, inst) then return EXIT_FAIL end
    return M.with_lock(inst, function()
        local sup = M.supervisor_pid(inst)
        if sup and (inst:read_state() or {}).foreground then
            return restart_in_place(settings, inst, sup, port)
        end
        local code = M.stop_locked(ctx, settings, inst)
        if code ~= EXIT_OK then return code end
        settings = settings_mod.load(ctx.root)
        if not settings then
            ui.error("config became invalid; not starting")
            return EXIT_FAIL
        end
        return M.start_locked(ctx, settings, inst, port)
    end)
end

-- force-stop: KILL at once the supervisor, the app's group and every
-- process carrying this instance's marker; name, but never touch, the
-- others found on the common ports.
function M.force_stop(ctx)
    -- A broken config must not hide the old script's app: the defaults.
    local settings = settings_mod.load(ctx.root) or settings_mod.defaults_only(ctx.root)
    local inst = instance_mod.new(ctx.root)
    local killed = 0
    local sup = M.supervisor_pid(inst)
    if sup then
        cm.proc.kill(sup, "KILL")
        killed = killed + 1
    end
    local app = inst:app(settings)
    local wait_adopted
    if app and app.adopted then
        wait_adopted = signal_adopted(app, "KILL", app.pgid and {} or instance_mod.process_tree(app.pid))
        killed = killed + 1
    elseif app and app.alive then
        signal_app(app, "KILL")
        killed = killed + 1
    elseif app and app.unproven then
        M.warn_unproven(inst, app)
    end
    for _, p in ipairs(inst:marked_processes()) do
        ui.warn("Killing PID %d (%s)", p.pid, p.name)
        cm.proc.kill(p.pid, "KILL")
        killed = killed + 1
    end
    if sup then cm.proc.wait_exit(sup, 5000) end
    if wait_adopted then
        wait_adopted(5000)
    elseif app and app.alive then
        wait_app(app, 5000)
    end
    local ports = {}
    for _, p in ipairs(instance_mod.COMMON_PORTS) do ports[#ports + 1] = p end
    if settings then ports[#ports + 1] = settings:get("server.port") end
    local seen = {}
    for _, port in ipairs(ports) do
        if not seen[port] then
            seen[port] = true
            local owner = cm.net.port_owner(port)
            if owner and not cm.proc.has_marker(owner.pid, instance_mod.MARKER, inst.id) then
                ui.warn("Port %d is used by PID %d (%s), which is not this instance's: left alone",
                    port, owner.pid, owner.name)
            end
        end
    end
    if not (app and app.unproven) then cm.fs.remove(inst.pid_file) end
    ui.result("killed", killed)
    if killed > 0 then
        ui.info("Force stop complete (%d killed)", killed)
    else
        ui.info("Nothing to stop")
    end
    return EXIT_OK
end

return M
