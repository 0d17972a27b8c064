-- backend status | list | health [name] | switch <name> [--restart]: the old
-- manager's backend commands, over the backend registry (lua/backends.lua).

local ui = require("ui")
local settings_mod = require("settings")
local backends = require("backends")

local EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

local subcommands = {
    { usage = "backend status", summary = "check every backend at once and show their health" },
    { usage = "backend list", summary = "the same as backend status" },
    { usage = "backend switch <name> [--restart]", summary = "make <name> the active backend (config.json)" },
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

local function status(ctx, args)
    if #args > 0 then return usage_error("backend status takes no arguments") end
    local s = load_settings(ctx)
    if not s then return EXIT_FAIL end
    local results = backends.check_all(s)
    if ctx.json then
        local out = {}
        for name, r in pairs(results) do out[name] = backends.to_json(r) end
        ui.json({ active = s:get("backend.active"), order = backends.names(ctx.root, s), backends = out })
    else
        backends.print_section(s, results)
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
        local mod = backends.get(ctx.root, name)
        if type(mod.details) == "function" then
            local ok, lines = pcall(mod.details, r)
            if ok and type(lines) == "table" then
                for _, line in ipairs(lines) do ui.say("    %s", tostring(line)) end
            end
        end
        local hints = backends.hint_lines(r)
        if r.healthy ~= true and #hints > 0 then
            ui.say("Troubleshooting:")
            for _, line in ipairs(hints) do ui.say("  - %s", line) end
        end
    end
    return r.healthy == true and EXIT_OK or EXIT_FAIL
end

local function switch(ctx, args)
    local name, restart
    for _, a in ipairs(args) do
        if a == "--restart" then
            restart = true
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
    if s:get("backend.active") == name then
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
    local ok, err = backends.switch(s, name)
    if not ok then
        ui.error("Failed to switch backend: %s", tostring(err))
        return EXIT_FAIL
    end
    ui.info("Switched to backend '%s'", name)
    ui.result("switched", true)
    local restart_cmd = ctx.commands and ctx.commands.restart
    if restart then
        if restart_cmd then return restart_cmd.run(ctx, {}) end
        ui.warn("no restart command is available")
    end
    ui.say("Restart the application to apply: chat-manager restart")
    return EXIT_OK
end

local handlers = { status = status, list = status, health = health, switch = switch }

return {
    name = "backend",
    usage = "backend status|list|health [name]|switch <name> [--restart]",
    summary = "show, check and switch the LLM backends",
    group = "backend",
    json = "outcome",
    arguments = {
        { "status | list", "check every backend at once" },
        { "health [name]", "check one backend (the active one by default); exit 1 if unhealthy" },
        { "switch <name>", "make <name> the active backend in config.json" },
    },
    options = { { "--restart", "backend switch: restart the app afterwards" } },
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
