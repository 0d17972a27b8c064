-- The fallback policy (DESIGN §7): given the health of every backend, keep
-- the active one or switch to another.
--
-- ctx = {
--   active = "ollama",            the active backend
--   auto_fallback = true,         backend.auto_fallback
--   health = { name = true|false|nil },   nil: unknown, counted as not healthy
--   order = { "ollama", ... },    preference order (backend.order or registry)
--   failures = 2,                 consecutive failed checks of the active one
--   fallback_after = 2,           manager.fallback_after
--   why = "start" | "health",     asked before launching, or by the health loop
--   now = seconds,                wall clock
--   last_switch = seconds | nil,  when the policy last switched
--   cooldown = 300,               manager.fallback_cooldown
-- }
-- decision = { action = "keep", reason = "..." }
--          | { action = "switch", to = name, restart = bool, reason = "..." }
--
-- decide() is the built-in policy: a pure function.  evaluate() runs the
-- user's policy file (manager.policy) in the sandbox instead when there is
-- one, and falls back to decide() when that fails.

local sandbox = require("policy.sandbox")

local M = {}

M.DEFAULT_FALLBACK_AFTER = 2
M.DEFAULT_COOLDOWN = 300

local function keep(reason) return { action = "keep", reason = reason } end

local function order_of(ctx)
    if type(ctx.order) == "table" and #ctx.order > 0 then return ctx.order end
    local names = {}
    for name in pairs(ctx.health or {}) do names[#names + 1] = name end
    table.sort(names)
    return names
end

-- The first healthy backend in preference order other than the active one.
local function first_healthy(ctx)
    local health = ctx.health or {}
    for _, name in ipairs(order_of(ctx)) do
        if name ~= ctx.active and health[name] == true then return name end
    end
    return nil
end

function M.decide(ctx)
    local active = tostring(ctx.active)
    local health = ctx.health or {}
    if health[ctx.active] == true then
        return keep(("active backend '%s' is healthy"):format(active))
    end
    local state = health[ctx.active] == false and "unhealthy" or "in unknown health"
    if not ctx.auto_fallback then
        return keep(("active backend '%s' is %s, but auto_fallback is off"):format(active, state))
    end
    local why = ctx.why or "health"
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
    local to = first_healthy(ctx)
    if not to then
        return keep(("active backend '%s' is %s and no other backend is healthy"):format(active, state))
    end
    if why == "start" then
        return { action = "switch", to = to, restart = false,
                 reason = ("active backend '%s' is %s at start; '%s' is healthy"):format(active, state, to) }
    end
    return { action = "switch", to = to, restart = true,
             reason = ("active backend '%s' failed %d consecutive checks; '%s' is healthy")
                 :format(active, ctx.failures or 0, to) }
end

-- Fills the parts of a ctx that come from the config and the registry
-- (those already in `ctx` win), for callers such as the supervisor:
-- active, auto_fallback, order, fallback_after, cooldown, now.
function M.context(settings, ctx)
    ctx = ctx or {}
    local function default(key, value)
        if ctx[key] == nil then ctx[key] = value end
    end
    default("active", settings:get("backend.active"))
    default("auto_fallback", settings:get("backend.auto_fallback"))
    default("fallback_after", settings:get("manager.fallback_after"))
    default("cooldown", settings:get("manager.fallback_cooldown"))
    default("now", cm.time.wall())
    default("why", "health")
    default("failures", 0)
    default("health", {})
    if ctx.order == nil then ctx.order = require("backends").names(settings.root, settings) end
    return ctx
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
    local decision, err = sandbox.run(path, ctx, {
        known = known, budget = opts.budget, print = opts.print, builtin = M.decide,
    })
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
