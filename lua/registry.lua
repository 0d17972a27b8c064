-- The command registry: the built-in commands (lua/commands/) and the
-- root's own (<root>/commands/*.lua).  A command is a table
--   { name, usage, summary, group = "app"|"backend"|"other"|"user", max_args?,
--     options = { { "-f, --follow", "what it does" }, ... }?, example?,
--     subcommands?, run(ctx, args) }
-- and run returns the exit code.  cli, help, completion and the man page all
-- read this one registry.

local ui = require("ui")

local M = {}

local function check_command(cmd, where)
    if type(cmd) ~= "table" or type(rawget(cmd, "name")) ~= "string" or
        type(rawget(cmd, "run")) ~= "function" then
        return nil, where .. ": a command module must return { name = ..., run = function }"
    end
    for _, field in ipairs({ "usage", "summary", "group", "example", "description" }) do
        local v = rawget(cmd, field)
        if v ~= nil and type(v) ~= "string" then
            return nil, ("%s: '%s' must be a string"):format(where, field)
        end
    end
    -- options and arguments: lists of { "spelling", "what it does" }.
    for _, field in ipairs({ "options", "arguments" }) do
        local list = rawget(cmd, field)
        if list ~= nil then
            if type(list) ~= "table" then
                return nil, ("%s: '%s' must be a list of { name, text }"):format(where, field)
            end
            for i, row in ipairs(list) do
                if type(row) ~= "table" or type(row[1]) ~= "string" or type(row[2]) ~= "string" then
                    return nil, ("%s: %s[%d] must be { name, text }"):format(where, field, i)
                end
            end
        end
    end
    return cmd
end

-- Whether a user command file may be loaded: a regular file (opening a
-- FIFO would block forever) that nobody else can change.  true, or nil and
-- why.
local function loadable(path)
    local st, serr = cm.fs.stat(path)
    if not st then return nil, "cannot open: " .. tostring(serr) end
    if st.type == "dir" then return nil, "cannot read: it is a directory" end
    if st.type ~= "file" then return nil, ("not a regular file (a %s)"):format(st.type) end
    return require("usercode").trusted(path)
end

-- Loads a user command file here; returns the command, or nil and why.
-- Only for the command the user asked to run: listing them (help, an
-- unknown name) loads each in a limited child (M.describe_user_command).
local function load_user_command(path)
    local ok, why = loadable(path)
    if not ok then return nil, why end
    local chunk, err = loadfile(path, "t")
    if not chunk then return nil, err end
    local pok, cmd, cwhy = pcall(function() return check_command(chunk(), path) end)
    if not pok then return nil, cmd end
    if cmd then cmd.source = path end
    return cmd, cwhy
end

-- What help shows of a user command, loaded in a limited child (an endless
-- loop at load time cannot hang help): a stand-in whose run loads the file
-- here when the user runs it.  Returns it, or nil and why.
local function user_command_stand_in(root, path)
    local ok, why = loadable(path)
    if not ok then return nil, why end
    local usercode = require("usercode")
    local doc, err = usercode.call(root, usercode.settings_of(root), "command_load", { path = path })
    if not doc then return nil, ("%s: loading it %s"):format(path, err) end
    if type(doc.error) == "string" then return nil, doc.error end
    if type(doc.name) ~= "string" then return nil, path .. ": it gave no name" end
    local function text(v) return type(v) == "string" and v or nil end
    return {
        name = doc.name, usage = text(doc.usage), summary = text(doc.summary), group = text(doc.group),
        max_args = math.tointeger(doc.max_args), source = path,
        run = function(ctx, args)
            local cmd, lerr = load_user_command(path)
            if not cmd then
                ui.error("%s", tostring(lerr))
                return 1
            end
            return cmd.run(ctx, args)
        end,
    }
end

-- The fields of a user command the child reports (commands/_user.lua).
function M.describe_user_command(path)
    local cmd, err = load_user_command(path)
    if not cmd then return { error = tostring(err) } end
    return { name = cmd.name, usage = rawget(cmd, "usage"), summary = rawget(cmd, "summary"),
             group = rawget(cmd, "group"), max_args = math.tointeger(rawget(cmd, "max_args")) }
end

-- Builds the whole registry: name -> command, plus the names in help order.
-- Broken user commands are named (once) and skipped.
local registries = {}
function M.registry(root)
    local cached = registries[root or ""]
    if cached then return cached[1], cached[2] end
    local commands, order = {}, {}
    registries[root or ""] = { commands, order }
    for _, mod in ipairs(M.sorted_keys(cm.modules("commands."))) do
        local cmd = assert(check_command(require(mod), mod))
        commands[cmd.name] = cmd
        order[#order + 1] = cmd.name
    end
    local dir = root and (root .. "/commands")
    local names = dir and cm.fs.list(dir) or {}
    local loading = {}
    for _, file in ipairs(names) do
        if file:match("%.lua$") then
            local path = dir .. "/" .. file
            loading[#loading + 1] = { path = path,
                task = cm.task.spawn(user_command_stand_in, root, path) }
        end
    end
    for _, l in ipairs(loading) do
        local path = l.path
        local _, cmd, err = l.task:join()
        if not cmd and tostring(err):find(": not run (", 1, true) then
            ui.error("%s", err) -- code others can change: the user must act
        elseif not cmd then
            ui.warn("ignoring %s: %s", path, tostring(err))
        elseif commands[cmd.name] then
            ui.warn("ignoring %s: '%s' is a built-in command", path, cmd.name)
        else
            cmd.group = cmd.group or "user"
            commands[cmd.name] = cmd
            order[#order + 1] = cmd.name
        end
    end
    return commands, order
end

-- Finds one command without loading the others (a command usually lives in
-- commands/<name>.lua); only when that fails is the whole registry built.
function M.find(root, name)
    if cm.modules("commands.")["commands." .. name] then
        return assert(check_command(require("commands." .. name), name))
    end
    local path = root .. "/commands/" .. name .. ".lua"
    if name:match("^[%w_%-]+$") and cm.fs.exists(path) then
        local cmd = load_user_command(path)
        if cmd and cmd.name == name then
            cmd.group = cmd.group or "user"
            return cmd
        end
    end
    local commands = M.registry(root)
    return commands[name]
end

function M.sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    return keys
end

-- What help, the completions and the man page say about every command.

M.GLOBAL_OPTIONS = {
    { "--root DIR", "instance directory (else $CHAT_MANAGER_ROOT, else the binary's " ..
        "directory when it holds the app, else .)" },
    { "--json", "machine-readable output (status, backend, start, stop, logs --list, ...)" },
    { "--no-color", "no colours (also NO_COLOR, or when not a terminal)" },
    { "-h, --help", "help (after a command: that command's help)" },
    { "-V, --version", "version of chat-manager and of its libraries" },
}

M.FILES = {
    { "config.json", "configuration ($CONFIG_FILE overrides the path)" },
    { "process.pid", "PID of the running app" },
    { "logs/chat-o-llama_*.log", "one log per start" },
    { "models/", "GGUF models for llama.cpp" },
    { "run/", "supervisor state, pid and lock" },
}

M.EXIT_CODES = "Exit codes: 0 ok, 1 failed, 2 usage error; status: 0 running, 1 dead with pid file,\n" ..
    "3 not running, 4 unknown."

-- The old manager's order for the built-ins; other commands follow by name.
local preferred = { "start", "stop", "restart", "force-stop", "status", "logs", "run", "backend",
                    "help", "version", "completion" }

-- The visible commands (no internal `_` ones) in help order.
function M.ordered(root)
    local commands, order = M.registry(root)
    local rank = {}
    for i, name in ipairs(preferred) do rank[name] = i end
    local sorted = {}
    for _, name in ipairs(order) do
        if not commands[name].hidden then sorted[#sorted + 1] = commands[name] end
    end
    table.sort(sorted, function(a, b)
        local ra, rb = rank[a.name] or math.huge, rank[b.name] or math.huge
        if ra ~= rb then return ra < rb end
        return a.name < b.name
    end)
    return sorted
end

-- The rows a command shows in the overview (one per subcommand).
function M.rows(cmd)
    if type(cmd.subcommands) == "table" then return cmd.subcommands end
    return { { usage = cmd.usage or cmd.name, summary = cmd.summary or "" } }
end

return M
