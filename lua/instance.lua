-- One instance directory ("root") and what lives in it: the pid file, the
-- supervisor's run/ directory (lock, pid, state.json) and the session logs.
-- Also the identity rules of docs/design.md §9: a process is ours only when it is
-- provably this instance's (its start time matches what we recorded, or it
-- carries the instance marker in its environment).

local M = {}
M.__index = M

M.MARKER = "CHAT_MANAGER_INSTANCE"
M.COMMON_PORTS = { 3113, 5000, 8000, 9000 }

-- The id in the marker: FNV-1a over "DEV:INODE:PATH" of the root, so that
-- a copy of a checkout (`cp -a`, another path, another inode) has another
-- id even though its files, process.pid included, are the same.
local function instance_id(path)
    local st = cm.fs.stat(path)
    local key = ("%d:%d:%s"):format(st and st.dev or 0, st and st.ino or 0, path)
    local h = -3750763034362895579 -- 14695981039346656037 as a signed integer
    for i = 1, #key do
        h = (h ~ key:byte(i)) * 1099511628211
    end
    return ("%016x"):format(h)
end

function M.new(root)
    local self = setmetatable({ root = root }, M)
    self.id = instance_id(root)
    self.run_dir = root .. "/run"
    self.logs_dir = root .. "/logs"
    self.pid_file = root .. "/process.pid"
    self.lock_file = self.run_dir .. "/lock"
    self.cmd_lock_file = self.run_dir .. "/cmd.lock"
    self.state_file = self.run_dir .. "/state.json"
    self.supervisor_pid_file = self.run_dir .. "/supervisor.pid"
    return self
end

-- run/ is private to the user: mode 0700.  A run/ that is a symlink is
-- refused: it would make the manager chmod, lock and write wherever it
-- points.
function M.refuse_link(dir)
    local lst = cm.fs.lstat(dir)
    if lst and lst.type == "link" then
        return nil, ("%s is a symlink: refused (remove it; the manager creates it itself)"):format(dir)
    end
    return true
end

function M:ensure_dirs()
    local ok, err = M.refuse_link(self.run_dir)
    if not ok then return nil, err end
    ok, err = cm.fs.mkdir(self.run_dir, tonumber("700", 8))
    if not ok then return nil, err end
    cm.fs.chmod(self.run_dir, tonumber("700", 8))
    ok, err = cm.fs.mkdir(self.logs_dir)
    if not ok then return nil, err end
    return true
end

-- True while a supervisor for this root holds run/lock.
function M:supervisor_alive()
    return cm.fs.probe_lock(self.lock_file)
end

-- The types of state.json's fields (others are kept as they are).  A file
-- that does not parse, is not an object, or has a field of another type
-- (a forged "pid": null) is corrupt: it is reported once and treated as no
-- state ("stopped"); the app is then found through process.pid and the
-- instance marker, never through the corrupt file.
local STATE_TYPES = {
    state = "string", since = "number", pid = "integer", pid_start = "integer",
    pgid = "integer", port = "integer", url = "string", backend = "string",
    restarts = "integer", retry_at = "number", ready_ms = "number", log = "string",
    supervisor_pid = "integer", instance = "string", root = "string",
}

local function state_problem(state)
    -- decoded arrays carry a metatable (cm.json.array); objects none
    if type(state) ~= "table" or getmetatable(state) ~= nil or state[1] ~= nil then
        return "not a JSON object"
    end
    for key, want in pairs(STATE_TYPES) do
        local v = state[key]
        if v ~= nil then
            local ok = (want == "integer" and math.type(v) == "integer")
                or (want == "number" and type(v) == "number" and v == v)
                or (want == "string" and type(v) == "string")
            if not ok then return ("'%s' is not a%s %s"):format(key, want == "integer" and "n" or "", want) end
        end
    end
    if state.pid ~= nil and state.pid <= 1 then return "'pid' is not a process" end
    if state.pgid ~= nil and state.pgid <= 1 then return "'pgid' is not a process group" end
    return nil
end

local reported = {}

function M:read_state()
    local text = cm.fs.read(self.state_file, 1024 * 1024)
    if not text then return nil end
    local state, err = cm.json.decode(text)
    local problem = state == nil and (err or "not JSON") or state_problem(state)
    if problem then
        if not reported[self.state_file] then
            reported[self.state_file] = true
            -- stderr: stdout may be --json
            local ui = require("ui")
            io.stdout:flush()
            io.stderr:write(ui.paint("yellow", "[WARNING]"), (" corrupt state, treated as stopped: %s: %s\n")
                :format(self.state_file, problem))
        end
        return nil, "corrupt"
    end
    return state
end

function M:write_state(state)
    return cm.fs.write_atomic(self.state_file, cm.json.encode(state, true) .. "\n",
        tonumber("600", 8), false)
end

-- process.pid: the PID on the first line (what tools that read it expect),
-- then a comment line with the start time and the instance id.
function M:write_pid_file(pid, start_time)
    return cm.fs.write_atomic(self.pid_file,
        ("%d\n# start_time=%s instance=%s\n"):format(pid, tostring(start_time or ""), self.id),
        tonumber("644", 8), false)
end

-- Returns pid, start_time (nil in the old script's format), or nil.
function M:read_pid_file()
    local text = cm.fs.read(self.pid_file, 4096)
    if not text then return nil end
    local pid = math.tointeger(tonumber(text:match("^%s*(%d+)")))
    if not pid or pid <= 1 then return nil end
    return pid, math.tointeger(tonumber(text:match("start_time=(%d+)")))
end

-- Is the process `pid` provably ours?  It must carry THIS root's marker (a
-- copy of the checkout has copied process.pid and state.json, PID and start
-- time included, but not the id), and, when a start time was recorded, that
-- too must match (a reused PID has another).  Returns its /proc info.
function M:owns(pid, start_time)
    if not pid or pid <= 1 then return false end
    local info = cm.proc.info(pid)
    if not info or info.state == "Z" then return false end
    if start_time and info.start_time ~= start_time then return false end
    if not cm.proc.has_marker(pid, M.MARKER, self.id) then return false end
    return info
end

-- Does the root hold an app (so that a command may create run/ and logs/
-- in it)?  Its config file or the old script's app.py must be there.
function M.root_holds_app(root, config_path)
    return cm.fs.exists(config_path or (root .. "/config.json")) or cm.fs.exists(root .. "/app.py")
end

function M:holds_app(config_path)
    return M.root_holds_app(self.root, config_path)
end

-- Every live process carrying this instance's marker.
function M:marked_processes()
    local found = {}
    local me = cm.sys.pid()
    for _, pid in ipairs(cm.proc.list()) do
        if pid ~= me and cm.proc.has_marker(pid, M.MARKER, self.id) then
            local info = cm.proc.info(pid)
            if info and info.state ~= "Z" then found[#found + 1] = info end
        end
    end
    return found
end

-- The app as far as the files and /proc can tell, whether or not a
-- supervisor is alive: { pid, pgid, start_time, alive, state } or nil.
-- With `settings`, a pid file of the old script (no start time, no marker)
-- naming a live process is looked at too (M:legacy_app): the app is then
-- `adopted` (alive, started outside chat-manager), or `unproven` says why
-- the live process is left alone.
function M:app(settings)
    local state = self:read_state()
    local pid, start_time = self:read_pid_file()
    if state and state.pid and (not pid or pid == state.pid) then
        pid, start_time = state.pid, state.pid_start or start_time
    end
    if not pid then return nil, state end
    local info = self:owns(pid, start_time)
    if not info and not start_time and settings then
        local found, why = self:legacy_app(pid, settings)
        if found then return found, state end
        if why then return { pid = pid, alive = false, unproven = why }, state end
    end
    -- The group to signal is the verified process's own, and only when it
    -- leads it: a pgid written in state.json (which anyone could forge)
    -- never is.
    local pgid = info and info.pgid == pid and pid or nil
    return { pid = pid, pgid = pgid, start_time = start_time, alive = info and true or false },
        state
end

-- ---- the old script's app (process.pid without a marker) ------------------

local function basename(path) return path:match("([^/]*)$") end

-- Does one command (a list of words) run the app: its script (the first
-- `.py` argument of manager.app.command) by an interpreter, or else exactly
-- the configured command?  Leading VAR=value words, `exec` and `nohup` are
-- skipped, as a shell would.
local function runs_app(words, command, cwd)
    local first = 1
    while words[first] and (words[first]:match("^[%a_][%w_]*=") or words[first] == "exec" or
        words[first] == "nohup") do
        first = first + 1
    end
    local prog = words[first]
    if not prog then return false end
    local script
    for i = 2, #command do
        if command[i]:match("%.py$") then script = command[i] break end
    end
    if script then
        local full = script:sub(1, 1) == "/" and script or cwd .. "/" .. script:gsub("^%./", "")
        local interp = basename(prog)
        if not (interp:match("^python[%d.]*$") or interp == basename(command[1])) then return false end
        for i = first + 1, #words do
            local w = words[i]:gsub("^%./", "")
            if w == script:gsub("^%./", "") or w == full then return true end
        end
        return false
    end
    if basename(prog) ~= basename(command[1]) or #words - first + 1 ~= #command then return false end
    for i = 2, #command do
        if words[first + i - 1] ~= command[i] then return false end
    end
    return true
end

-- The commands of a `sh -c` script, split into words (quotes dropped): the
-- old script started the app as `bash -c "cd '<root>'; PORT=N python3 app.py"`.
local function shell_commands(text)
    local commands = {}
    for part in (text .. "\n"):gmatch("([^\n;&|]*)[\n;&|]") do
        local words = {}
        for w in part:gmatch("%S+") do words[#words + 1] = (w:gsub("[\"']", "")) end
        if #words > 0 then commands[#commands + 1] = words end
    end
    return commands
end

-- Is the live process `pid`, named by a pid file without a marker, provably
-- this checkout's app: its working directory the app's (the root by
-- default) and its command line running the app's script or the configured
-- command (directly, or through `sh -c` as the old script did)?  Returns
-- the app { pid, pgid (only when it leads its group), start_time, alive,
-- adopted = true }; or nil and why the process is left alone; or nil when
-- it is not running.
function M:legacy_app(pid, settings)
    local info = cm.proc.info(pid)
    if not info or info.state == "Z" then return nil end
    local cwd, cerr, ccode = cm.proc.cwd(pid)
    if not cwd then
        if ccode == "ESRCH" then return nil end
        return nil, ("its working directory cannot be read (%s)"):format(cerr)
    end
    local app_dir = settings:resolve(settings:get("manager.app.cwd"))
    app_dir = cm.fs.realpath(app_dir) or app_dir
    if cwd ~= app_dir then
        return nil, ("its working directory is %s, not %s"):format(cwd, app_dir)
    end
    local command = settings:get("manager.app.command")
    local args = info.cmdline
    local proven = #args > 0 and runs_app(args, command, app_dir)
    local shell = args[1] and basename(args[1])
    if not proven and (shell == "sh" or shell == "bash" or shell == "dash") and args[2] == "-c" and
        args[3] then
        for _, words in ipairs(shell_commands(args[3])) do
            if runs_app(words, command, app_dir) then proven = true end
        end
    end
    if not proven then
        return nil, ("its command line (%s) does not run %s"):format(table.concat(args, " "),
            table.concat(command, " "))
    end
    return { pid = pid, pgid = info.pgid == pid and pid or nil, start_time = info.start_time,
             alive = true, adopted = true }
end

-- An adopted app that does not lead its own process group: it and its
-- descendants, each as { pid, start_time } (so that a PID reused later is
-- not signalled), found before anything is signalled (a child outlives a
-- killed parent and is re-parented).
function M.process_tree(pid)
    local children = {}
    local infos = {}
    for _, p in ipairs(cm.proc.list()) do
        local info = cm.proc.info(p)
        if info and info.state ~= "Z" then
            infos[p] = info
            children[info.ppid] = children[info.ppid] or {}
            table.insert(children[info.ppid], p)
        end
    end
    local tree, queue = {}, { pid }
    while #queue > 0 do
        local p = table.remove(queue, 1)
        if infos[p] then
            tree[#tree + 1] = { pid = p, start_time = infos[p].start_time }
            for _, c in ipairs(children[p] or {}) do queue[#queue + 1] = c end
        end
    end
    return tree
end

-- The newest session log, or nil.
function M:newest_log()
    local names = cm.fs.list(self.logs_dir)
    if not names then return nil end
    local newest
    for _, n in ipairs(names) do
        if n:match("^chat%-o%-llama_%d+_%d+.*%.log$") then newest = n end
    end
    return newest and (self.logs_dir .. "/" .. newest)
end

-- Keeps the newest `keep` session logs (names sort by time), each with its
-- rotated parts (NAME.log.1, ...); returns the names of the files removed.
function M:prune_logs(keep)
    local names = cm.fs.list(self.logs_dir) or {}
    table.sort(names)
    local logs, removed = {}, {}
    for _, n in ipairs(names) do
        if n:match("^chat%-o%-llama_%d+_%d+.*%.log$") then logs[#logs + 1] = n end
    end
    local gone = {}
    for i = 1, #logs - keep do gone[logs[i]] = true end
    for _, n in ipairs(names) do
        local base = n:match("^(chat%-o%-llama_.*%.log)$") or n:match("^(chat%-o%-llama_.*%.log)%.%d+$")
        if base and gone[base] and cm.fs.remove(self.logs_dir .. "/" .. n) then
            removed[#removed + 1] = n
        end
    end
    return removed
end

-- The last n lines of a file (reads at most its final 64 KiB: a session log
-- can be gigabytes).
function M.tail(path, n)
    local st = cm.fs.stat(path)
    if not st then return {} end
    local window = 65536
    local offset = math.max(0, st.size - window)
    local text = cm.fs.read_from(path, offset, window) or ""
    local lines = {}
    for line in text:gmatch("[^\n]*") do lines[#lines + 1] = line end
    if lines[#lines] == "" then lines[#lines] = nil end
    if offset > 0 then table.remove(lines, 1) end -- cut at the window's start
    local first = math.max(1, #lines - n + 1)
    return table.move(lines, first, #lines, 1, {})
end

return M
