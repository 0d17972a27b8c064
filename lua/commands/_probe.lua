-- _probe PORT PGID DEADLINE_MS [PATH TIMEOUT_MS]: the supervisor's readiness
-- probe (internal).  Exits 0 as soon as the app answers: a TCP connect to
-- the port whose listener belongs to the app's process group PGID, then,
-- with PATH, an HTTP 2xx on it.  Exits 1 at the deadline.
--
-- It runs as a child started together with the app, so libcurl (a few
-- milliseconds to load) is ready before the app answers, and never loads
-- into the long-lived supervisor.

local PROBE_INTERVAL_MS = 2

local function note(fmt, ...)
    io.stderr:write(cm.time.strftime("%Y-%m-%d %H:%M:%S"), " [chat-manager] ",
        fmt:format(...), "\n")
end

-- Whether the listener on the port belongs to the app (a foreign process
-- that took the port must not pass for it).  When /proc does not tell
-- (another user's socket), the connect has to do.
local function answered_by_app(port, pgid, noted)
    local owner = cm.net.port_owner(port)
    if not owner then return true end
    local info = cm.proc.info(owner.pid)
    if info and info.pgid == pgid then return true end
    if not noted[owner.pid] then
        noted[owner.pid] = true
        note("port %d answers, but from PID %d (%s), not the app", port, owner.pid,
            owner.name or "?")
    end
    return false
end

return {
    name = "_probe",
    usage = "_probe PORT PGID DEADLINE_MS [PATH TIMEOUT_MS]",
    summary = "internal: the supervisor's readiness probe",
    hidden = true,
    run = function(_, args)
        local port, pgid = math.tointeger(tonumber(args[1] or "")), math.tointeger(tonumber(args[2] or ""))
        local deadline = math.tointeger(tonumber(args[3] or ""))
        local path, timeout = args[4], math.tointeger(tonumber(args[5] or "")) or 10000
        if not port or not pgid or not deadline then return 2 end
        if path then
            local ok, err = cm.http.load()
            if not ok then note("readiness probe: %s", err) return 2 end
        end
        local url = path and ("http://127.0.0.1:%d%s"):format(port, path)
        local noted = {}
        local t_end = cm.time.now() + deadline
        while cm.time.now() < t_end do
            -- The cheap connect first; the /proc lookup only once it answers.
            local ok = cm.net.connect("127.0.0.1", port, 1000) and answered_by_app(port, pgid, noted)
            if ok and url then
                local res = cm.http.get(url, { timeout = timeout,
                    connect_timeout = math.min(timeout, 1000), max_bytes = 65536 })
                ok = res and res.status >= 200 and res.status < 300
            end
            -- Exit at once: the supervisor is waiting for this exit to
            -- report ready, and a tidy teardown would only delay it.
            if ok then cm.sys.exit(0) end
            cm.time.sleep(PROBE_INTERVAL_MS)
        end
        return 1
    end,
}
