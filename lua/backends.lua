-- The backend registry and the concurrent health checker (docs/design.md §6).
--
-- A backend is a module { name, summary, check(settings) -> result }.  The
-- registry is every embedded module under backends. plus every .lua file in
-- <root>/backends/ (users' own), so the set of valid names is never a
-- hard-coded list.  check_all runs every check in its own task: the C
-- primitives they call (cm.http.get, cm.proc.run, ...) park only their task,
-- so a status costs the slowest check, not the sum.
--
-- A result is { healthy = true|false|nil, detail = "...", hint = "...",
-- ms = n, info = {...} }: nil means "could not tell" (? unknown).

local ui = require("ui")

local M = {}

M.PREFIX = "backends."

-- A check that has not finished this long after the health timeout is
-- abandoned and reported as unknown, so one stuck backend cannot hold up a
-- status (or the supervisor's health loop) forever.
M.DEADLINE_SLACK_MS = 2000

-- Warnings go to stderr: stdout may be --json that a script parses.
local warned = {}
local function warn_once(fmt, ...)
    local msg = fmt:format(...)
    if warned[msg] then return end
    warned[msg] = true
    io.stdout:flush()
    io.stderr:write(ui.paint("yellow", "[WARNING]") .. " " .. msg .. "\n")
end

local function valid_module(mod)
    return type(mod) == "table" and type(mod.check) == "function"
end

-- Users' backends never run in this process: a module here is a stand-in
-- (user = true) whose check runs the file in a limited child
-- (lua/usercode.lua) with a hard deadline, so an endless loop at load time
-- or in a check (even one wrapped in its own pcall, even inside a C
-- function) cannot hang a command or the supervisor.  Loading (to learn
-- whether the file is a backend, and its summary) happens in such a child
-- too, once per file and mtime, so that the supervisor's periodic checks do
-- not reload (and re-warn about) unchanged files.
--
-- One child serves all the files: starting one costs about as much as a
-- whole `backend status`, so a child per file made 32 user backends cost
-- twelve times that.  The price is shared fate inside the child: a check
-- stuck in a C function (the instruction budget stops Lua loops), or one
-- that ends the child, leaves the user checks that had not answered yet
-- unknown for that round (built-in backends are not affected).  Loading
-- goes on in a fresh child after a stop, so each file still gets a whole
-- deadline (load_in_children).  Each file has its own globals (_user.lua).
local user_cache = {} -- path -> { stamp = "...", mod = module|false }

local check_users -- (below) checks stand-ins in one child

local function user_stand_in(name, path, summary)
    local mod = { name = name, summary = summary, source = path, user = true }
    function mod.check(settings)
        return check_users(settings, { [name] = mod })[name]
    end
    return mod
end

-- The answers of a batch child by path, and the reason it gave for the
-- rest (an answer without a path: the job itself failed), if any.
local function answers_by_path(answers)
    local by_path, reason = {}, nil
    for _, a in ipairs(answers) do
        if type(a.path) == "string" then
            by_path[a.path] = a
        elseif type(a.error) == "string" then
            reason = a.error
        end
    end
    return by_path, reason
end

-- Loads the files of tasks ({name, path}) in limited children, in turn,
-- and sets t.mod (a stand-in) or t.err (why not) on each.  When a child
-- stops early, a fresh one goes on from the first file it did not answer,
-- so that file gets a whole deadline of its own; a file that a child
-- started with and did not answer is the one to blame.  Every round
-- settles at least one file.
local function load_in_children(root, tasks)
    local settings = require("usercode").settings_of(root)
    local pending = tasks
    while #pending > 0 do
        local paths = {}
        for i, t in ipairs(pending) do paths[i] = t.path end
        local answers, err = require("usercode").run(root, settings, "backend_load", { paths = paths })
        local by_path, reason = answers_by_path(answers)
        local rest, answered = {}, false
        for _, t in ipairs(pending) do
            local a = by_path[t.path]
            if a and type(a.error) == "string" then
                t.err, answered = a.error, true
            elseif a then
                t.mod = user_stand_in(t.name, t.path, type(a.summary) == "string" and a.summary or nil)
                answered = true
            else
                rest[#rest + 1] = t
            end
        end
        if not answered and #rest > 0 then
            local t = table.remove(rest, 1)
            t.err = ("%s: loading it %s"):format(t.path, reason or err or "gave no answer")
        end
        pending = rest
    end
end

-- The stand-in for each loadable user backend file (paths: name -> path).
-- Broken ones are named once and left out.
local function load_user_backends(root, paths)
    local mods, tasks, trusted = {}, {}, {}
    for name, path in pairs(paths) do
        local st = cm.fs.stat(path)
        -- Only a regular file: opening a FIFO would block.
        if st and st.type == "file" then
            local stamp = ("%s|%s|%s|%s"):format(tostring(st.mtime), tostring(st.size),
                tostring(st.mode), tostring(st.uid))
            local cached = user_cache[path]
            if cached and cached.stamp == stamp then
                mods[name] = cached.mod or nil
            else
                local t = { name = name, path = path, stamp = stamp }
                tasks[#tasks + 1] = t
                local ok, why = require("usercode").trusted(path)
                if ok then trusted[#trusted + 1] = t else t.err = why end
            end
        end
    end
    if #tasks == 0 then return mods end
    -- In a fixed order, so that which file comes after which (and the order
    -- of the warnings) is the same from run to run.
    local function by_path(a, b) return a.path < b.path end
    table.sort(trusted, by_path)
    table.sort(tasks, by_path)
    load_in_children(root, trusted)
    for _, t in ipairs(tasks) do
        if not t.mod then
            local text = tostring(t.err)
            -- a refusal is an error, not a warning: the user must act
            if text:find(": not run (", 1, true) then
                io.stdout:flush()
                io.stderr:write(ui.paint("red", "[ERROR]") .. " " .. text .. "\n")
            else
                warn_once("ignoring backend %s: %s", t.path, text)
            end
        end
        user_cache[t.path] = { stamp = t.stamp, mod = t.mod or false }
        mods[t.name] = t.mod
    end
    return mods
end

-- name -> module for every backend of this root.
local function load_all(root)
    local mods = {}
    for module_name in pairs(cm.modules(M.PREFIX)) do
        local name = module_name:sub(#M.PREFIX + 1)
        if not name:find(".", 1, true) then
            local ok, mod = pcall(require, module_name)
            if ok and valid_module(mod) then
                mods[name] = mod
            else
                warn_once("ignoring backend %s: %s", module_name,
                    ok and "it does not return { name = ..., check = function }" or tostring(mod))
            end
        end
    end
    local dir = root and (root .. "/backends")
    local paths = {}
    for _, file in ipairs(dir and cm.fs.list(dir) or {}) do
        local name = file:match("^([%w_%-]+)%.lua$")
        if name then
            local path = dir .. "/" .. file
            if mods[name] then
                warn_once("ignoring backend %s: '%s' is a built-in backend", path, name)
            else
                paths[name] = path
            end
        end
    end
    for name, mod in pairs(load_user_backends(root, paths)) do mods[name] = mod end
    return mods
end

-- Accepts a root or a settings object (anything with .root and :get).
local function split_arg(root_or_settings, settings)
    if type(root_or_settings) == "table" then
        return root_or_settings.root, root_or_settings
    end
    return root_or_settings, settings
end

-- The names of mods (name -> module) in preference order: those listed in
-- backend.order (when the config gives it) first, in that order, then the
-- rest by name.
local function order_names(mods, settings)
    local names, seen = {}, {}
    local order = settings and settings:get("backend.order")
    if type(order) == "table" then
        for _, name in ipairs(order) do
            if mods[name] and not seen[name] then
                names[#names + 1] = name
                seen[name] = true
            end
        end
    end
    local rest = {}
    for name in pairs(mods) do
        if not seen[name] then rest[#rest + 1] = name end
    end
    table.sort(rest)
    return table.move(rest, 1, #rest, #names + 1, names)
end

-- The root's backend names in preference order.  Without settings the
-- root's config is read for backend.order (a broken config just means no
-- order).
function M.names(root, settings)
    root, settings = split_arg(root, settings)
    if settings == nil and root ~= nil then settings = require("settings").load(root) end
    return order_names(load_all(root), settings)
end

-- The module called `name`, or nil.
function M.get(root, name)
    root = split_arg(root)
    if type(name) ~= "string" then return nil end
    return load_all(root)[name]
end

-- Makes any value a check returned into a well-formed result.
-- A check's own text field, made a string without trusting its metatable.
local function text_of(v)
    if v == nil then return nil end
    if type(v) == "string" then return v end
    if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
    return "(" .. type(v) .. ")"
end

local function normalise(ok, value, ms)
    if not ok then
        return { healthy = nil, detail = "check failed: " .. text_of(value), ms = ms, info = {} }
    end
    if type(value) ~= "table" then
        return { healthy = nil, detail = "check failed: it returned " .. type(value) ..
            " instead of a result table", ms = ms, info = {} }
    end
    local v_ms = rawget(value, "ms")
    local info = rawget(value, "info")
    -- info goes into --json: keep it only when it can be encoded.
    if type(info) ~= "table" or not pcall(cm.json.encode, info) then info = {} end
    -- A detail may be any value with a __tostring; one that raises makes
    -- the whole check a failure.
    local detail = rawget(value, "detail")
    if detail ~= nil and type(detail) ~= "string" then
        local shown, text = pcall(tostring, detail)
        if not shown or type(text) ~= "string" then
            return { healthy = nil, ms = ms, info = {},
                     detail = "check failed: its detail cannot be shown: " .. text_of(text) }
        end
        detail = text
    end
    local r = {
        healthy = rawget(value, "healthy"),
        detail = detail or "",
        hint = text_of(rawget(value, "hint")),
        ms = (math.type(v_ms) and v_ms == v_ms and v_ms ~= math.huge and v_ms ~= -math.huge)
            and v_ms or ms,
        info = info,
    }
    if r.healthy ~= true and r.healthy ~= false then r.healthy = nil end
    return r
end

-- A check gets this many Lua instructions: enough for any real check (the
-- waiting happens in C), and a user backend stuck in a loop that never
-- yields is stopped instead of hanging every command and the supervisor.
M.CHECK_BUDGET = 50000000

-- Runs one module's check in this task: a well-formed result whatever the
-- check does (a user backend's stand-in runs the file in a child).
function M.run_check(mod, settings)
    local t = cm.time.now()
    debug.sethook(function()
        error("check did not finish: it exceeded its instruction budget " ..
            "(an endless loop?)", 2)
    end, "", M.CHECK_BUDGET)
    local ok, value = pcall(mod.check, settings)
    debug.sethook()
    local r_ok, r = pcall(normalise, ok, value, math.floor(cm.time.now() - t + 0.5))
    return r_ok and r or { healthy = nil, info = {}, ms = 0, detail = "check failed: " .. text_of(r) }
end

-- Checks user backends (mods: name -> stand-in) in one limited child, all
-- at once: { [name] = result }.  The child has the deadline of a single
-- check, shorter than check_all's, so that it is gone and its reason known
-- before check_all gives up.  What the child says is as untrusted as what a
-- check returns: it is normalised the same way.
check_users = function(settings, mods)
    local t0 = cm.time.now()
    local paths, name_of = {}, {}
    for name, mod in pairs(mods) do
        paths[#paths + 1] = mod.source
        name_of[mod.source] = name
    end
    table.sort(paths)
    local deadline = settings:get("manager.health_timeout") * 1000 + M.DEADLINE_SLACK_MS // 2
    local answers, err = require("usercode").run(settings.root, settings, "backend_check",
        { paths = paths }, deadline)
    local ms = math.floor(cm.time.now() - t0 + 0.5)
    local results = {}
    local by_path, reason = answers_by_path(answers)
    for path, a in pairs(by_path) do
        local name = name_of[path]
        if name then
            if type(a.result) == "table" then
                results[name] = normalise(true, M.from_json(a.result), ms)
            else
                results[name] = normalise(false, type(a.error) == "string" and a.error or "it gave no result", ms)
            end
        end
    end
    for name in pairs(mods) do
        results[name] = results[name] or normalise(false, reason or err or "it gave no result", ms)
    end
    return results
end

-- Checks the named backends (default: all) at the same time and returns
-- { [name] = result }.  An unknown name gives an unknown result; a check
-- that raises gives { healthy = nil, detail = "check failed: <err>" }.
function M.check_all(settings, names)
    local all = names == nil
    local mods = load_all(settings.root)
    names = names or order_names(mods, settings)
    local results, started = {}, {}
    local all_done = cm.task.event()
    -- pending starts at 1 for the spawning loop itself: a check that ends
    -- without waiting (a cached probe) must not signal "all done" before
    -- the other checks are even started.
    local pending = 1
    local function finished()
        pending = pending - 1
        if pending == 0 then all_done:set() end
    end
    local t0 = cm.time.now()
    local users, any_user, builtins = {}, false, {}
    for _, name in ipairs(names) do
        local mod = mods[name]
        if not mod then
            results[name] = { healthy = nil, detail = "unknown backend", ms = 0, info = {} }
        elseif not started[name] then
            started[name] = true
            if mod.user then
                users[name], any_user = mod, true
            else
                builtins[#builtins + 1] = name
            end
        end
    end
    -- The user backends' child first: it runs on another CPU while this
    -- process goes on with the built-in checks (loading libcurl, ...).
    if any_user then
        pending = pending + 1
        cm.task.spawn(function()
            for name, r in pairs(check_users(settings, users)) do results[name] = r end
            finished()
        end)
    end
    for _, name in ipairs(builtins) do
        pending = pending + 1
        cm.task.spawn(function()
            results[name] = M.run_check(mods[name], settings)
            finished()
        end)
    end
    finished()
    if not all_done:is_set() then
        local deadline = settings:get("manager.health_timeout") * 1000 + M.DEADLINE_SLACK_MS
        all_done:wait(deadline)
        for name in pairs(started) do
            if results[name] == nil then
                results[name] = { healthy = nil, ms = math.floor(cm.time.now() - t0 + 0.5), info = {},
                    detail = ("check did not finish within %s"):format(M.seconds(deadline)) }
            end
        end
    end
    if all then M.remember(settings, results) end
    return results
end

-- A result as JSON-ready data: healthy = null when unknown.
function M.to_json(result)
    return {
        healthy = result.healthy == nil and cm.json.null or result.healthy,
        detail = result.detail,
        hint = result.hint,
        ms = result.ms,
        info = result.info,
    }
end

-- A result read back from JSON: null healthy is unknown (nil).
function M.from_json(result)
    if result.healthy == cm.json.null then result.healthy = nil end
    return result
end

-- ---- the last check -------------------------------------------------------

-- Every full check (by a command, or the supervisor's periodic one, which
-- runs `backend status` in a child) is kept in run/backends.json, so that
-- `status` can show a recent one (with its age) instead of checking again.
local function last_check_path(settings)
    return settings.root .. "/run/backends.json"
end

function M.remember(settings, results)
    if not cm.fs.exists(settings.root .. "/run") then return end
    local doc = { checked_at = cm.time.wall(), backends = {} }
    for name, r in pairs(results) do
        local j = M.to_json(r)
        doc.backends[name] = { healthy = j.healthy, detail = j.detail, ms = j.ms }
    end
    local ok, text = pcall(cm.json.encode, doc)
    if ok then cm.fs.write_atomic(last_check_path(settings), text, tonumber("600", 8), false) end
end

-- The last full check if it is younger than max_age seconds: results, age.
function M.recall(settings, max_age)
    local text = cm.fs.read(last_check_path(settings), 1024 * 1024)
    local doc = text and cm.json.decode(text)
    if type(doc) ~= "table" or type(doc.backends) ~= "table" or
        type(doc.checked_at) ~= "number" then
        return nil
    end
    local age = cm.time.wall() - doc.checked_at
    if age < 0 or age > max_age then return nil end
    for _, r in pairs(doc.backends) do
        if type(r) ~= "table" then return nil end
        M.from_json(r)
    end
    return doc.backends, age
end

-- ---- printing -----------------------------------------------------------

local function visible_len(s)
    return utf8.len((s:gsub("\27%[[%d;]*m", ""))) or #s
end

local function pad(s, width)
    return s .. string.rep(" ", math.max(1, width - visible_len(s)))
end

M.NAME_WIDTH, M.INDICATOR_WIDTH = 11, 14

-- "  ollama     ✓ healthy     2 models (...), v0.5.7, 3 ms"
function M.format_line(name, result)
    -- A detail carries model names and answers from the network.
    local text = ui.clean(result.detail or "")
    if result.ms then
        text = text ~= "" and (text .. ", " .. result.ms .. " ms") or (result.ms .. " ms")
    end
    return "  " .. pad(name, M.NAME_WIDTH) .. pad(ui.indicator(result.healthy), M.INDICATOR_WIDTH) .. text
end

-- The facts a backend module shows under its verdict (its details(result,
-- opts) function, optional), with control characters escaped.
local function details_of(mod, result, opts)
    if not mod or type(mod.details) ~= "function" then return {} end
    local ok, lines = pcall(mod.details, result, opts or {})
    if not ok or type(lines) ~= "table" then return {} end
    local out = {}
    for i, line in ipairs(lines) do out[i] = ui.clean(line) end
    return out
end

function M.detail_lines(root, name, result, opts)
    return details_of(M.get(root, name), result, opts)
end

-- The hint's lines, each a troubleshooting step.
function M.hint_lines(result)
    local lines = {}
    for line in (result.hint or ""):gmatch("[^\n]+") do lines[#lines + 1] = ui.clean(line) end
    return lines
end

-- Prints the backend section used by `backend status`, `start` and
-- `status`: one line per backend in registry order, then the configured
-- one and, when known, the one the app serves with.
-- opts: { active = name (default backend.active), hints = bool (print the
-- troubleshooting lines under backends that are not healthy), title = text,
-- serving = name the app serves with, source = where that comes from,
-- explain = why serving and configured differ, details = print each
-- backend's facts (details(result, { current = app_models[name] })) }.
function M.print_section(settings, results, opts)
    opts = opts or {}
    local active = opts.active or settings:get("backend.active")
    local mods = load_all(settings.root)
    if opts.title then ui.say("%s", opts.title) end
    local listed = {}
    local function show(name)
        local r = results[name]
        if r == nil or listed[name] then return end
        listed[name] = true
        ui.say("%s", M.format_line(name, r))
        if opts.details then
            local current = opts.app_models and opts.app_models[name]
            for _, line in ipairs(details_of(mods[name], r, { current = current })) do
                ui.say("      %s", line)
            end
        end
        if opts.hints and r.healthy ~= true then
            for _, line in ipairs(M.hint_lines(r)) do ui.say("      - %s", line) end
        end
    end
    for _, name in ipairs(order_names(mods, settings)) do show(name) end
    local extra = {}
    for name in pairs(results) do
        if not listed[name] then extra[#extra + 1] = name end
    end
    table.sort(extra)
    for _, name in ipairs(extra) do show(name) end
    local serving = opts.serving
    if not mods[active] then
        ui.say("Active backend: %s (not a known backend)", ui.clean(active))
    elseif serving == nil then
        ui.say("Active backend: %s", active)
    elseif serving == active then
        ui.say("Active backend: %s (configured and serving%s)", active,
            opts.source and (", " .. opts.source) or "")
    else
        ui.say("Active backend: %s (configured in config.json)", active)
        ui.say("Serving:        %s%s", ui.clean(serving), opts.source and (" (" .. opts.source .. ")") or "")
    end
    if opts.explain then ui.say("  %s", ui.clean(opts.explain)) end
end

-- ---- switching ----------------------------------------------------------

-- Writes backend.active = name into the config file, keeping every other key
-- and their order (cm.config), atomically and under <root>/run/config.lock so
-- that two writers never lose each other's change.  The file is re-read
-- under the lock.  Returns true, or nil and a message.
function M.switch(settings, name)
    if not M.get(settings.root, name) then
        return nil, "Unknown backend: " .. tostring(name)
    end
    local run_dir = settings.root .. "/run"
    local ok, err = require("instance").refuse_link(run_dir)
    if not ok then return nil, err end
    ok, err = cm.fs.mkdir(run_dir, tonumber("700", 8))
    if not ok then return nil, err end
    local lock
    lock, err = cm.fs.lock(run_dir .. "/config.lock", { wait = true, timeout = 5000 })
    if not lock then return nil, "cannot lock the config: " .. tostring(err) end
    local cfg
    cfg, err = cm.config.load(settings.path)
    if cfg then
        -- set fails (nil, msg) when "backend" exists but is not an object.
        local set_ok, set_done, set_err = pcall(cfg.set, cfg, "backend.active", name)
        if set_ok and set_done then
            -- run/config.lock (held) is the one lock of this write: no
            -- second one, and no lock file next to the user's config.
            ok, err = cfg:save({ lock = false })
        else
            ok, err = nil, tostring(set_ok and set_err or set_done)
        end
    else
        ok = nil
    end
    lock:unlock()
    if not ok then return nil, err end
    return true
end

-- ---- helpers for backend modules (users' backends may use them too) ------

-- "1 s", "0.5 s", "30 s"
function M.seconds(ms)
    local s = ms / 1000
    if s == math.floor(s) then return ("%d s"):format(s) end
    return ("%.1f s"):format(s)
end

-- "1.3 GB", "398 MB", "1.2 KB", "512 B" (decimal units, as `ollama list`).
function M.format_size(bytes)
    if type(bytes) ~= "number" then return "?" end
    local units = { "B", "KB", "MB", "GB", "TB" }
    local i, v = 1, bytes
    while v >= 1000 and i < #units do
        v = v / 1000
        i = i + 1
    end
    if i == 1 then return ("%.0f B"):format(v) end
    if v >= 100 then return ("%.0f %s"):format(v, units[i]) end
    return ("%.1f %s"):format(v, units[i])
end

-- The health-check timeouts in ms: manager.health_connect_timeout and
-- manager.health_timeout, or the backend's own config keys when smaller
-- (docs/design.md §8).  The connect timeout never exceeds the total.
function M.timeouts(settings, own_connect_key, own_total_key)
    local connect = settings:get("manager.health_connect_timeout")
    local total = settings:get("manager.health_timeout")
    local own_connect = own_connect_key and settings:get(own_connect_key)
    local own_total = own_total_key and settings:get(own_total_key)
    if type(own_connect) == "number" and own_connect > 0 then connect = math.min(connect, own_connect) end
    if type(own_total) == "number" and own_total > 0 then total = math.min(total, own_total) end
    connect = math.min(connect, total)
    return { connect = math.max(1, math.floor(connect * 1000)), total = math.max(1, math.floor(total * 1000)) }
end

local function host_of(url)
    return url:match("^%a[%w+.-]*://%[?([^/%]:]+)") or url
end

-- A distinct, readable detail for each way cm.http.get fails.
function M.describe_http_error(url, msg, code, timeouts)
    if code == "refused" then return ("connection refused at %s"):format(url) end
    if code == "dns" then return ("cannot resolve host '%s' (%s)"):format(host_of(url), url) end
    if code == "connect_timeout" then
        return ("no connection to %s within %s"):format(url, M.seconds(timeouts.connect))
    end
    if code == "timeout" then
        return ("no answer from %s within %s"):format(url, M.seconds(timeouts.total))
    end
    if code == "closed" then return ("%s closed the connection without an answer"):format(url) end
    if code == "too_large" then return ("the answer from %s is too large"):format(url) end
    if code == "ssl" then return ("TLS error talking to %s: %s"):format(url, tostring(msg)) end
    return ("request to %s failed: %s"):format(url, tostring(msg))
end

return M
