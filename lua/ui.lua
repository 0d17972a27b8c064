-- Terminal output: the old manager's message prefixes and health indicators,
-- with colour only when stdout is a terminal and nobody said --no-color or
-- NO_COLOR.
--
-- With --json, a command that changes state (start, stop, restart,
-- force-stop, backend switch) prints nothing as it goes: ui.collect() turns
-- its messages into a list, ui.result() adds the outcome's fields, and
-- ui.print_outcome() prints them as one object when the command returns.
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

-- The old script's indicators: ✓ healthy, ✗ unhealthy, ? unknown.
function M.indicator(healthy)
    if healthy == true then return M.paint("green", "✓ healthy") end
    if healthy == false then return M.paint("red", "✗ unhealthy") end
    return M.paint("yellow", "? unknown")
end

function M.json(value)
    if M.collecting and not printed_json then
        -- A command that prints its own object (backend status) under
        -- collection: what it said on the way (a broken user backend) goes
        -- to stderr rather than nowhere.
        for _, m in ipairs(messages) do
            if m.level == "warning" or m.level == "info" then
                io.stderr:write(m.level == "warning" and "[WARNING] " or "[INFO] ", m.text, "\n")
            end
        end
    end
    printed_json = true
    io.stdout:write(cm.json.encode(value, true), "\n")
end

-- The outcome object of a collected command, unless it printed its own
-- JSON (backend status does).
function M.print_outcome(command, code)
    if printed_json then return end
    local out = { command = command, ok = code == 0, exit_code = code, messages = messages }
    for k, v in pairs(results) do out[k] = v end
    M.json(out)
end

return M
