-- The supervisor's periodic backend check (docs/design.md §5 and §7): check every
-- backend at once and learn which one the app serves with, count the
-- serving one's consecutive failures and the configured one's healthy
-- checks, and let the fallback policy decide.  A switch is runtime state:
-- the app is switched live through its endpoint (or restarted with the
-- backend in run/app-config.json), the serving backend and why go to
-- run/state.json, and config.json is never written here.

local appapi = require("appapi")

local M = {}

-- Runs `chat-manager ARGS...` for this root and decodes its JSON answer.
-- Children keep libcurl and the TLS stacks out of the long-lived
-- supervisor (its RSS stays small), and a request that hangs or crashes
-- cannot take it down.
local function run_child(sv, timeout_ms, ...)
    local argv = { cm.sys.exe(), "--root", sv.inst.root, "--json", "--no-color", ... }
    local res, err = cm.proc.run({ argv = argv, timeout = timeout_ms })
    if not res then return nil, err end
    local doc = cm.json.decode(res.stdout)
    if type(doc) ~= "table" then
        return nil, ("%s gave no answer (exit %s): %s"):format(table.concat({ ... }, " "),
            tostring(res.code), (res.stderr or ""):sub(1, 200))
    end
    return doc
end

-- Every backend's health and the app's own view (`backend status --json`).
local function check_in_child(sv)
    local doc, err = run_child(sv, (sv.settings:get("manager.health_timeout") + 5) * 1000,
        "backend", "status")
    if not doc then return nil, err end
    if type(doc.backends) ~= "table" then return nil, "backend status gave no backends" end
    local results = {}
    for name, r in pairs(doc.backends) do
        if type(r) == "table" then results[name] = require("backends").from_json(r) end
    end
    return results, type(doc.serving) == "string" and doc.serving or nil
end

-- The user's last explicit `backend switch` (run/user-switch.json), or nil.
local function user_switch(sv)
    local text = cm.fs.read(sv.inst.run_dir .. "/" .. appapi.USER_SWITCH_FILE, 4096)
    local doc = text and cm.json.decode(text)
    if type(doc) == "table" and type(doc.backend) == "string" and type(doc.at) == "number" then
        return doc
    end
    return nil
end

-- Records the backend the app serves with now, who chose it and why.
function M.set_serving(sv, name, by, reason)
    local ctx = sv.ctx
    ctx.serving, ctx.serving_by, ctx.serving_reason = name, by, reason
    ctx.serving_since = cm.time.wall()
    ctx.backend_failures, ctx.configured_healthy = 0, 0
end

-- A live switch the user made since the last look (`backend switch` leaves
-- run/user-switch.json): the app serves with it, and no fallback undoes it
-- within the cooldown.
local function notice_user_switch(sv)
    local ctx = sv.ctx
    local us = user_switch(sv)
    if not us or us.at <= (ctx.user_switch_at or ctx.started_at) then return end
    ctx.user_switch_at = us.at
    M.set_serving(sv, us.backend, "user", "chosen with backend switch")
    ctx.last_switch, ctx.last_switch_by = us.at, "user"
    sv:log("backend '%s' chosen by the user; no fallback undoes it for %g s", us.backend,
        sv.settings:get("manager.fallback_cooldown"))
end

-- Makes the app serve with decision.to, the way the decision says.
local function apply(sv, decision, from)
    local ctx = sv.ctx
    local to, how = decision.to, decision.how
    if how == "live" then
        local res, err = run_child(sv, appapi.SWITCH_TIMEOUT_MS + 5000, "_app", "switch",
            tostring(sv.port), to)
        local outcome = res and res.outcome
        if outcome == "switched" or outcome == "already" then
            sv:log("backend switched from '%s' to '%s' live (pid %d, no restart): %s", from, to,
                ctx.pid or 0, decision.reason or "")
        elseif outcome == "refused" then
            ctx.refused[to] = { why = tostring(res.error), at = cm.time.wall() }
            sv:log("the app refused to switch to '%s': %s", to, tostring(res.error))
            return
        elseif outcome == "missing" or outcome == "off" then
            ctx.no_live = true
            sv:log("the app cannot switch live (%s): restarting it with '%s'",
                outcome == "off" and "manager.app.switch_path is null" or tostring(res.error), to)
            how = "restart"
        else
            sv:log("live switch to '%s' failed: %s", to, tostring(res and res.error or err))
            return
        end
    end
    M.set_serving(sv, to, "policy", decision.reason)
    ctx.last_switch, ctx.last_switch_by = cm.time.wall(), "policy"
    if how == "restart" then
        sv:log("backend switched from '%s' to '%s' by a restart (run/app-config.json): %s", from, to,
            decision.reason or "")
        sv:restart_app("serving backend " .. to)
    elseif how == "none" then
        sv:log("backend switched from '%s' to '%s' (recorded only): %s", from, to, decision.reason or "")
    end
end

function M.tick(sv)
    local fallback = require("policy.fallback")
    sv:reload_settings()
    local settings, ctx = sv.settings, sv.ctx
    local configured = settings:get("backend.active")
    ctx.refused = ctx.refused or {}
    if ctx.configured_seen and ctx.configured_seen ~= configured and not ctx.serving then
        -- config.json changed under a running app that did not switch: it
        -- still serves with what it started with, until the policy acts.
        M.set_serving(sv, ctx.configured_seen, "config",
            ("config.json changed to '%s' while the app ran"):format(configured))
    end
    ctx.configured_seen = configured
    notice_user_switch(sv)
    local results, app_serving = check_in_child(sv)
    if not results then
        sv:log("backend check failed: %s", app_serving)
        return
    end
    -- The app's own word beats the record: it may have fallen back by itself.
    local serving = ctx.serving or configured
    if app_serving and app_serving ~= serving then
        sv:log("the app serves with '%s', not '%s': it switched by itself", app_serving, serving)
        M.set_serving(sv, app_serving, "app", "the app switched by itself")
        serving = app_serving
    end
    local health = {}
    for name, r in pairs(results) do health[name] = r.healthy end
    if health[serving] == true then
        ctx.backend_failures = 0
    else
        ctx.backend_failures = (ctx.backend_failures or 0) + 1
        local r = results[serving]
        sv:log("backend '%s' unhealthy (%d in a row): %s", serving, ctx.backend_failures,
            r and r.detail or "unknown backend")
    end
    if serving ~= configured and health[configured] == true then
        ctx.configured_healthy = (ctx.configured_healthy or 0) + 1
    else
        ctx.configured_healthy = 0
    end
    local now, cooldown = cm.time.wall(), settings:get("manager.fallback_cooldown")
    local refused = {}
    for name, r in pairs(ctx.refused) do
        if now - r.at < cooldown then refused[name] = r.why else ctx.refused[name] = nil end
    end
    local decision, policy_err = fallback.evaluate(settings, fallback.context(settings, {
        active = serving, configured = configured, health = health,
        order = require("backends").names(settings.root, settings),
        failures = ctx.backend_failures, configured_healthy = ctx.configured_healthy,
        why = "health", last_switch = ctx.last_switch, last_switch_by = ctx.last_switch_by,
        live = settings:optional("manager.app.switch_path") ~= nil and not ctx.no_live,
        refused = refused,
    }))
    if policy_err then sv:log("user policy failed: %s", policy_err) end
    if decision.action ~= "switch" or decision.to == serving then
        -- Why an unhealthy backend stays (the cooldown, the count, no
        -- healthy alternative, ...): what a user reading the log asks next.
        if health[serving] ~= true and type(decision.reason) == "string" then
            sv:log("keeping '%s': %s", serving, decision.reason)
        end
        return decision
    end
    apply(sv, decision, serving)
    sv:save_state()
    return decision
end

return M
