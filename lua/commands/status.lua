-- status: what the supervisor, the pid file and /proc say, plus the
-- backends.  Exit codes follow LSB: 0 running, 1 dead but pid file exists,
-- 3 not running, 4 unknown.

local ui = require("ui")
local instance_mod = require("instance")
local settings_mod = require("settings")
local control = require("control")

local LSB_RUNNING, LSB_DEAD_PIDFILE, LSB_NOT_RUNNING, LSB_UNKNOWN = 0, 1, 3, 4

local function format_duration(s)
    s = math.floor(s)
    if s < 60 then return ("%ds"):format(s) end
    if s < 3600 then return ("%dm %ds"):format(s // 60, s % 60) end
    if s < 86400 then return ("%dh %dm"):format(s // 3600, (s % 3600) // 60) end
    return ("%dd %dh"):format(s // 86400, (s % 86400) // 3600)
end

-- Gathers everything status reports, without printing.
local function collect(ctx)
    local inst = instance_mod.new(ctx.root)
    local settings, cfg_err = settings_mod.load(ctx.root)
    local report = { root = ctx.root, config_error = cfg_err }
    local sup = control.supervisor_pid(inst)
    local app, st = inst:app(settings or settings_mod.defaults_only(ctx.root))
    st = st or {}
    report.supervised = sup ~= nil
    report.supervisor_pid = sup
    report.state = st.state or "stopped"
    report.port = st.port or (settings and settings:get("server.port")) or settings_mod.DEFAULT_PORT
    report.log = st.log or inst:newest_log()
    report.restarts = st.restarts or 0
    report.last_exit = st.last_exit
    report.retry_at = st.retry_at
    report.log_error = sup and st.log_error or nil
    if sup and st.state == nil and app and app.alive then
        -- run/state.json could not be written (a full disk) or is corrupt:
        -- the live supervisor's app, found through process.pid
        report.state = "running"
        st.pid = app.pid
    end
    if sup then
        report.pid = st.pid
        if st.state == "running" and st.since then report.uptime_s = cm.time.wall() - st.since end
        report.code = (st.state == "failed") and LSB_DEAD_PIDFILE or LSB_RUNNING
    elseif app and app.alive then
        report.state = "running"
        report.pid = app.pid
        report.unsupervised = true
        report.adopted = app.adopted
        report.code = LSB_RUNNING
    elseif app and app.unproven then
        -- Running, but perhaps not the app: never "not running".
        report.state = "unknown"
        report.pid = app.pid
        report.unproven = app.unproven
        report.code = LSB_UNKNOWN
    elseif app and cm.fs.exists(inst.pid_file) then
        report.state = "dead"
        report.pid = app.pid
        report.code = LSB_DEAD_PIDFILE
    else
        if report.state ~= "failed" then report.state = "stopped" end
        report.code = LSB_NOT_RUNNING
    end
    report.url = ("http://localhost:%d"):format(report.port)
    if report.state == "running" and report.pid then
        report.usage = require("usage").collect((app and app.pgid) or report.pid, sup,
            sup and (inst.run_dir .. "/usage.json"))
    end
    -- With a live supervisor, its record of this root's older processes;
    -- without one (or before it has looked), every process's environment.
    local marked = {}
    if sup and type(st.leftovers) == "table" then
        for _, l in ipairs(st.leftovers) do
            local info = type(l) == "table" and math.type(l.pid) and cm.proc.info(l.pid)
            if info and info.state ~= "Z" and info.start_time == l.start_time then
                marked[#marked + 1] = info
            end
        end
    else
        marked = inst:marked_processes()
    end
    local orphans = cm.json.array()
    for _, p in ipairs(marked) do
        -- The app's group, the supervisor and its helpers (probe, checks).
        local own = (report.pid and p.pgid == report.pid) or p.pid == sup or (sup and p.ppid == sup)
        if not own then orphans[#orphans + 1] = { pid = p.pid, name = p.name } end
    end
    report.orphans = orphans
    if settings then
        report.active_backend = settings:get("backend.active")
        -- The running app's own view, asked while the backends are looked at.
        local appapi = require("appapi")
        local app_task = report.pid and report.state == "running" and cm.task.spawn(appapi.observe, settings)
        -- A check younger than health_check_interval (the supervisor's
        -- periodic one, or a command's) is shown with its age; else check
        -- now.  With a supervisor, one interval of slack covers its timing.
        local backends = require("backends")
        local interval = settings:get("backend.health_check_interval")
        report.backends, report.backends_age_s = backends.recall(settings,
            sup and 2 * interval or interval)
        if not report.backends then report.backends = backends.check_all(settings) end
        local joined, app
        if app_task then joined, app = app_task:join() end
        local f = appapi.fields(settings, joined and app or nil)
        report.configured_backend, report.serving_backend = f.configured, f.serving
        report.backend_explanation, report.app_backends = f.explain, f.app
    end
    return report, settings
end

local function print_report(r, settings)
    if r.state == "running" then
        ui.info("Chat-O-Llama is running%s", r.adopted and " (started outside chat-manager, not supervised)"
            or r.unsupervised and " (its supervisor is gone)" or "")
    elseif r.unproven then
        ui.warn("process.pid names PID %d, which is running but is not provably this checkout's app: %s",
            r.pid, r.unproven)
    elseif r.state == "dead" then
        ui.warn("Chat-O-Llama is not running, but process.pid names PID %d", r.pid)
    elseif r.state == "failed" then
        ui.error("Chat-O-Llama has failed%s",
            r.last_exit and (": " .. tostring(r.last_exit.text)) or "")
    elseif r.state == "stopped" then
        ui.info("Chat-O-Llama is not running")
    else
        ui.info("Chat-O-Llama is %s", r.state)
    end
    ui.say("  Root:       %s", r.root)
    if r.pid then ui.say("  PID:        %d", r.pid) end
    if r.state ~= "stopped" then
        ui.say("  Port:       %d", r.port)
        ui.say("  URL:        %s", r.url)
    end
    if r.supervisor_pid then ui.say("  Supervisor: %d", r.supervisor_pid) end
    if r.uptime_s then ui.say("  Uptime:     %s", format_duration(r.uptime_s)) end
    if r.restarts > 0 then ui.say("  Restarts:   %d", r.restarts) end
    if r.usage then
        for _, line in ipairs(require("usage").lines(r.usage)) do ui.say("%s", line) end
    end
    if r.retry_at and r.state == "failed" then
        ui.say("  Next retry: in %ds", math.max(0, math.floor(r.retry_at - cm.time.wall())))
    end
    if r.adopted then
        ui.say("  (no restarts or health checks; 'chat-manager restart' puts it under supervision)")
    elseif r.unsupervised then
        ui.warn("the app runs without its supervisor: no restarts or health checks; " ..
            "'chat-manager restart' puts it back under supervision")
    end
    if r.log then
        ui.say("  Log file:   %s", r.log)
        local lines = instance_mod.tail(r.log, 5)
        if #lines > 0 then
            ui.say("Recent log entries:")
            for _, l in ipairs(lines) do ui.say("  %s", l) end
        end
    end
    for _, o in ipairs(r.orphans) do
        ui.warn("Orphaned process of this instance: PID %d (%s); 'chat-manager stop' cleans it up",
            o.pid, o.name)
    end
    if r.config_error then ui.warn("%s", r.config_error) end
    if r.log_error then ui.warn("the session log cannot be written: %s", r.log_error) end
    if r.backends and settings then
        ui.say("")
        if r.backends_age_s then
            ui.say("Backends (checked %ds ago):", math.floor(r.backends_age_s))
        end
        require("backends").print_section(settings, r.backends, { serving = r.serving_backend,
            source = "the app says", explain = r.backend_explanation })
    end
end

return {
    name = "status",
    usage = "status",
    max_args = 0,
    summary = "show the app's state, PID, port, uptime, log and backends",
    group = "app",
    json = "own",
    description = "Exit codes follow LSB: 0 running, 1 dead but the pid file exists (or failed), 3 not running, 4 unknown.  Shows CPU, memory, open files and threads of the app's process group.",
    example = "chat-manager status --json",
    run = function(ctx)
        local ok, report, settings = pcall(collect, ctx)
        if not ok then
            ui.error("cannot determine the status: %s", report)
            return LSB_UNKNOWN
        end
        if ctx.json then
            report.exit_code = report.code
            if report.backends then
                local backends = require("backends")
                for name, r in pairs(report.backends) do report.backends[name] = backends.to_json(r) end
            end
            ui.json(report)
        else
            print_report(report, settings)
        end
        return report.code
    end,
}
