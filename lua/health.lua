-- The supervisor's periodic backend check (DESIGN §5 and §7): check every
-- backend at once, count the active one's consecutive failures, and let the
-- fallback policy decide; a switch is written to config.json and the app is
-- restarted gracefully, with the reason in the session log.

local M = {}

-- Checks every backend in a child (`backend status --json`): libcurl and
-- the TLS stacks never load into the long-lived supervisor (its RSS stays
-- small), and a check that hangs or crashes cannot take it down.
local function check_in_child(sv)
    local limit = (sv.settings:get("manager.health_timeout") + 5) * 1000
    local res, err = cm.proc.run({
        argv = { cm.sys.exe(), "--root", sv.inst.root, "--json", "--no-color", "backend", "status" },
        timeout = limit,
    })
    if not res then return nil, err end
    local doc = cm.json.decode(res.stdout)
    if type(doc) ~= "table" or type(doc.backends) ~= "table" then
        return nil, ("backend status gave no answer (exit %d): %s"):format(res.code,
            (res.stderr or ""):sub(1, 200))
    end
    local results = {}
    for name, r in pairs(doc.backends) do
        if type(r) == "table" then results[name] = require("backends").from_json(r) end
    end
    return results
end

function M.tick(sv)
    local backends = require("backends")
    local fallback = require("policy.fallback")
    local settings = sv.settings
    local ctx = sv.ctx
    local results, err = check_in_child(sv)
    if not results then
        sv:log("backend check failed: %s", err)
        return
    end
    local active = settings:get("backend.active")
    local health = {}
    for name, r in pairs(results) do health[name] = r.healthy end
    if health[active] == true then
        ctx.backend_failures = 0
    else
        ctx.backend_failures = (ctx.backend_failures or 0) + 1
        local r = results[active]
        sv:log("backend '%s' unhealthy (%d in a row): %s", active, ctx.backend_failures,
            r and r.detail or "unknown backend")
    end
    local decision, policy_err = fallback.evaluate(settings, fallback.context(settings, {
        health = health, failures = ctx.backend_failures, why = "health",
        last_switch = ctx.last_switch,
    }))
    if policy_err then sv:log("user policy failed: %s", policy_err) end
    if decision.action ~= "switch" or decision.to == active then return decision end
    local ok, err = backends.switch(settings, decision.to)
    if not ok then
        sv:log("fallback to '%s' failed: %s", decision.to, err)
        return decision
    end
    ctx.last_switch = cm.time.wall()
    ctx.backend_failures = 0
    sv:log("backend switched from '%s' to '%s': %s", active, decision.to, decision.reason or "")
    sv:reload_settings()
    sv:save_state()
    if decision.restart ~= false then sv:restart_app("backend switched to " .. decision.to) end
    return decision
end

return M
