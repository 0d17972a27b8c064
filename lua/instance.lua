-- One instance directory ("root") and what lives in it: the pid file, the
-- supervisor's run/ directory (lock, pid, state.json) and the session logs.
-- Also the identity rules of DESIGN §9: a process is ours only when it is
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

-- run/ is private to the user: mode 0700.
function M:ensure_dirs()
    local ok, err = cm.fs.mkdir(self.run_dir, tonumber("700", 8))
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

function M:read_state()
    local text = cm.fs.read(self.state_file)
    if not text then return nil end
    local state = cm.json.decode(text)
    if type(state) ~= "table" then return nil end
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
function M:app()
    local state = self:read_state()
    local pid, start_time = self:read_pid_file()
    if state and state.pid and (not pid or pid == state.pid) then
        pid, start_time = state.pid, state.pid_start or start_time
    end
    if not pid then return nil, state end
    local info = self:owns(pid, start_time)
    -- The group to signal is the verified process's own, and only when it
    -- leads it: a pgid written in state.json (which anyone could forge)
    -- never is.
    local pgid = info and info.pgid == pid and pid or nil
    return { pid = pid, pgid = pgid, start_time = start_time, alive = info and true or false },
        state
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
