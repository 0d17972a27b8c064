-- Terminal output: the old manager's message prefixes and health indicators,
-- with colour only when stdout is a terminal and nobody said --no-color or
-- NO_COLOR.
--
-- With --json, a command that changes state (start, stop, restart,
-- force-stop, backend switch) prints nothing as it goes: ui.collect() turns
-- its messages into a list, ui.result() adds the outcome's fields, and
-- ui.finish() prints them as one object when the command returns.  Commands
-- that print their own object (status, logs --list, version) have their
-- messages sent to stderr instead.
-- docs/json.schema.json describes every shape.

local M = { color = false, collecting = false }

local codes = { red = "31", green = "32", yellow = "33", blue = "34", bold = "1", dim = "2" }

function M.setup(opts)
    local no_color = opts.no_color or (cm.sys.getenv("NO_COLOR") or "") ~= ""
    M.color = not no_color and cm.sys.isatty(1)
end

function M.paint(color, text)
    if not M.color then return text end
    return "\27[" .. codes[color] .. "m" .. text .. "\27[0m"
end

local messages, results, printed_json

-- From now on messages are collected for the outcome object, not printed.
function M.collect()
    M.collecting, M.color = true, false
    messages, results, printed_json = cm.json.array(), {}, false
end

-- One field of the outcome object (start: pid, port, ...).
function M.result(key, value)
    if M.collecting then results[key] = value end
end

local function emit(level, prefix, text)
    if M.collecting then
        messages[#messages + 1] = { level = level, text = text }
        return
    end
    io.stdout:write(prefix and (prefix .. " " .. text) or text, "\n")
end

local function format(fmt, ...)
    return select("#", ...) > 0 and fmt:format(...) or fmt
end

function M.say(fmt, ...)
    emit("detail", nil, format(fmt, ...))
end

function M.info(fmt, ...)
    emit("info", M.paint("blue", "[INFO]"), format(fmt, ...))
end

function M.warn(fmt, ...)
    emit("warning", M.paint("yellow", "[WARNING]"), format(fmt, ...))
end

-- Like info, but to stderr: a header that must not mix with the data a
-- pipe reads (`logs | grep`).
function M.note(fmt, ...)
    io.stderr:write(M.paint("blue", "[INFO]"), " ", format(fmt, ...), "\n")
end

-- Progress (the stop's dots): for a person watching, never in --json.
function M.progress(s)
    if not M.collecting then io.stdout:write(s):flush() end
end

-- Errors go to stderr so that scripts parsing stdout (--json) stay clean;
-- with --json they are in the outcome's messages too.
function M.error(fmt, ...)
    local text = format(fmt, ...)
    if M.collecting then messages[#messages + 1] = { level = "error", text = text } end
    io.stdout:flush()
    io.stderr:write(M.paint("red", "[ERROR]") .. " " .. text .. "\n")
end

-- Text from the network or from files made safe to print: control
-- characters (C0, DEL and the C1 range, which can move the cursor, clear the
-- screen or start a forged "[INFO]" line) become visible escapes (\n, \t,
-- \x1b); everything else, UTF-8 included, is kept.
local named = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
function M.clean(text)
    text = tostring(text)
    if not text:find("[%c\127\194]") then return text end
    text = text:gsub("[%c\127]", function(c) return named[c] or ("\\x%02x"):format(c:byte()) end)
    return (text:gsub("\194([\128-\159])", function(c) return ("\\u%04x"):format(c:byte()) end))
end

-- The old script's indicators: ✓ healthy, ✗ unhealthy, ? unknown.
function M.indicator(healthy)
    if healthy == true then return M.paint("green", "✓ healthy") end
    if healthy == false then return M.paint("red", "✗ unhealthy") end
    return M.paint("yellow", "? unknown")
end

-- Collected messages so far to stderr (errors are there already), so that
-- stdout holds only the JSON object.
local function flush_to_stderr()
    for _, m in ipairs(messages) do
        if m.level ~= "error" then
            local prefix = m.level == "warning" and "[WARNING] " or m.level == "info" and "[INFO] " or ""
            io.stderr:write(prefix, m.text, "\n")
        end
    end
    messages = cm.json.array()
end

function M.json(value)
    -- A command that prints its own object (backend status, status): what
    -- it said on the way (a broken user backend) goes to stderr.
    if M.collecting and not printed_json then flush_to_stderr() end
    printed_json = true
    io.stdout:write(cm.json.encode(value, true), "\n")
end

-- The end of a collected command: the outcome object (`outcome`), unless
-- it printed its own JSON (backend status does); else what it said goes
-- to stderr.
function M.finish(command, code, outcome)
    if printed_json then return end
    if not outcome then
        flush_to_stderr()
        return
    end
    local out = { command = command, ok = code == 0, exit_code = code, messages = messages }
    for k, v in pairs(results) do out[k] = v end
    printed_json = true
    io.stdout:write(cm.json.encode(out, true), "\n")
end

return M
