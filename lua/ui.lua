-- Terminal output: the old manager's message prefixes and health indicators,
-- with colour only when stdout is a terminal and nobody said --no-color or
-- NO_COLOR.

local M = { color = false }

local codes = { red = "31", green = "32", yellow = "33", blue = "34", bold = "1", dim = "2" }

function M.setup(opts)
    local no_color = opts.no_color or (cm.sys.getenv("NO_COLOR") or "") ~= ""
    M.color = not no_color and cm.sys.isatty(1)
end

function M.paint(color, text)
    if not M.color then return text end
    return "\27[" .. codes[color] .. "m" .. text .. "\27[0m"
end

local function out(s)
    io.stdout:write(s, "\n")
end

function M.say(fmt, ...)
    out(select("#", ...) > 0 and fmt:format(...) or fmt)
end

function M.info(fmt, ...)
    out(M.paint("blue", "[INFO]") .. " " .. (select("#", ...) > 0 and fmt:format(...) or fmt))
end

function M.warn(fmt, ...)
    out(M.paint("yellow", "[WARNING]") .. " " .. (select("#", ...) > 0 and fmt:format(...) or fmt))
end

-- Errors go to stderr so that scripts parsing stdout (--json) stay clean.
function M.error(fmt, ...)
    io.stdout:flush()
    io.stderr:write(M.paint("red", "[ERROR]") .. " " ..
        (select("#", ...) > 0 and fmt:format(...) or fmt) .. "\n")
end

-- The old script's indicators: ✓ healthy, ✗ unhealthy, ? unknown.
function M.indicator(healthy)
    if healthy == true then return M.paint("green", "✓ healthy") end
    if healthy == false then return M.paint("red", "✗ unhealthy") end
    return M.paint("yellow", "? unknown")
end

function M.json(value)
    out(cm.json.encode(value, true))
end

return M
