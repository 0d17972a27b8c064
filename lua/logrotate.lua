-- The size cap of the current session log, like supervisord's
-- logfile_maxbytes/backups: when the log passes manager.log_max_bytes it is
-- copied to LOG.1 (LOG.1 to LOG.2, ..., dropping the oldest beyond
-- manager.log_backups) and cut to zero in place.  The app writes with
-- O_APPEND to the same inode, so it goes on at the new start, with no
-- restart and no signal; only lines written during the copy itself may be
-- lost.  Every rotation says in the log what it kept and removed.

local M = {}

local CHUNK = 4 * 1024 * 1024
local COPY_TIMEOUT_MS = 600000

-- Copies src to dst with cp(1) in a child, so that the supervisor's loop
-- keeps serving signals and the app while 50 MB are copied; returns the
-- bytes copied, or nil and why.
local function copy(src, dst)
    local r, err = cm.proc.run({ argv = { "cp", "--", src, dst }, timeout = COPY_TIMEOUT_MS })
    if not r then return nil, err end
    if r.code ~= 0 then return nil, (r.stderr ~= "" and r.stderr or ("cp exit " .. tostring(r.code))) end
    local st = cm.fs.stat(dst)
    if not st then return nil, "the copy is missing" end
    return st.size
end

-- Rotates `path` now; returns a list of what happened, for the log.
function M.rotate(path, backups)
    local notes = {}
    local function name(i) return i == 0 and path or (path .. "." .. i) end
    if backups == 0 then
        cm.fs.truncate(path, 0)
        notes[#notes + 1] = "cut to 0 bytes (log_backups is 0: nothing kept)"
        return notes
    end
    -- The copy is made under a temporary name first, so the backups are
    -- shifted only once it is complete.
    local tmp = path .. ".rotating"
    local n, err = copy(path, tmp)
    if not n then
        cm.fs.remove(tmp)
        notes[#notes + 1] = ("cannot copy to %s: %s; not cut"):format(tmp, tostring(err))
        return notes
    end
    -- What the app wrote during the copy, then the cut.
    local extra = cm.fs.read_from(path, n, CHUNK)
    if extra and #extra > 0 then cm.fs.append(tmp, extra) end
    cm.fs.truncate(path, 0)
    if cm.fs.exists(name(backups)) then
        cm.fs.remove(name(backups))
        notes[#notes + 1] = "removed " .. name(backups)
    end
    for i = backups - 1, 1, -1 do
        if cm.fs.exists(name(i)) then cm.fs.rename(name(i), name(i + 1)) end
    end
    cm.fs.rename(tmp, name(1))
    notes[#notes + 1] = ("kept %d bytes in %s"):format(n + (extra and #extra or 0), name(1))
    return notes
end

-- Watches `path` (the session log) while the supervisor runs; `log` writes
-- an event line.  Returns the watcher (close it at exit), or nil when there
-- is no cap.
function M.watch(path, max_bytes, backups, log)
    if max_bytes <= 0 then return nil end
    local watcher = cm.fs.watch(path)
    if not watcher then return nil end
    cm.task.spawn(function()
        -- One stat per change event: no timer, no wake-ups while the app is
        -- quiet.
        while watcher:wait() == "change" do
            local st = cm.fs.stat(path)
            if st and st.size > max_bytes then
                local notes = M.rotate(path, backups)
                log(("log rotated at %d bytes (log_max_bytes %d): %s"):format(st.size, max_bytes,
                    table.concat(notes, "; ")))
            end
        end
    end)
    return watcher
end

return M
