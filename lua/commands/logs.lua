-- logs [-f] [-n N] [--since T] [--list] [N|FILE]: the session logs, shown
-- and followed like `tail -f` and `pm2 logs`.  The header goes to stderr,
-- so a pipe gets only the log; it ends at once when the pipe's reader goes
-- away, and with exit 0 on Ctrl+C.

local ui = require("ui")
local instance_mod = require("instance")
local logfollow = require("logfollow")

local EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
local CHUNK = 1024 * 1024

local M = {}

local UNITS = { s = 1, m = 60, h = 3600, d = 86400 }

-- Local date and time fields (strings or numbers) -> epoch seconds, or nil
-- for a date os.time cannot represent (it raises on those).
local function epoch(y, mo, d, h, mi, s)
    local ok, t = pcall(os.time, { year = tonumber(y), month = tonumber(mo), day = tonumber(d),
                                   hour = tonumber(h), min = tonumber(mi), sec = tonumber(s) })
    return ok and t or nil
end

-- "10m", "2h", "90s", "1d", "45" (seconds), or "YYYY-MM-DD[ HH:MM[:SS]]"
-- (local time) -> epoch seconds.
function M.parse_since(text, now)
    local n, unit = text:match("^(%d+)([smhd]?)$")
    if n then return now - tonumber(n) * UNITS[unit ~= "" and unit or "s"] end
    local y, mo, d, rest = text:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
    if not y then return nil end
    local h, mi, s = 0, 0, 0
    if rest ~= "" then
        h, mi, s = rest:match("^[ T](%d%d):(%d%d):?(%d?%d?)$")
        if not h then return nil end
        s = s ~= "" and s or 0
    end
    return epoch(y, mo, d, h, mi, s)
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- The time a log line carries near its start (the manager's and Python
-- logging's "2026-11-30 14:05:09", werkzeug's "[30/Nov/2026 14:05:09]"),
-- or nil.
function M.line_time(line)
    local head = line:sub(1, 48)
    local y, mo, d, h, mi, s = head:match("(%d%d%d%d)%-(%d%d)%-(%d%d)[ T](%d%d):(%d%d):(%d%d)")
    if not y then
        d, mo, y, h, mi, s = head:match("(%d%d)/(%a%a%a)/(%d%d%d%d)[ :](%d%d):(%d%d):(%d%d)")
        mo = mo and MONTHS[mo]
        if not mo then return nil end
    end
    return epoch(y, mo, d, h, mi, s)
end

-- The session logs, oldest first: { name, path, size, mtime, started }.
function M.sessions(inst)
    local out = {}
    for _, name in ipairs(cm.fs.list(inst.logs_dir) or {}) do
        local y, mo, d, h, mi, s = name:match("^chat%-o%-llama_(%d%d%d%d)(%d%d)(%d%d)_(%d%d)(%d%d)(%d%d).*%.log$")
        local path = y and (inst.logs_dir .. "/" .. name)
        local st = path and cm.fs.stat(path)
        if st and st.type == "file" then
            out[#out + 1] = { name = name, path = path, size = st.size, mtime = st.mtime,
                              started = epoch(y, mo, d, h, mi, s) or st.mtime }
        end
    end
    table.sort(out, function(a, b) return a.name < b.name end)
    return out
end

-- How a session ended, from the supervisor's last transition line in the
-- log's tail: its state and why ("exit code 1", "killed by SIGTERM").
local function session_end(path)
    local state, why
    for _, line in ipairs(instance_mod.tail(path, 200)) do
        local to, rest = line:match("%[chat%-manager%] %a+ %-> (%a+) on %S+(.*)$")
        if to then
            state, why = to, rest:match("^ %((.*)%)$")
        end
    end
    return state, why
end

local function human_size(n)
    if n < 1024 then return ("%d B"):format(n) end
    if n < 1024 * 1024 then return ("%.1f KiB"):format(n / 1024) end
    if n < 1024 * 1024 * 1024 then return ("%.1f MiB"):format(n / 1024 / 1024) end
    return ("%.1f GiB"):format(n / 1024 / 1024 / 1024)
end

local function list(ctx, inst)
    local sessions = M.sessions(inst)
    local rows = cm.json.array()
    for i = #sessions, 1, -1 do
        local s = sessions[i]
        local state, why = session_end(s.path)
        rows[#rows + 1] = { index = #sessions - i + 1, file = s.name, path = s.path, size = s.size,
                            started = os.date("%Y-%m-%d %H:%M:%S", s.started),
                            modified = os.date("%Y-%m-%d %H:%M:%S", math.floor(s.mtime)),
                            state = state, exit = why }
    end
    if ctx.json then
        ui.json({ logs_dir = inst.logs_dir, logs = rows })
        return EXIT_OK
    end
    if #rows == 0 then
        ui.note("No log files found in %s", inst.logs_dir)
        return EXIT_OK
    end
    io.stdout:write(("%3s  %-19s  %10s  %-9s  %s\n"):format("#", "started", "size", "state", "file"))
    for _, r in ipairs(rows) do
        local line = ("%3d  %-19s  %10s  %-9s  %s%s\n"):format(r.index, r.started,
            human_size(r.size), r.state or "-", r.file, r.exit and ("  (" .. r.exit .. ")") or "")
        if not io.stdout:write(line) then return EXIT_OK end
    end
    return EXIT_OK
end

local function parse(args)
    local opts = { lines = 50 }
    local i = 1
    local function value(name)
        i = i + 1
        if args[i] == nil then return nil, name .. " needs a value" end
        return args[i]
    end
    while i <= #args do
        local a = args[i]
        local inline = a:match("^%-%-lines=(.*)$") or a:match("^%-n(%d+)$")
        if a == "-n" or a == "--lines" or inline then
            local v = inline or value(a)
            local n = math.tointeger(tonumber(v or ""))
            if not n or n < 0 then return nil, "-n needs a number of lines" end
            opts.lines = n
        elseif a == "--since" or a:match("^%-%-since=") then
            local v, verr = a:match("^%-%-since=(.*)$")
            if not v then v, verr = value(a) end
            if not v then return nil, verr end
            opts.since = M.parse_since(v, os.time())
            if not opts.since then
                return nil, "--since needs a time: 10m, 2h, 1d, 30s or YYYY-MM-DD [HH:MM[:SS]]"
            end
        elseif a == "--no-follow" then
            opts.follow = false
        elseif a == "-f" or a == "--follow" then
            opts.follow = true
        elseif a == "--list" then
            opts.list = true
        elseif a:sub(1, 1) == "-" then
            return nil, "unknown option: " .. a
        elseif opts.which then
            return nil, "one log at a time: " .. a
        else
            opts.which = a
        end
        i = i + 1
    end
    return opts
end

-- The log `which` names: nil for the newest, a number from --list, or a
-- file (a name in logs/ or a path).
local function pick(inst, which)
    if not which then return inst:newest_log() end
    local n = math.tointeger(tonumber(which))
    if n then
        local sessions = M.sessions(inst)
        local s = sessions[#sessions - n + 1]
        if n < 1 or not s then
            return nil, ("no log number %d ('chat-manager logs --list' shows %d)"):format(n, #sessions)
        end
        return s.path
    end
    local path = which:find("/") and which or (inst.logs_dir .. "/" .. which)
    local st = cm.fs.stat(path)
    if not st then return nil, "no such log: " .. which end
    -- A FIFO would block the reader forever; a directory is no log.
    if st.type ~= "file" then return nil, ("not a regular file: %s"):format(which) end
    return path
end

-- Writes the lines of the session logs from `since` on (log files last
-- written before it are skipped), reading a chunk at a time.
local function show_since(inst, since, upto)
    for _, s in ipairs(M.sessions(inst)) do
        if s.mtime >= since and (not upto or s.name <= upto:match("[^/]*$")) then
            local showing = s.started >= since
            local offset, carry = 0, ""
            while true do
                local data = cm.fs.read_from(s.path, offset, CHUNK)
                if not data or #data == 0 then break end
                offset = offset + #data
                if showing then
                    if not io.stdout:write(data) then return false end
                else
                    data = carry .. data
                    local pos = 1
                    for line, nl in data:gmatch("([^\n]*)()\n") do
                        local t = M.line_time(line)
                        if t and t >= since then
                            showing = true
                            if not io.stdout:write(data:sub(pos)) then return false end
                            break
                        end
                        pos = nl + 1
                    end
                    carry = showing and "" or data:sub(pos)
                end
            end
        end
    end
    return io.stdout:flush() ~= nil
end

function M.run(ctx, args)
    local opts, err = parse(args)
    if not opts then
        ui.error("%s (usage: chat-manager logs [-f] [-n N] [--since T] [--list] [N|FILE])", err)
        return EXIT_USAGE
    end
    local inst = instance_mod.new(ctx.root)
    if opts.list then return list(ctx, inst) end
    local path, perr = pick(inst, opts.which)
    if not path then
        if perr then
            ui.error("%s", perr)
            return EXIT_USAGE
        end
        ui.warn("No log files found in %s", inst.logs_dir)
        return opts.follow == false and EXIT_OK or EXIT_FAIL
    end
    -- An older log is finished: shown, not followed, unless -f says so.
    local follow = opts.follow
    if follow == nil then follow = path == inst:newest_log() end
    ui.note("Showing %s%s", path, follow and " (Ctrl+C to exit)" or "")
    if opts.since then
        if not show_since(inst, opts.since, path) then return EXIT_OK end
    else
        local lines = instance_mod.tail(path, opts.lines)
        if #lines > 0 and not io.stdout:write(table.concat(lines, "\n"), "\n") then return EXIT_OK end
        if not io.stdout:flush() then return EXIT_OK end
    end
    if not follow then return EXIT_OK end
    local st = cm.fs.stat(path)
    local stop = cm.task.event()
    local sigs = {
        cm.sys.on_signal("INT", function() stop:set() end),
        cm.sys.on_signal("TERM", function() stop:set() end),
    }
    logfollow.follow(inst, path, st and st.size or 0, stop)
    for _, s in ipairs(sigs) do s:close() end
    return EXIT_OK
end

return {
    name = "logs",
    usage = "logs [-f] [-n N] [--since T] [--list] [N|FILE]",
    summary = "show the newest log and follow it (Ctrl+C to exit)",
    group = "app",
    json = "own",
    arguments = {
        { "N", "the Nth newest session log of --list (1 = the newest)" },
        { "FILE", "a log by its name in logs/ or its path" },
    },
    options = {
        { "-f, --follow", "follow the log as it grows (the default for the newest)" },
        { "--no-follow", "print and exit" },
        { "-n, --lines N", "the last N lines first (default 50)" },
        { "--since T", "from a time on: 10m, 2h, 1d, 30s or YYYY-MM-DD [HH:MM[:SS]]" },
        { "--list", "the session logs: number, start time, size, how it ended" },
    },
    example = "chat-manager logs --since 10m --no-follow | grep ERROR",
    run = M.run,
}
