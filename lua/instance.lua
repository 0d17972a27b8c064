-- One instance directory ("root") and what lives in it: the pid file, the
-- supervisor's run/ directory (lock, pid, state.json) and the session logs.
-- Also the identity rules of DESIGN §9: a process is ours only when it is
-- provably this instance's (its start time matches what we recorded, or it
-- carries the instance marker in its environment).

local M = {}
M.__index = M

M.MARKER = "CHAT_MANAGER_INSTANCE"
M.COMMON_PORTS = { 3113, 5000, 8000, 9000 }

-- FNV-1a over the root's real path: a stable id for the marker.
local function instance_id(path)
    local h = -3750763034362895579 -- 14695981039346656037 as a signed integer
    for i = 1, #path do
        h = (h ~ path:byte(i)) * 1099511628211
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

-- Is the process `pid` provably ours?  With a recorded start time it must
-- match (a reused PID has another); without one, only the marker counts.
function M:owns(pid, start_time)
    if not pid or pid <= 1 then return false end
    local info = cm.proc.info(pid)
    if not info or info.state == "Z" then return false end
    if start_time then return info.start_time == start_time end
    return cm.proc.has_marker(pid, M.MARKER, self.id)
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
    local alive = self:owns(pid, start_time)
    local pgid = state and state.pgid or pid
    return { pid = pid, pgid = pgid, start_time = start_time, alive = alive }, state
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

-- Keeps the newest `keep` session logs (names sort by time).
function M:prune_logs(keep)
    local names = cm.fs.list(self.logs_dir) or {}
    local logs = {}
    for _, n in ipairs(names) do
        if n:match("^chat%-o%-llama_%d+_%d+.*%.log$") then logs[#logs + 1] = n end
    end
    for i = 1, #logs - keep do cm.fs.remove(self.logs_dir .. "/" .. logs[i]) end
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
