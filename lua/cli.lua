-- The command line: global options and dispatch over the command registry
-- (lua/registry.lua).  `<command> --help` and `-h` show that command's
-- help; with --json, commands that change state print one outcome object
-- (ui.lua collects it).

local ui = require("ui")
local registry = require("registry")

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
        local cmd = registry.find(real, key)
        rawset(t, key, cmd or false)
        return cmd
    end })

    local name = rest[1] or "help"
    if name == "--help" or name == "-h" then name = "help" end
    if name == "--version" or name == "-V" then name = "version" end
    local cmd = ctx.commands[name]
    if not cmd then
        ui.error("Unknown command: %s", name)
        ctx.commands.help.run(ctx, {}, io.stderr)
        return M.EXIT_USAGE
    end
    local args = table.move(rest, 2, #rest, 1, {})
    -- `<command> --help` / `-h` anywhere after the command: its help, from
    -- the same registry as `help <command>`.
    for _, a in ipairs(args) do
        if a == "--help" or a == "-h" then
            return ctx.commands.help.run(ctx, { name })
        end
    end
    -- Commands declare how many arguments they take; extra ones are a usage
    -- error before anything runs.
    if math.type(rawget(cmd, "max_args")) == "integer" and #args > cmd.max_args then
        ui.error("usage: chat-manager %s", cmd.usage or name)
        return M.EXIT_USAGE
    end
    -- json = "outcome": the command's messages become one object; "own":
    -- it prints its own object, and its messages go to stderr.
    local json_mode = opts.json and rawget(cmd, "json")
    if json_mode == "outcome" or json_mode == "own" then ui.collect() end
    local code = cmd.run(ctx, args)
    if code == nil or code == true then
        code = M.EXIT_OK
    elseif code == false then
        code = M.EXIT_FAIL
    elseif math.type(code) ~= "integer" or code < 0 or code > 255 then
        ui.error("command '%s'%s returned %s, not an exit code (0-255)", name,
            cmd.source and (" (" .. cmd.source .. ")") or "", tostring(code))
        code = M.EXIT_FAIL
    end
    -- --json: a command that printed no JSON of its own (start, stop, ...)
    -- prints its collected outcome as one object.
    if ui.collecting then ui.finish(name, code, json_mode == "outcome") end
    io.stdout:flush()
    return code
end

return M
