-- _probe PORT PGID DEADLINE_MS [PATH TIMEOUT_MS]: the supervisor's readiness
-- probe (internal).  Exits 0 as soon as the app answers: a TCP connect to
-- the port whose listener belongs to the app's process group PGID, then,
-- with PATH, an HTTP 2xx on it.  Exits 1 at the deadline, and 3 when the
-- app's group listens on other ports only (it did not take the port it was
-- given) for WRONG_PORT_GRACE_MS: that start cannot succeed, so it fails
-- within seconds instead of at start_timeout.
--
-- It runs as a child started together with the app, so libcurl (a few
-- milliseconds to load) is ready before the app answers, and never loads
-- into the long-lived supervisor.

-- Connects back off: every 2 ms at first (a quick app is seen at once),
-- then a tenth of the time waited so far, at most every 100 ms: an app is
-- seen at most ~10 % later than it answers, and a slow one does not cost a
-- connect and a wake-up every 2 ms for seconds (a 5 s start: ~60 connects,
-- not 2,500).
local FIRST_INTERVAL_MS, MAX_INTERVAL_MS, INTERVAL_SHARE = 2, 100, 0.1
-- The group's listeners are looked up at most this often (a /proc walk).
local WRONG_PORT_CHECK_MS = 100
local WRONG_PORT_GRACE_MS = 500
local EXIT_WRONG_PORT = 3

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
        local t_start = cm.time.now()
        local next_check, elsewhere_since = cm.time.now() + WRONG_PORT_CHECK_MS, nil
        while cm.time.now() < t_end do
            -- The cheap connect first; the /proc lookup only once it answers.
            local connected = cm.net.connect("127.0.0.1", port, 1000)
            local ok = connected and answered_by_app(port, pgid, noted)
            local now = cm.time.now()
            if not connected and now >= next_check then
                next_check = now + WRONG_PORT_CHECK_MS
                local ports = cm.net.group_ports(pgid) or {}
                local on_port = false
                for _, p in ipairs(ports) do on_port = on_port or p == port end
                if #ports > 0 and not on_port then
                    elsewhere_since = elsewhere_since or now
                    if now - elsewhere_since >= WRONG_PORT_GRACE_MS then
                        local list = {}
                        for i, p in ipairs(ports) do list[i] = tostring(p) end
                        note("the app listens on %s, not on %d", table.concat(list, ", "), port)
                        return EXIT_WRONG_PORT
                    end
                else
                    elsewhere_since = nil
                end
            end
            if ok and url then
                local res = cm.http.get(url, { timeout = timeout,
                    connect_timeout = math.min(timeout, 1000), max_bytes = 65536 })
                ok = res and res.status >= 200 and res.status < 300
            end
            -- Exit at once: the supervisor is waiting for this exit to
            -- report ready, and a tidy teardown would only delay it.
            if ok then cm.sys.exit(0) end
            local waited = cm.time.now() - t_start
            cm.time.sleep(math.floor(math.min(MAX_INTERVAL_MS,
                math.max(FIRST_INTERVAL_MS, waited * INTERVAL_SHARE))))
        end
        return 1
    end,
}
