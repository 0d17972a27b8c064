-- User code that must not be able to freeze or bloat the process that
-- asks for it: the user's fallback policy (manager.policy) and the backends
-- in <root>/backends/ run in a child (`chat-manager _user JOB ARG`, see
-- commands/_user.lua) under kernel limits.  The child sets, for itself, a
-- CPU-time limit (RLIMIT_CPU), an address-space limit (RLIMIT_AS, where the
-- sanitizers do not forbid it) and a cap on Lua's heap (cm.sys.limit); this
-- side kills its whole process group at the wall-clock deadline, keeps at
-- most max_output bytes of its output, and reads the answer as JSON.  A C
-- function called in a loop (("").rep("", 2^62), a backtracking pattern,
-- table.move over 2^50 slots) cannot escape: the instruction budget inside
-- counts Lua instructions only, but the kernel and the deadline count
-- everything.  Waiting for the child parks only the calling task, so a
-- supervisor keeps answering stop, HUP and USR1 meanwhile.

local M = {}

-- Each answer is the JSON line after a MARK on the child's stdout (a batch
-- job writes one per item; M.call takes the last).
M.MARK = "\n\1cm-answer\1"

-- The program the child runs: this binary (tests embedding the runtime
-- point it at chat-manager).
M.exe = nil

-- manager.user_code as numbers: timeout ms, memory bytes, output bytes.
function M.limits(settings)
    local uc = settings and settings:get("manager.user_code")
    if type(uc) ~= "table" then uc = require("settings").defaults.manager.user_code end
    return { timeout = uc.timeout * 1000, memory = uc.memory_mb * 1024 * 1024,
             output = uc.max_output }
end

-- The root's settings for their limits, or nil (a broken config: the
-- defaults apply).
function M.settings_of(root)
    local ok, settings = pcall(require("settings").load, root)
    return ok and settings or nil
end

local function seconds(ms)
    return (ms % 1000 == 0 and "%d s" or "%.1f s"):format(ms / 1000)
end

-- Refuses user code that someone else could have changed: the file and its
-- directory must belong to us (or root) and not be writable by group or
-- others.  Returns true, or nil and the message to show.
function M.trusted(path)
    local uid = cm.sys.uid()
    local dir = path:match("^(.*)/[^/]*$") or "."
    for _, p in ipairs({ dir, path }) do
        local st = cm.fs.stat(p)
        if st then
            if st.uid ~= uid and st.uid ~= 0 then
                return nil, ("%s belongs to uid %d, not to you (uid %d): not run (chown it, or remove it)")
                    :format(p, st.uid, uid)
            end
            if st.mode & 0x12 ~= 0 then -- 022: group or others may write
                local who = (st.mode & 0x12 == 0x12) and "its group and others"
                    or (st.mode & 0x10 ~= 0) and "its group" or "others"
                return nil, ("%s is writable by %s: not run (chmod go-w %s)"):format(p, who, p)
            end
        end
    end
    return true
end

local SIGKILL, SIGXCPU = 9, 24

-- Runs JOB with arg (a JSON-able table) in a child under the limits of
-- `settings` (the defaults when nil); timeout_ms overrides the wall-clock
-- deadline.  A job may answer more than once (one answer per item of a
-- batch, each written as soon as it is known), so that a child stopped at
-- its deadline still yields what it finished.  Returns the list of answers
-- (tables, possibly empty; an answer that is not JSON is { error = ...,
-- unreadable = true }), what went wrong when the child did not end normally
-- ("did not finish within 5 s", "exceeded its CPU time limit", "ended
-- without an answer (exit 1): ..."; nil when it did), and whether that was
-- the deadline.
function M.run(root, settings, job, arg, timeout_ms)
    local lim = M.limits(settings)
    timeout_ms = timeout_ms or lim.timeout
    arg.memory, arg.output = lim.memory, lim.output
    -- CPU time is the backstop, a second past the wall clock (which counts
    -- from the spawn, so it always comes first for a busy child).
    arg.cpu = math.ceil(timeout_ms / 1000) + 1
    local ok, text = pcall(cm.json.encode, arg)
    if not ok then return {}, "cannot pass its input: " .. tostring(text) end
    -- Room for the user's output plus one answer per item.
    local items = type(arg.paths) == "table" and #arg.paths or 1
    local res, err = cm.proc.run({
        argv = { M.exe or cm.sys.exe(), "--root", root, "--no-color", "_user", job, text },
        timeout = timeout_ms, max_output = lim.output + 4096 * math.max(items, 1),
    })
    if not res then return {}, err end
    local answers, pos = {}, 1
    while true do
        local _, e = res.stdout:find(M.MARK, pos, true)
        if not e then break end
        local line = res.stdout:match("^[^\n]*", e + 1)
        local doc = cm.json.decode(line)
        answers[#answers + 1] = type(doc) == "table" and doc
            or { error = "gave an answer that is not JSON", unreadable = true }
        pos = e + 1 + #line
    end
    if res.timed_out then
        return answers, ("did not finish within %s: stopped"):format(seconds(timeout_ms)), true
    end
    if res.signal == SIGXCPU or res.signal == SIGKILL then
        return answers, ("exceeded its CPU time limit (%d s): stopped"):format(arg.cpu)
    end
    if res.truncated then
        return answers, ("wrote more than %d bytes of output: the rest was dropped"):format(lim.output)
    end
    if #answers > 0 and res.code == 0 and res.signal == 0 then return answers end
    local why = (res.stderr or ""):gsub("%s+$", ""):sub(-300)
    local how = res.signal ~= 0 and ("killed by signal %d"):format(res.signal) or ("exit %d"):format(res.code)
    return answers, ("ended %s(%s)%s"):format(#answers == 0 and "without an answer " or "", how,
        why ~= "" and (": " .. why) or "")
end

-- Runs a job that answers once: its answer, or nil and what went wrong.
function M.call(root, settings, job, arg, timeout_ms)
    local answers, err, timed_out = M.run(root, settings, job, arg, timeout_ms)
    local doc = answers[#answers]
    if doc == nil or timed_out then return nil, err end
    if doc.unreadable then return nil, doc.error end
    return doc
end

return M
