-- Resource use for `status`, as `pm2 ls` shows it: the app's process group
-- (CPU %, RSS, PSS where readable, open fds, threads) and the supervisor's
-- own RSS, all from /proc.  The group is found by walking the leader's
-- descendants (/proc/PID/task/TID/children), not by reading every process.
--
-- CPU % is over the time since the previous `status` (its sample is kept
-- in run/usage.json), or since the processes started when there is none.

local M = {}

local USER_HZ = 100 -- clock ticks per second in /proc (the kernel's USER_HZ)

local function read(path)
    return cm.fs.read(path, 1024 * 1024)
end

-- One process: { pid, pgid, ticks, start, threads, rss_kb, pss_kb?, fds? }
-- or nil when it is gone.
function M.process(pid)
    local stat = read(("/proc/%d/stat"):format(pid))
    if not stat then return nil end
    -- Fields after the command name (which may hold spaces and parentheses).
    local rest = stat:match("^.*%)%s+(.*)$")
    if not rest then return nil end
    local f = {}
    for v in rest:gmatch("%S+") do f[#f + 1] = v end
    -- f[1] is field 3 (state): field n is f[n - 2].
    local p = {
        pid = pid,
        pgid = math.tointeger(tonumber(f[3])),
        ticks = (tonumber(f[12]) or 0) + (tonumber(f[13]) or 0),
        threads = math.tointeger(tonumber(f[18])),
        start = tonumber(f[20]) or 0,
    }
    local status = read(("/proc/%d/status"):format(pid)) or ""
    p.rss_kb = math.tointeger(tonumber(status:match("VmRSS:%s*(%d+)"))) or 0
    local rollup = read(("/proc/%d/smaps_rollup"):format(pid))
    p.pss_kb = rollup and math.tointeger(tonumber(rollup:match("\nPss:%s*(%d+)")))
    local fds = cm.fs.list(("/proc/%d/fd"):format(pid))
    p.fds = fds and #fds
    return p
end

-- The pids of the leader and its descendants.
local function descendants(pid)
    local out, queue, seen = {}, { pid }, {}
    while #queue > 0 do
        local p = table.remove(queue)
        if not seen[p] then
            seen[p] = true
            out[#out + 1] = p
            for _, tid in ipairs(cm.fs.list(("/proc/%d/task"):format(p)) or {}) do
                local kids = read(("/proc/%d/task/%s/children"):format(p, tid)) or ""
                for c in kids:gmatch("%d+") do queue[#queue + 1] = math.tointeger(tonumber(c)) end
            end
        end
    end
    return out
end

local function uptime_ticks()
    local text = read("/proc/uptime") or ""
    return (tonumber(text:match("^(%S+)")) or 0) * USER_HZ
end

-- Use of the app's group (leader `pgid`) and of the supervisor `sup_pid`;
-- `sample_file` keeps the CPU sample for the next call (nil: none).
function M.collect(pgid, sup_pid, sample_file)
    local out = {}
    if pgid then
        local group = { processes = 0, rss_kb = 0, threads = 0, fds = 0, ticks = 0 }
        local pss, fds_known, pids, oldest = 0, true, {}, math.huge
        for _, pid in ipairs(descendants(pgid)) do
            local p = M.process(pid)
            if p and p.pgid == pgid then
                group.processes = group.processes + 1
                group.rss_kb = group.rss_kb + p.rss_kb
                group.threads = group.threads + (p.threads or 0)
                group.ticks = group.ticks + p.ticks
                if p.pss_kb and pss then pss = pss + p.pss_kb else pss = nil end
                if p.fds then group.fds = group.fds + p.fds else fds_known = false end
                oldest = math.min(oldest, p.start)
                pids[#pids + 1] = pid
            end
        end
        if group.processes > 0 then
            group.pss_kb = pss
            if not fds_known then group.fds = nil end
            -- CPU %: since the previous sample of the same group, else since
            -- its oldest process started.
            local now_ticks = uptime_ticks()
            local prev = sample_file and cm.json.decode(cm.fs.read(sample_file, 4096) or "")
            local since, used = "start", group.ticks
            local window = now_ticks - oldest
            if type(prev) == "table" and prev.pgid == pgid and tonumber(prev.ticks) and
                tonumber(prev.at) and now_ticks - prev.at >= USER_HZ / 10 and group.ticks >= prev.ticks then
                since, used, window = "last check", group.ticks - prev.ticks, now_ticks - prev.at
            end
            group.cpu_percent = window > 0 and math.floor(used / window * 1000 + 0.5) / 10 or 0
            group.cpu_since = since
            group.cpu_window_s = math.floor(window / USER_HZ * 10 + 0.5) / 10
            group.pids = cm.json.array(pids)
            if sample_file then
                cm.fs.write_atomic(sample_file, cm.json.encode({ pgid = pgid, ticks = group.ticks,
                    at = now_ticks }), tonumber("600", 8), false)
            end
            group.ticks = nil
            out.app = group
        end
    end
    if sup_pid then
        local s = M.process(sup_pid)
        if s then out.supervisor = { pid = sup_pid, rss_kb = s.rss_kb, pss_kb = s.pss_kb } end
    end
    return out
end

local function mb(kb)
    return ("%.1f MB"):format(kb / 1024)
end

-- The lines status prints.
function M.lines(u)
    local lines = {}
    if u.app then
        local a = u.app
        lines[#lines + 1] = ("  CPU:        %.1f %% (since %s, %.1f s)"):format(a.cpu_percent,
            a.cpu_since, a.cpu_window_s)
        lines[#lines + 1] = ("  Memory:     %s RSS%s, %d process%s, %d thread%s"):format(mb(a.rss_kb),
            a.pss_kb and (", " .. mb(a.pss_kb) .. " PSS") or "", a.processes,
            a.processes == 1 and "" or "es", a.threads, a.threads == 1 and "" or "s")
        if a.fds then lines[#lines + 1] = ("  Open files: %d"):format(a.fds) end
    end
    if u.supervisor then
        lines[#lines + 1] = ("  Supervisor memory: %s RSS"):format(mb(u.supervisor.rss_kb))
    end
    return lines
end

return M
