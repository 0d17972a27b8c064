-- Runs a user's policy file (manager.policy) in an allow-listed environment.
-- The manager calls it only inside the limited child of lua/usercode.lua
-- (commands/_user.lua), never in a command or the supervisor itself.
--
-- The file is loaded as text only (crafted bytecode can crash the VM) with
-- an environment that holds pure functions and nothing that reaches the
-- outside world: no io, os.execute, require, load*, dofile, package, debug,
-- cm, collectgarbage, coroutine, getmetatable/setmetatable.  An instruction
-- budget, set with debug.sethook from this (trusted) side, stops an endless
-- loop.  Whatever goes wrong is returned as "file:line: what" so that the
-- caller can report it and let the built-in policy decide.

local M = {}

M.DEFAULT_BUDGET = 1000000 -- VM instructions for loading plus one decision
M.HOOK_STEP = 1000         -- the count hook fires every this many instructions
M.BUDGET_MESSAGE = "policy exceeded its instruction budget"

local function copy(t, skip)
    local c = {}
    for k, v in pairs(t) do
        if not (skip and skip[k]) then c[k] = v end
    end
    return c
end

-- Where a policy's print goes: the session log when one is open, else stdout.
function M.default_print(text)
    if cm.log.path() then
        cm.log.event("policy: " .. text)
    else
        io.stdout:write("policy: ", text, "\n")
    end
end

-- The run's budget state: the hook counts, and once over budget every
-- protected call made by the policy re-raises, so a pcall inside the policy
-- cannot swallow the stop.
local function new_budget(budget)
    return { left = math.max(1, budget // M.HOOK_STEP), exceeded = nil }
end

-- The string library the policy sees, without string.dump (bytecode of a
-- function it can reach).  confine() makes it the strings' metatable's
-- __index too, so ("").dump is gone as well: call it only in the process
-- that exists to run the policy (it changes every string's methods there).
local function sandbox_string()
    return M.string or copy(string, { dump = true })
end

function M.confine()
    if M.string then return end
    M.string = copy(string, { dump = true })
    getmetatable("").__index = M.string
end

-- The environment of one loaded policy.  `state` holds the current run
-- (its budget) and print function, so a cached policy serves many runs.
local function environment(state)
    local env = {
        math = copy(math),
        string = sandbox_string(),
        table = copy(table),
        utf8 = copy(utf8),
        os = { time = os.time, clock = os.clock },
        pairs = pairs, ipairs = ipairs, next = next, select = select, type = type,
        tostring = tostring, tonumber = tonumber, error = error, assert = assert,
    }
    env.pcall = function(f, ...)
        local results = table.pack(pcall(f, ...))
        if state.run.exceeded then error(state.run.exceeded, 0) end
        return table.unpack(results, 1, results.n)
    end
    env.print = function(...)
        local parts = table.pack(...)
        for i = 1, parts.n do parts[i] = tostring(parts[i]) end
        state.print(table.concat(parts, "\t", 1, parts.n))
    end
    env._G = env
    return env
end

-- Runs fn(...) under the instruction budget; returns pcall's results.
local function with_budget(run, fn, ...)
    local old_hook, old_mask, old_count = debug.gethook()
    debug.sethook(function()
        run.left = run.left - 1
        if run.left < 0 then
            if not run.exceeded then
                local where = debug.getinfo(2, "Sl")
                local pos = (where and where.currentline and where.currentline > 0)
                    and (where.short_src .. ":" .. where.currentline .. ": ") or ""
                run.exceeded = pos .. M.BUDGET_MESSAGE
            end
            error(run.exceeded, 0)
        end
    end, "", M.HOOK_STEP)
    local results = table.pack(pcall(fn, ...))
    debug.sethook(old_hook, old_mask, old_count)
    if run.exceeded then return false, run.exceeded end
    return table.unpack(results, 1, results.n)
end

local function deep_copy(v, seen)
    if type(v) ~= "table" then return v end
    seen = seen or {}
    if seen[v] then return seen[v] end
    local c = {}
    seen[v] = c
    for k, x in pairs(v) do c[deep_copy(k, seen)] = deep_copy(x, seen) end
    return c
end

-- Checks a user decision.  known: set of backend names; default_how(ctx)
-- gives a switch's `how` when the policy leaves it out.  Returns the
-- decision (normalised), or nil and what is wrong.
function M.validate(decision, ctx, known, default_how)
    if type(decision) ~= "table" then
        return nil, ("returned %s, expected a decision table { action = \"keep\" | \"switch\", ... }")
            :format(type(decision))
    end
    local reason = decision.reason
    if reason ~= nil and type(reason) ~= "string" then
        return nil, "the decision's reason must be a string"
    end
    if decision.action == "keep" then
        return { action = "keep", reason = reason or "user policy: keep" }
    end
    if decision.action ~= "switch" then
        return nil, ("action must be \"keep\" or \"switch\", not %s"):format(
            type(decision.action) == "string" and ("%q"):format(decision.action) or type(decision.action))
    end
    local to = decision.to
    if type(to) ~= "string" or not known[to] then
        return nil, ("switch to an unknown backend: %s"):format(tostring(to))
    end
    if to == ctx.active then
        return nil, ("switch to '%s', which is already the active backend"):format(to)
    end
    -- how: "live", "restart" or "none"; the older restart = true|false
    -- still means "restart" or "none".
    local how = decision.how
    if how == nil and decision.restart ~= nil then
        if type(decision.restart) ~= "boolean" then return nil, "the decision's restart must be true or false" end
        how = decision.restart and "restart" or "none"
    end
    if how == nil then how = default_how and default_how(ctx) or "restart" end
    if how ~= "live" and how ~= "restart" and how ~= "none" then
        return nil, ("the decision's how must be \"live\", \"restart\" or \"none\", not %s"):format(
            type(how) == "string" and ("%q"):format(how) or type(how))
    end
    return { action = "switch", to = to, how = how, reason = reason or ("user policy: switch to " .. to) }
end

-- Loaded policies by path, so that a policy may keep state between
-- decisions (its upvalues) while its file is unchanged, within one process.
-- The manager runs each decision in a fresh child (lua/usercode.lua), so
-- there a policy starts from its file every time.
local loaded = {} -- path -> { stamp = "...", fn = function, state = {run=, print=} }

local function load_policy(path, run, print_fn)
    local st = cm.fs.stat(path)
    if not st then return nil, ("%s: cannot open the policy file"):format(path) end
    -- Only a regular file: opening a FIFO would block the caller forever.
    if st.type ~= "file" then return nil, ("%s: the policy is not a regular file"):format(path) end
    local stamp = ("%s|%s"):format(tostring(st.mtime), tostring(st.size))
    local cached = loaded[path]
    if cached and cached.stamp == stamp then
        cached.state.run, cached.state.print = run, print_fn
        return cached.fn
    end
    local state = { run = run, print = print_fn }
    local chunk, err = loadfile(path, "t", environment(state))
    if not chunk then return nil, err end
    local ok, fn = with_budget(run, chunk)
    if not ok then return nil, tostring(fn) end
    if type(fn) ~= "function" then
        return nil, ("%s: the policy file must return a function, not %s"):format(path, type(fn))
    end
    loaded[path] = { stamp = stamp, fn = fn, state = state }
    return fn
end

-- Runs the policy in `path` on a copy of ctx.  opts: { known = {name=true},
-- budget = instructions, print = fn(text), builtin = fn(ctx) (passed to the
-- policy as its second argument, so it can defer to the built-in), how =
-- fn(ctx) (a switch's how when the policy gives none) }.
-- Returns the validated decision, or nil and "file:line: what".
function M.run(path, ctx, opts)
    opts = opts or {}
    local run = new_budget(opts.budget or M.DEFAULT_BUDGET)
    local fn, err = load_policy(path, run, opts.print or M.default_print)
    if not fn then return nil, err end
    local builtin = opts.builtin
    local ok, decision = with_budget(run, fn, deep_copy(ctx), builtin and function(c)
        return deep_copy(builtin(c))
    end)
    if not ok then return nil, tostring(decision) end
    local where = debug.getinfo(fn, "S")
    local pos = ("%s:%d: "):format(where.short_src, where.linedefined)
    local valid, why = M.validate(decision, ctx, opts.known or {}, opts.how)
    if not valid then return nil, pos .. "the policy " .. why end
    return valid
end

return M
