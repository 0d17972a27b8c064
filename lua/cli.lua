-- The command line: global options, the command registry and dispatch.
--
-- Every module in lua/commands/ is a command, and so is every .lua file in
-- <root>/commands/ (users' own).  A command is a table
--   { name, usage, summary, group = "app"|"backend"|"other", max_args?, run(ctx, args) }
-- and run returns the exit code.

local ui = require("ui")

local M = {}

M.EXIT_OK, M.EXIT_FAIL, M.EXIT_USAGE = 0, 1, 2

-- Splits global options (allowed before or after the command) from the rest.
local function parse_globals(argv)
    local opts, rest = { json = false, no_color = false }, {}
    local i = 1
    while i <= #argv do
        local a = argv[i]
        if a == "--root" or a:sub(1, 7) == "--root=" then
            local dir = a == "--root" and argv[i + 1] or a:sub(8)
            -- An empty --root (an unset shell variable) must not silently
            -- mean the current directory: that could stop another checkout.
            if dir == nil or dir == "" then return nil, "--root needs a directory" end
            opts.root = dir
            if a == "--root" then i = i + 1 end
        elseif a == "--json" then
            opts.json = true
        elseif a == "--no-color" then
            opts.no_color = true
        else
            rest[#rest + 1] = a
        end
        i = i + 1
    end
    return opts, rest
end

local function check_command(cmd, where)
    if type(cmd) ~= "table" or type(rawget(cmd, "name")) ~= "string" or
        type(rawget(cmd, "run")) ~= "function" then
        return nil, where .. ": a command module must return { name = ..., run = function }"
    end
    for _, field in ipairs({ "usage", "summary", "group" }) do
        local v = rawget(cmd, field)
        if v ~= nil and type(v) ~= "string" then
            return nil, ("%s: '%s' must be a string"):format(where, field)
        end
    end
    return cmd
end

-- Loads a user command file; returns the command, or nil and why.
local function load_user_command(path)
    local st, serr = cm.fs.stat(path)
    -- Only regular files: opening a FIFO would block forever.
    if not st then return nil, "cannot open: " .. tostring(serr) end
    if st.type == "dir" then return nil, "cannot read: it is a directory" end
    if st.type ~= "file" then return nil, ("not a regular file (a %s)"):format(st.type) end
    local chunk, err = loadfile(path, "t")
    if not chunk then return nil, err end
    local ok, cmd, why = pcall(function() return check_command(chunk(), path) end)
    if not ok then return nil, cmd end
    if cmd then cmd.source = path end
    return cmd, why
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
    for _, file in ipairs(names) do
        if file:match("%.lua$") then
            local path = dir .. "/" .. file
            local cmd, err = load_user_command(path)
            if not cmd then
                ui.warn("ignoring %s: %s", path, tostring(err))
            elseif commands[cmd.name] then
                ui.warn("ignoring %s: '%s' is a built-in command", path, cmd.name)
            else
                cmd.group = cmd.group or "user"
                commands[cmd.name] = cmd
                order[#order + 1] = cmd.name
            end
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

-- The instance directory: --root, else $CHAT_MANAGER_ROOT, else the
-- directory holding this executable when it holds the app (the drop-in:
-- ./chat-manager inside the checkout, called by path from anywhere, as the
-- old script used its own directory), else the current directory.
function M.choose_root(option)
    if option then return option end
    local env_root = cm.sys.getenv("CHAT_MANAGER_ROOT")
    if env_root and env_root ~= "" then return env_root end
    local exe = cm.sys.exe()
    local exe_dir = exe and exe:match("^(.*)/[^/]*$")
    if exe_dir and exe_dir ~= "" and (cm.fs.exists(exe_dir .. "/app.py") or
        cm.fs.exists(exe_dir .. "/config.json")) then
        return exe_dir
    end
    return assert(cm.sys.cwd())
end

function M.main(argv)
    local opts, rest = parse_globals(argv)
    if not opts then
        ui.error("%s", rest)
        return M.EXIT_USAGE
    end
    ui.setup(opts)
    local root = M.choose_root(opts.root)
    local real = cm.fs.realpath(root)
    local st = real and cm.fs.stat(real)
    if not st then
        ui.error("root directory not found: %s", root)
        return M.EXIT_USAGE
    elseif st.type ~= "dir" then
        ui.error("root is not a directory: %s", root)
        return M.EXIT_USAGE
    end
    local ctx = { root = real, json = opts.json, no_color = opts.no_color }
    -- Commands are loaded on first use: running one command parses one
    -- script, not all of them.
    ctx.commands = setmetatable({}, { __index = function(t, key)
        local cmd = M.find(real, key)
        rawset(t, key, cmd or false)
        return cmd
    end })

    local name = rest[1] or "help"
    if name == "--help" or name == "-h" then name = "help" end
    local cmd = ctx.commands[name]
    if not cmd then
        ui.error("Unknown command: %s", name)
        ctx.commands.help.run(ctx, {}, io.stderr)
        return M.EXIT_USAGE
    end
    local args = table.move(rest, 2, #rest, 1, {})
    -- Commands declare how many arguments they take; extra ones are a usage
    -- error before anything runs.
    if math.type(rawget(cmd, "max_args")) == "integer" and #args > cmd.max_args then
        ui.error("usage: chat-manager %s", cmd.usage or name)
        return M.EXIT_USAGE
    end
    local code = cmd.run(ctx, args)
    io.stdout:flush()
    if code == nil or code == true then return M.EXIT_OK end
    if code == false then return M.EXIT_FAIL end
    if math.type(code) ~= "integer" or code < 0 or code > 255 then
        ui.error("command '%s'%s returned %s, not an exit code (0-255)", name,
            cmd.source and (" (" .. cmd.source .. ")") or "", tostring(code))
        return M.EXIT_FAIL
    end
    return code
end

return M
