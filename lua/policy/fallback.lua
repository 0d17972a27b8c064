-- The fallback policy (docs/design.md §7): given the health of every backend, keep
-- the backend the app serves with, switch to another (a fallback), or go
-- back to the configured one (a failback).  A switch is runtime state: the
-- caller switches the running app and records it in run/state.json; the
-- policy never edits config.json.  docs/backends.md has the formats with
-- worked examples.
--
-- ctx = {
--   active = "ollama",            the backend the app serves with now
--   configured = "ollama",        backend.active in config.json (the user's choice)
--   auto_fallback = true,         backend.auto_fallback
--   health = { name = true|false|nil },   nil: unknown, counted as not healthy
--   order = { "ollama", ... },    preference order, given by the caller
--   failures = 2,                 consecutive failed checks of the active one
--   fallback_after = 2,           manager.fallback_after
--   configured_healthy = 0,       consecutive healthy checks of the configured
--                                 one while another serves
--   failback_after = 3,           manager.failback_after
--   why = "start" | "health",     asked before launching, or by the health loop
--   now = seconds,                wall clock
--   last_switch = seconds | nil,  when the serving backend last changed
--   last_switch_by = "policy" | "user" | nil,   who changed it
--   cooldown = 300,               manager.fallback_cooldown
--   live = true,                  the running app can switch live (its switch
--                                 endpoint exists); false: only a restart
--   refused = { name = "why" },   backends the app refused to switch to lately
-- }
-- decision = { action = "keep", reason = "..." }
--          | { action = "switch", to = name, how = "live" | "restart" | "none",
--              reason = "..." }
--   how: "live" through the app's switch endpoint (same PID), "restart" the
--   app with `to` in run/app-config.json, "none" only record it (at start:
--   the app is launched with it).
--
-- decide() is the built-in policy: a pure function.  evaluate() runs the
-- user's policy file (manager.policy) in the sandbox instead when there is
-- one, and falls back to decide() when that fails.

local sandbox = require("policy.sandbox")

local M = {}

M.DEFAULT_FALLBACK_AFTER = 2
M.DEFAULT_FAILBACK_AFTER = 3
M.DEFAULT_COOLDOWN = 300

local function keep(reason) return { action = "keep", reason = reason } end

local function order_of(ctx)
    if type(ctx.order) == "table" and #ctx.order > 0 then return ctx.order end
    local names = {}
    for name in pairs(ctx.health or {}) do names[#names + 1] = name end
    table.sort(names)
    return names
end

-- The first healthy backend in preference order other than the active one
-- that the app has not refused lately; and the first it refused.
local function first_healthy(ctx)
    local health, refused = ctx.health or {}, ctx.refused or {}
    local first_refused
    for _, name in ipairs(order_of(ctx)) do
        if name ~= ctx.active and health[name] == true then
            if not refused[name] then return name end
            first_refused = first_refused or name
        end
    end
    return nil, first_refused
end

-- How a switch reaches the app: at start nothing runs yet; else live when
-- the app can, else a restart.
function M.how(ctx)
    if (ctx.why or "health") == "start" then return "none" end
    return ctx.live == false and "restart" or "live"
end

local function switch(ctx, to, reason)
    return { action = "switch", to = to, how = M.how(ctx), reason = reason }
end

-- Seconds since the user's own switch while it still pins the backend.
local function pinned_for(ctx)
    if ctx.last_switch_by ~= "user" or not ctx.last_switch or not ctx.now then return nil end
    local age = ctx.now - ctx.last_switch
    if age < (ctx.cooldown or M.DEFAULT_COOLDOWN) then return age end
    return nil
end

function M.decide(ctx)
    local active = tostring(ctx.active)
    local health = ctx.health or {}
    local why = ctx.why or "health"
    local pinned = why ~= "start" and pinned_for(ctx)
    if pinned then
        return keep(("'%s' was chosen by the user %d s ago (backend switch); not changed within " ..
            "the cooldown (%d s)"):format(active, math.floor(pinned),
            math.floor(ctx.cooldown or M.DEFAULT_COOLDOWN)))
    end
    -- Failback: the configured backend has been healthy long enough.
    local configured = ctx.configured
    if why ~= "start" and configured ~= nil and configured ~= ctx.active and health[configured] == true then
        local streak = ctx.configured_healthy or 0
        local needed = ctx.failback_after or M.DEFAULT_FAILBACK_AFTER
        local cooldown = ctx.cooldown or M.DEFAULT_COOLDOWN
        local since = ctx.last_switch and ctx.now and ctx.now - ctx.last_switch
        if streak >= needed and since and since < cooldown then
            return keep(("serving with '%s'; the configured backend '%s' is healthy again, but the " ..
                "last switch was %d s ago (cooldown %d s)"):format(active, configured, math.floor(since),
                math.floor(cooldown)))
        end
        if streak >= needed then
            return switch(ctx, configured, ("failback: the configured backend '%s' has been healthy " ..
                "for %d checks"):format(configured, streak))
        end
        if health[ctx.active] == true then
            return keep(("serving with '%s'; the configured backend '%s' is healthy again " ..
                "(%d of %d checks before a failback)"):format(active, configured, streak, needed))
        end
    end
    if health[ctx.active] == true then
        return keep(("active backend '%s' is healthy"):format(active))
    end
    local state = health[ctx.active] == false and "unhealthy" or "in unknown health"
    if not ctx.auto_fallback then
        return keep(("active backend '%s' is %s, but auto_fallback is off"):format(active, state))
    end
    if why ~= "start" then
        local failures = ctx.failures or 0
        local needed = ctx.fallback_after or M.DEFAULT_FALLBACK_AFTER
        if failures < needed then
            return keep(("active backend '%s' is %s (%d of %d failed checks before a fallback)")
                :format(active, state, failures, needed))
        end
        local cooldown = ctx.cooldown or M.DEFAULT_COOLDOWN
        if ctx.last_switch and ctx.now and ctx.now - ctx.last_switch < cooldown then
            return keep(("active backend '%s' is %s, but the last switch was %d s ago (cooldown %d s)")
                :format(active, state, math.floor(ctx.now - ctx.last_switch), math.floor(cooldown)))
        end
    end
    local to, refused = first_healthy(ctx)
    if not to and refused then
        return keep(("active backend '%s' is %s; '%s' is healthy but the app refused to switch to it: %s")
            :format(active, state, refused, tostring(ctx.refused[refused])))
    end
    if not to then
        return keep(("active backend '%s' is %s and no other backend is healthy"):format(active, state))
    end
    if why == "start" then
        return switch(ctx, to, ("active backend '%s' is %s at start; '%s' is healthy"):format(active, state, to))
    end
    return switch(ctx, to, ("active backend '%s' failed %d consecutive checks; '%s' is healthy")
        :format(active, ctx.failures or 0, to))
end

-- Fills the parts of a ctx that come from the config (those already in
-- `ctx` win), for callers such as the supervisor: configured, active,
-- auto_fallback, fallback_after, failback_after, cooldown, now.  The caller
-- gives the preference order (ctx.order): the policy knows no registry.
function M.context(settings, ctx)
    ctx = ctx or {}
    local function default(key, value)
        if ctx[key] == nil then ctx[key] = value end
    end
    default("configured", settings:get("backend.active"))
    default("active", ctx.configured)
    default("auto_fallback", settings:get("backend.auto_fallback"))
    default("fallback_after", settings:get("manager.fallback_after"))
    default("failback_after", settings:get("manager.failback_after"))
    default("cooldown", settings:get("manager.fallback_cooldown"))
    default("now", cm.time.wall())
    default("why", "health")
    default("failures", 0)
    default("health", {})
    default("configured_healthy", 0)
    default("live", true)
    default("refused", {})
    default("order", {})
    return ctx
end

-- Runs the user's policy in a limited child (lua/usercode.lua): the
-- validated decision, or nil and "file:line: what".  Its prints go to
-- opts.print (default: the session log or stdout), at most
-- manager.user_code.max_output bytes of them.
function M.run_user_policy(settings, path, ctx, known, opts)
    local trusted, why = require("usercode").trusted(path)
    if not trusted then return nil, why end
    local names = {}
    for name in pairs(known) do names[#names + 1] = name end
    table.sort(names)
    local doc, err = require("usercode").call(settings.root, settings, "policy",
        { path = path, ctx = ctx, known = cm.json.array(names) })
    if not doc then return nil, ("%s: the policy %s"):format(path, err) end
    local print_fn = opts.print or sandbox.default_print
    for _, text in ipairs(type(doc.prints) == "table" and doc.prints or {}) do
        if type(text) == "string" then print_fn(text) end
    end
    if math.type(doc.dropped) == "integer" and doc.dropped > 0 then
        print_fn(("(%d more bytes of output dropped)"):format(doc.dropped))
    end
    if type(doc.error) == "string" then return nil, doc.error end
    -- The child validated it; validate again here, where it is trusted.
    local valid, why = sandbox.validate(doc.decision, ctx, known, M.how)
    if not valid then return nil, ("%s: the policy %s"):format(path, why) end
    return valid
end

-- The decision for ctx: the user's policy (manager.policy) when configured,
-- else the built-in one.  A user policy that fails (syntax or runtime error,
-- endless loop, a bad decision) is reported as "file:line: what": the
-- built-in policy decides, its reason says so, and the error is the second
-- result (and decision.policy_error).
-- opts: { print = fn(text) for the policy's print, budget = instructions }.
function M.evaluate(settings, ctx, opts)
    opts = opts or {}
    local policy = settings and settings:get("manager.policy")
    if type(policy) ~= "string" or policy == "" then return M.decide(ctx) end
    local path = settings.resolve and settings:resolve(policy) or policy
    local known = {}
    for _, name in ipairs(ctx.order or {}) do known[name] = true end
    for name in pairs(ctx.health or {}) do known[name] = true end
    local decision, err = M.run_user_policy(settings, path, ctx, known, opts)
    if decision then
        decision.policy = path
        return decision
    end
    decision = M.decide(ctx)
    decision.reason = ("%s (user policy failed: %s; the built-in policy decided)"):format(decision.reason, err)
    decision.policy_error = err
    return decision, err
end

return M
