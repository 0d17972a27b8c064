-- _user JOB ARG: runs user code under kernel limits (internal; see
-- lua/usercode.lua, which starts it and reads its answer).  ARG is JSON and
-- carries the limits (memory bytes, cpu seconds, output bytes) with the
-- job's input.  Jobs:
--   policy         {path, ctx, known = {names}}: the user's fallback policy
--                  in its sandbox -> {decision | error, prints, dropped}
--   backend_load   {paths}: loads each user backend in turn -> one answer
--                  per path as it is loaded: {path, summary} | {path, error}
--   backend_check  {paths}: loads them and runs their checks at once -> one
--                  answer per path as its check ends: {path, result} |
--                  {path, error}
--   command_load   {path}: loads a user command -> {name, usage, summary,
--                  group, max_args} | {error}
-- Each answer is one JSON line after usercode.MARK on stdout; a batch job
-- answers per item as soon as it knows, so a child stopped at its deadline
-- still leaves the answers it gave (and, for loads in turn, which file it was
-- on).

local usercode = require("usercode")

local function answer(doc)
    local ok, text = pcall(cm.json.encode, doc)
    if not ok then text = cm.json.encode({ error = "its answer cannot be encoded: " .. tostring(text) }) end
    io.stdout:write(usercode.MARK, text, "\n")
    io.stdout:flush()
end

-- Loads a user backend file: the module, or nil and why.  Each file gets
-- its own global table (reads fall through to the real one), as it had
-- when each file ran in a child of its own: two files that both use a
-- global of the same name do not see each other's.
local function load_backend(path)
    local chunk, err = loadfile(path, "t", setmetatable({}, { __index = _G }))
    if not chunk then return nil, err end
    local ok, mod = pcall(chunk)
    if not ok then return nil, tostring(mod) end
    if type(mod) ~= "table" or type(rawget(mod, "check")) ~= "function" then
        return nil, "a backend module must return { name = ..., check = function }"
    end
    return mod
end

local jobs = {}

function jobs.policy(ctx, arg)
    local sandbox = require("policy.sandbox")
    sandbox.confine()
    local prints, size, dropped = {}, 0, 0
    local function print_fn(text)
        text = tostring(text):gsub("%z", "\\0")
        if size + #text > arg.output then
            dropped = dropped + #text
        else
            prints[#prints + 1] = text
            size = size + #text
        end
    end
    local known = {}
    for _, name in ipairs(arg.known or {}) do known[name] = true end
    local decision, err = sandbox.run(arg.path, arg.ctx, {
        known = known, print = print_fn, builtin = require("policy.fallback").decide,
        how = require("policy.fallback").how,
    })
    if err and not err:find(arg.path, 1, true) then err = arg.path .. ": " .. err end
    return { decision = decision, error = err, prints = cm.json.array(prints), dropped = dropped }
end

-- Backends are loaded in the order given, each answered before the next is
-- read: when the child is stopped, the first path without an answer is the
-- one it was on.
function jobs.backend_load(_, arg)
    for _, path in ipairs(arg.paths or {}) do
        local mod, err = load_backend(path)
        local summary = mod and rawget(mod, "summary")
        answer({ path = path, error = err, summary = type(summary) == "string" and summary or nil })
    end
end

function jobs.command_load(_, arg)
    return require("registry").describe_user_command(arg.path)
end

-- Each check in its own task, like check_all: a slow one does not hold up
-- the answers of the others.
function jobs.backend_check(ctx, arg)
    local settings, serr = require("settings").load(ctx.root)
    local backends = require("backends")
    local tasks = {}
    for _, path in ipairs(arg.paths or {}) do
        local mod, err = load_backend(path)
        if not settings or not mod then
            answer({ path = path, error = serr or err })
        else
            tasks[#tasks + 1] = cm.task.spawn(function()
                answer({ path = path, result = backends.to_json(backends.run_check(mod, settings)) })
            end)
        end
    end
    for _, t in ipairs(tasks) do t:join() end
end

return {
    name = "_user",
    usage = "_user JOB ARG",
    summary = "internal: runs user code under limits",
    hidden = true,
    run = function(ctx, args)
        local job = jobs[args[1] or ""]
        local arg = cm.json.decode(args[2] or "")
        if not job or type(arg) ~= "table" then
            answer({ error = "_user: unknown job or bad argument" })
            return 2
        end
        local ok, err = cm.sys.limit({ memory = math.tointeger(arg.memory) or 0,
                                       cpu = math.tointeger(arg.cpu) or 0 })
        if not ok then
            answer({ error = "cannot set the limits: " .. tostring(err) })
            return 1
        end
        local done, doc = pcall(job, ctx, arg)
        -- (batch jobs answer as they go and return nothing)
        if not done or doc ~= nil then answer(done and doc or { error = tostring(doc) }) end
        return 0
    end,
}
