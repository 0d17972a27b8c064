-- help: usage generated from the command registry, grouped like the old
-- manager's help.

local function pad(s, n)
    return s .. string.rep(" ", math.max(1, n - utf8.len(s)))
end

local groups = {
    { id = "app", title = "Application commands" },
    { id = "backend", title = "Backend commands" },
    { id = "other", title = "Other commands" },
    { id = "user", title = "Your commands (<root>/commands/)" },
}

-- The old manager's order for the built-ins; other commands follow by name.
local preferred = { "start", "stop", "restart", "force-stop", "status", "logs", "run", "backend",
                    "help" }

local function help_order(order)
    local rank = {}
    for i, name in ipairs(preferred) do rank[name] = i end
    local sorted = table.move(order, 1, #order, 1, {})
    table.sort(sorted, function(a, b)
        local ra, rb = rank[a] or math.huge, rank[b] or math.huge
        if ra ~= rb then return ra < rb end
        return a < b
    end)
    return sorted
end

local function run(ctx, _, out)
    out = out or io.stdout
    local commands, order = require("cli").registry(ctx.root)
    local lines = {}
    local function add(s) lines[#lines + 1] = s end
    add("Chat-O-Llama process manager")
    add("")
    add("Usage: chat-manager <command> [arguments] [--root DIR] [--json] [--no-color]")
    for _, g in ipairs(groups) do
        local rows = {}
        for _, name in ipairs(help_order(order)) do
            local cmd = commands[name]
            if (cmd.group or "other") == g.id and not cmd.hidden then
                if cmd.subcommands then
                    for _, sub in ipairs(cmd.subcommands) do rows[#rows + 1] = sub end
                else
                    rows[#rows + 1] = { usage = cmd.usage or cmd.name, summary = cmd.summary or "" }
                end
            end
        end
        if #rows > 0 then
            add("")
            add(g.title .. ":")
            for _, r in ipairs(rows) do add("  " .. pad(r.usage, 36) .. r.summary) end
        end
    end
    add("")
    add("Options:")
    add("  " .. pad("--root DIR", 36) .. "instance directory (else $CHAT_MANAGER_ROOT, else .)")
    add("  " .. pad("--json", 36) .. "machine-readable output (status, backend status/health)")
    add("  " .. pad("--no-color", 36) .. "no colours (also NO_COLOR, or when not a terminal)")
    add("")
    add("Files (in the root):")
    add("  " .. pad("config.json", 36) .. "configuration ($CONFIG_FILE overrides the path)")
    add("  " .. pad("process.pid", 36) .. "PID of the running app")
    add("  " .. pad("logs/chat-o-llama_*.log", 36) .. "one log per start")
    add("  " .. pad("models/", 36) .. "GGUF models for llama.cpp")
    add("  " .. pad("run/", 36) .. "supervisor state, pid and lock")
    add("")
    add("Exit codes: 0 ok, 1 failed, 2 usage error; status: 0 running, 1 dead with pid file,")
    add("3 not running, 4 unknown.")
    out:write(table.concat(lines, "\n"), "\n")
    return 0
end

return {
    name = "help",
    usage = "help",
    summary = "show this help (also --help, -h)",
    group = "other",
    run = run,
}
