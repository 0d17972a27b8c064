-- The systemd notify protocol for a supervisor started by `run` under a
-- service manager (Type=notify): READY=1 once the app runs, STATUS= on
-- every transition, RELOADING=1 / READY=1 around a restart asked by HUP,
-- STOPPING=1, and WATCHDOG=1 at half of WATCHDOG_USEC.
--
-- The messages are datagrams to NOTIFY_SOCKET (cm.sys.notify), the stable
-- protocol that sd_notify(3) documents; libsystemd is not linked: see the
-- README ("Running under systemd") for why.

local M = {}
M.__index = M

-- Takes NOTIFY_SOCKET (and the watchdog settings) out of the environment,
-- so that the app does not inherit them, and returns a notifier, or nil
-- when no service manager listens.  `log(fmt, ...)` reports a failed send
-- (once).
function M.from_environment(log)
    local socket = cm.sys.getenv("NOTIFY_SOCKET")
    local usec = math.tointeger(tonumber(cm.sys.getenv("WATCHDOG_USEC") or ""))
    local wpid = math.tointeger(tonumber(cm.sys.getenv("WATCHDOG_PID") or ""))
    for _, name in ipairs({ "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID" }) do
        cm.sys.setenv(name, nil)
    end
    if not socket or socket == "" then return nil end
    local self = setmetatable({ socket = socket, log = log }, M)
    -- The watchdog is ours unless it names another process.
    if usec and usec > 0 and (not wpid or wpid == cm.sys.pid()) then
        local every = math.max(1, usec // 2000)
        self.watchdog = cm.time.timer(every, every, function() self:send("WATCHDOG=1") end)
    end
    return self
end

function M:send(text)
    local ok, err = cm.sys.notify(self.socket, text)
    if not ok and not self.failed then
        self.failed = true
        self.log("cannot notify the service manager (%s): %s", self.socket, err)
    end
    return ok
end

-- A lifecycle transition; `detail` is what the session log says about it.
function M:transition(to, detail)
    local status = ("STATUS=%s%s"):format(to, detail or "")
    if to == "running" then
        self:send("READY=1\n" .. status)
    else
        self:send(status)
    end
end

-- A restart of the app asked for by HUP: READY=1 follows when it runs again.
function M:reloading()
    self:send(("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=restarting the app"):format(
        math.floor(cm.time.now() * 1000)))
end

function M:stopping()
    self:send("STOPPING=1\nSTATUS=stopping")
end

function M:close()
    if self.watchdog then self.watchdog:stop() end
    self.watchdog = nil
end

return M
