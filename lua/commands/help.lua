-- help [command]: usage generated from the command registry, grouped like
-- the old manager's help; with a command, that command's usage, arguments,
-- options and an example (also `<command> --help` and `-h`).

local registry = require("registry")
local ui = require("ui")

local M = {}

local function pad(s, n)
    return s .. string.rep(" ", math.max(1, n - utf8.len(s)))
end

M.groups = {
    { id = "app", title = "Application commands" },
    { id = "backend", title = "Backend commands" },
    { id = "other", title = "Other commands" },
    { id = "user", title = "Your commands (<root>/commands/)" },
}

local function overview(root)
    local lines = {}
    local function add(s) lines[#lines + 1] = s end
    add("Chat-O-Llama process manager")
    add("")
    add("Usage: chat-manager <command> [arguments] [--root DIR] [--json] [--no-color]")
    local cmds = registry.ordered(root)
    for _, g in ipairs(M.groups) do
        local rows = {}
        for _, cmd in ipairs(cmds) do
            if (cmd.group or "other") == g.id then
                for _, r in ipairs(registry.rows(cmd)) do rows[#rows + 1] = r end
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
    for _, o in ipairs(registry.GLOBAL_OPTIONS) do add("  " .. pad(o[1], 36) .. o[2]) end
    add("")
    add("Files (in the root):")
    for _, f in ipairs(registry.FILES) do add("  " .. pad(f[1], 36) .. f[2]) end
    add("")
    add(registry.EXIT_CODES)
    add("")
    add("'chat-manager help <command>' shows a command's arguments, options and an example.")
    return lines
end

-- Words of text in lines of at most width columns.
function M.wrap(text, width)
    local lines, line = {}, ""
    for word in text:gmatch("%S+") do
        if line ~= "" and utf8.len(line) + 1 + utf8.len(word) > width then
            lines[#lines + 1] = line
            line = word
        else
            line = line == "" and word or (line .. " " .. word)
        end
    end
    if line ~= "" then lines[#lines + 1] = line end
    return lines
end

-- One command's help.
function M.command_lines(cmd)
    local lines = {}
    local function add(s) lines[#lines + 1] = s end
    add("Usage: chat-manager " .. (cmd.usage or cmd.name) .. " [--root DIR] [--json] [--no-color]")
    add("")
    add(cmd.summary or "")
    if type(cmd.subcommands) == "table" then
        add("")
        add("Sub-commands:")
        for _, r in ipairs(cmd.subcommands) do add("  " .. pad(r.usage, 36) .. r.summary) end
    end
    if cmd.description then
        add("")
        for _, l in ipairs(M.wrap(cmd.description, 78)) do add(l) end
    end
    local function section(title, list)
        if type(list) ~= "table" or #list == 0 then return end
        add("")
        add(title .. ":")
        for _, row in ipairs(list) do add("  " .. pad(row[1], 24) .. row[2]) end
    end
    section("Arguments", cmd.arguments)
    section("Options", cmd.options)
    section("Global options", registry.GLOBAL_OPTIONS)
    add("")
    add("Example:")
    add("  " .. (cmd.example or ("chat-manager " .. cmd.name)))
    if cmd.source then
        add("")
        add("Defined in " .. cmd.source)
    end
    return lines
end

function M.run(ctx, args, out)
    out = out or io.stdout
    local lines
    if args[1] then
        local cmd = ctx.commands[args[1]]
        if not cmd then
            ui.error("Unknown command: %s (chat-manager help lists them)", args[1])
            return 2
        end
        lines = M.command_lines(cmd)
    else
        lines = overview(ctx.root)
    end
    out:write(table.concat(lines, "\n"), "\n")
    return 0
end

return {
    name = "help",
    usage = "help [command]",
    max_args = 1,
    summary = "show this help, or one command's (also <command> --help)",
    group = "other",
    arguments = { { "command", "a command to show the usage, arguments, options and an example of" } },
    example = "chat-manager help start",
    run = M.run,
}
