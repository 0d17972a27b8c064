-- Following the session log natively (libuv fs events, no `tail` process):
-- `logs` and `run` both show the app's output this way.  It switches to a
-- newer session log when a start creates one, to the new file when the log
-- is rotated, and ends when `stop` is set or stdout's reader goes away
-- (`chat-manager logs | head -2`).

local M = {}

-- Writes to stdout; false once nobody reads it any more (EPIPE).
local function write_out(data)
    local ok = io.stdout:write(data)
    return ok ~= nil and io.stdout:flush() ~= nil
end

-- Follows `path` from `offset` until `stop` (a task event) is set or the
-- reader of stdout is gone.  `inst` gives the logs directory and the newest
-- log.  Returns "stopped" or "reader gone".
function M.follow(inst, path, offset, stop)
    -- One event per wait; whatever happens (the file or the directory
    -- changes, Ctrl+C, the pipe's reader leaves) sets the current one.
    local changed = cm.task.event()
    local reader_gone = false
    local function wake() changed:set() end
    local function watch_loop(w)
        cm.task.spawn(function()
            while w:wait() == "change" do wake() end -- ends when w is closed
        end)
    end
    local watcher = cm.fs.watch(path)
    local dir_watcher = cm.fs.watch(inst.logs_dir)
    watch_loop(watcher)
    watch_loop(dir_watcher)
    local hangup = cm.sys.on_hangup(1, function()
        reader_gone = true
        wake()
    end)
    cm.task.spawn(function()
        stop:wait()
        wake()
    end)
    while not stop:is_set() and not reader_gone do
        local st = cm.fs.stat(path)
        -- Rotated (copied away and truncated): go on from its new start.
        if st and st.size < offset then offset = 0 end
        local data = cm.fs.read_from(path, offset)
        if data and #data > 0 then
            if not write_out(data) then
                reader_gone = true
                break
            end
            offset = offset + #data
        else
            local newest = inst:newest_log()
            if newest and newest ~= path then
                path, offset = newest, 0
                watcher:close()
                watcher = cm.fs.watch(path)
                watch_loop(watcher)
                io.stderr:write(("==> %s <==\n"):format(path))
            else
                -- Also every 2 s, for filesystems without change events.
                changed:wait(2000)
                changed = cm.task.event()
            end
        end
    end
    -- What was written before the stop still belongs to the output (`run`
    -- shows its supervisor's last lines).
    if not reader_gone then
        local rest = cm.fs.read_from(path, offset)
        if rest and #rest > 0 then write_out(rest) end
    end
    watcher:close()
    dir_watcher:close()
    if hangup then hangup:close() end
    return reader_gone and "reader gone" or "stopped"
end

return M
