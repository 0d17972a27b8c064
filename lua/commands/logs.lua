-- logs [-n N] [--no-follow]: the newest session log, followed natively
-- (libuv fs events, no `tail` process).  Ctrl+C ends it with exit 0.

local ui = require("ui")
local instance_mod = require("instance")

local M = {}

-- Follows `path` from `offset`, writing new bytes to stdout, switching to a
-- newer session log when a start creates one, until `stop` is set.
function M.follow(inst, path, offset, stop)
    -- One event per wait; whatever happens (the file or the directory
    -- changes, Ctrl+C) sets the current one.
    local changed = cm.task.event()
    local function wake() changed:set() end
    local function watch_loop(w)
        cm.task.spawn(function()
            while w:wait() == "change" do wake() end -- ends when w is closed
        end)
    end
    local watcher = cm.fs.watch(path)
    local dir_watcher = cm.fs.watch(inst.logs_dir)
    watch_loop(watcher)
    watch_loop(dir_watcher)
    cm.task.spawn(function()
        stop:wait()
        wake()
    end)
    while not stop:is_set() do
        local data = cm.fs.read_from(path, offset)
        if data and #data > 0 then
            io.stdout:write(data)
            io.stdout:flush()
            offset = offset + #data
        else
            local newest = inst:newest_log()
            if newest and newest ~= path then
                path, offset = newest, 0
                watcher:close()
                watcher = cm.fs.watch(path)
                watch_loop(watcher)
                io.stdout:write(("==> %s <==\n"):format(path))
            else
                -- Also every 2 s, for filesystems without change events.
                changed:wait(2000)
                changed = cm.task.event()
            end
        end
    end
    watcher:close()
    dir_watcher:close()
end

local function parse(args)
    local opts = { lines = 50, follow = true }
    local i = 1
    while i <= #args do
        local a = args[i]
        if a == "-n" or a == "--lines" then
            local n = math.tointeger(tonumber(args[i + 1] or ""))
            if not n or n < 0 then return nil, "-n needs a number of lines" end
            opts.lines = n
            i = i + 1
        elseif a:match("^%-n%d+$") then
            opts.lines = math.tointeger(tonumber(a:sub(3)))
            if not opts.lines then return nil, "-n needs a number of lines" end
        elseif a == "--no-follow" then
            opts.follow = false
        elseif a == "-f" or a == "--follow" then
            opts.follow = true
        else
            return nil, "unknown argument: " .. a
        end
        i = i + 1
    end
    return opts
end

function M.run(ctx, args)
    local opts, err = parse(args)
    if not opts then
        ui.error("%s (usage: chat-manager logs [-n N] [--no-follow])", err)
        return 2
    end
    local inst = instance_mod.new(ctx.root)
    local path = inst:newest_log()
    if not path then
        ui.warn("No log files found in %s", inst.logs_dir)
        return opts.follow and 1 or 0
    end
    ui.info("Showing %s%s", path, opts.follow and " (Ctrl+C to exit)" or "")
    for _, line in ipairs(instance_mod.tail(path, opts.lines)) do io.stdout:write(line, "\n") end
    io.stdout:flush()
    if not opts.follow then return 0 end
    local st = cm.fs.stat(path)
    local stop = cm.task.event()
    local sigs = {
        cm.sys.on_signal("INT", function() stop:set() end),
        cm.sys.on_signal("TERM", function() stop:set() end),
    }
    M.follow(inst, path, st and st.size or 0, stop)
    for _, s in ipairs(sigs) do s:close() end
    return 0
end

return {
    name = "logs",
    usage = "logs [-n N] [--no-follow]",
    summary = "show the newest log and follow it (Ctrl+C to exit)",
    group = "app",
    run = M.run,
    follow = M.follow,
}
