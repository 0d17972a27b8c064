-- backend status | list | health [name] | switch <name> [--restart] [--force]:
-- the old manager's backend commands, over the backend registry
-- (lua/backends.lua), and the running app's own backend endpoints
-- (lua/appapi.lua).

local ui = require("ui")
local settings_mod = require("settings")
local backends = require("backends")
local appapi = require("appapi")

local EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

local subcommands = {
    { usage = "backend status", summary = "check every backend at once and show their health" },
    { usage = "backend list", summary = "the same as backend status" },
    { usage = "backend switch <name> [--restart] [--force]",
      summary = "make <name> the active backend (config.json) and switch the running app to it live" },
    { usage = "backend health [name]", summary = "check one backend (the active one by default); exit 1 if unhealthy" },
}

local function usage_error(fmt, ...)
    ui.error(fmt, ...)
    local lines = { "Usage:" }
    for _, s in ipairs(subcommands) do lines[#lines + 1] = "  chat-manager " .. s.usage end
    io.stderr:write(table.concat(lines, "\n"), "\n")
    return EXIT_USAGE
end

local function load_settings(ctx)
    local s, err = settings_mod.load(ctx.root)
    if not s then ui.error("%s", err) end
    return s
end

local function unknown_backend(ctx, name, s)
    ui.error("Unknown backend: %s", tostring(name))
    io.stderr:write("Available backends: " .. table.concat(backends.names(ctx.root, s), ", ") .. "\n")
    return EXIT_USAGE
end

-- The backends' health (checked now) and the running app's own view,
-- asked at the same time.  Returns results, the app (appapi.observe).
local function check_with_app(s)
    local app_task = cm.task.spawn(appapi.observe, s)
    local results = backends.check_all(s)
    local ok, app = app_task:join()
    return results, ok and app or nil
end

local function status(ctx, args)
    if #args > 0 then return usage_error("backend status takes no arguments") end
    local s = load_settings(ctx)
    if not s then return EXIT_FAIL end
    local results, app = check_with_app(s)
    local f = appapi.fields(s, app)
    if ctx.json then
        local out = {}
        for name, r in pairs(results) do out[name] = backends.to_json(r) end
        ui.json({ active = f.configured, configured = f.configured, serving = f.serving,
                  explanation = f.explain, app = f.app,
                  order = backends.names(ctx.root, s), backends = out })
    else
        backends.print_section(s, results, { serving = f.serving, source = "the app says", explain = f.explain,
            details = true, app_models = app and app.view and app.view.models })
    end
    return EXIT_OK
end

local function health(ctx, args)
    if #args > 1 then return usage_error("backend health takes at most one backend name") end
    local s = load_settings(ctx)
    if not s then return EXIT_FAIL end
    local name = args[1] or s:get("backend.active")
    if not backends.get(ctx.root, name) then return unknown_backend(ctx, name, s) end
    local r = backends.check_all(s, { name })[name]
    if ctx.json then
        local out = backends.to_json(r)
        out.name = name
        out.active = name == s:get("backend.active")
        ui.json(out)
    else
        ui.say("%s", backends.format_line(name, r))
        for _, line in ipairs(backends.detail_lines(ctx.root, name, r)) do ui.say("    %s", line) end
        local hints = backends.hint_lines(r)
        if r.healthy ~= true and #hints > 0 then
            ui.say("Troubleshooting:")
            for _, line in ipairs(hints) do ui.say("  - %s", line) end
        end
    end
    return r.healthy == true and EXIT_OK or EXIT_FAIL
end

-- Tells the supervisor (when one runs) that the user chose `name` now, so
-- that its fallback never undoes that within the cooldown, and asks it to
-- look at once (USR1: check the backends now).
local function tell_supervisor(s, name)
    local inst = require("instance").new(s.root)
    cm.fs.write_atomic(inst.run_dir .. "/" .. appapi.USER_SWITCH_FILE,
        cm.json.encode({ backend = name, at = cm.time.wall() }) .. "\n", tonumber("600", 8), false)
    local pid = require("control").supervisor_pid(inst)
    if pid then cm.proc.kill(pid, "USR1") end
end

-- Switches the running app live (docs/design.md §6).  Returns the exit code.
local function switch_running(ctx, s, app, name, r, opts)
    if r.healthy ~= true and not opts.force then
        ui.result("live", "not_healthy")
        ui.warn("The running app (PID %d) stays on its current backend: '%s' is not healthy " ..
            "(--force switches it anyway)", app.pid, name)
        return EXIT_OK
    end
    local res = appapi.switch(s, app.port, name)
    ui.result("live", res.outcome)
    if res.outcome == "switched" or res.outcome == "already" then
        tell_supervisor(s, name)
        ui.info("The running app (PID %d) now serves with '%s': switched live, no restart", app.pid, name)
        return EXIT_OK
    end
    if res.outcome == "refused" then
        ui.error("The app refused to switch to '%s': %s", name, ui.clean(res.error))
        ui.say("It still serves with '%s'; config.json says '%s' (a restart applies it)",
            ui.clean(res.serving or "its current backend"), name)
        return EXIT_FAIL
    end
    local why = res.outcome == "off" and "live switching is off (manager.app.switch_path is null)"
        or res.outcome == "missing" and ("the app has no switch endpoint (%s)"):format(ui.clean(res.error))
        or ("the app did not answer the switch: %s"):format(ui.clean(res.error))
    local restart_cmd = ctx.commands and ctx.commands.restart
    if opts.restart and restart_cmd then
        ui.info("%s: restarting it", why)
        return restart_cmd.run(ctx, {})
    end
    ui.warn("%s", why)
    ui.say("Restart the application to apply: chat-manager restart (or backend switch %s --restart)", name)
    return EXIT_OK
end

local function switch(ctx, args)
    local name
    local opts = {}
    for _, a in ipairs(args) do
        if a == "--restart" then
            opts.restart = true
        elseif a == "--force" then
            opts.force = true
        elseif a:sub(1, 1) == "-" then
            return usage_error("unknown option for backend switch: %s", a)
        elseif name then
            return usage_error("backend switch takes one backend name")
        else
            name = a
        end
    end
    if not name then return usage_error("backend switch needs a backend name") end
    if not backends.get(ctx.root, name) then return unknown_backend(ctx, name) end

    local s = load_settings(ctx)
    if not s then return EXIT_FAIL end
    if s.missing then
        -- A switch must write the user's file, so a missing one is an error
        -- (the defaults that apply without one are not a file to edit).
        local _, err = cm.config.load(s.path)
        ui.error("Failed to switch backend: %s", tostring(err))
        return EXIT_FAIL
    end
    ui.result("backend", name)
    ui.result("previous", s:get("backend.active"))
    ui.result("switched", false)
    local app = appapi.find(s)
    local view = app and appapi.status(s, app.port)
    local configured = s:get("backend.active")
    if configured == name and not (view and view.serving and view.serving ~= name) then
        ui.info("Backend '%s' is already active", name)
        return EXIT_OK
    end

    ui.info("Checking backend '%s'...", name)
    local r = backends.check_all(s, { name })[name]
    ui.say("%s", backends.format_line(name, r))
    ui.result("healthy", r.healthy == true)
    if r.healthy ~= true then
        ui.warn("Backend '%s' is not healthy - some features may not work", name)
    end
    if configured ~= name then
        local ok, err = backends.switch(s, name)
        if not ok then
            ui.error("Failed to switch backend: %s", tostring(err))
            return EXIT_FAIL
        end
        ui.info("Switched to backend '%s'", name)
        ui.result("switched", true)
    end
    if app then return switch_running(ctx, s, app, name, r, opts) end
    local restart_cmd = ctx.commands and ctx.commands.restart
    if opts.restart then
        if restart_cmd then return restart_cmd.run(ctx, {}) end
        ui.warn("no restart command is available")
    end
    ui.say("Restart the application to apply: chat-manager restart")
    return EXIT_OK
end

local handlers = { status = status, list = status, health = health, switch = switch }

return {
    name = "backend",
    usage = "backend status|list|health [name]|switch <name> [--restart] [--force]",
    summary = "show, check and switch the LLM backends",
    group = "backend",
    json = "outcome",
    arguments = {
        { "status | list", "check every backend at once" },
        { "health [name]", "check one backend (the active one by default); exit 1 if unhealthy" },
        { "switch <name>", "make <name> the active backend in config.json and switch the running app to it live" },
    },
    options = { { "--restart", "backend switch: restart the app when it cannot switch live" },
                { "--force", "backend switch: switch the running app even to an unhealthy backend" } },
    example = "chat-manager backend switch llamacpp --restart",
    subcommands = subcommands,
    run = function(ctx, args)
        local sub = args[1]
        if sub == nil then return usage_error("backend needs a subcommand") end
        local handler = handlers[sub]
        if not handler then return usage_error("Unknown backend subcommand: %s", sub) end
        return handler(ctx, table.move(args, 2, #args, 1, {}))
    end,
}
