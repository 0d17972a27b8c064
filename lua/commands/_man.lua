-- _man [README.md]: the chat-manager(1) manual page in roff, generated at
-- build time (internal) from the command registry and the README's
-- description, files and configuration sections, so it cannot drift from
-- either.

local registry = require("registry")

-- Roff text: backslashes, hyphens and line-leading control characters
-- escaped; Markdown `code` in bold, [text](link) as its text.
local function roff(text)
    text = text:gsub("\\", "\\e"):gsub("%-", "\\-")
    text = text:gsub("%[([^%]]+)%]%([^)]*%)", "%1")
    text = text:gsub("%*%*([^*]+)%*%*", "\\fB%1\\fR")
    text = text:gsub("`([^`]+)`", "\\fB%1\\fR")
    text = text:gsub("\n([.'])", "\n\\&%1"):gsub("^([.'])", "\\&%1")
    return text
end

-- The README's sections by their "## " title; the text before the first
-- one under "".
local function sections(readme)
    local out, title, buf = {}, "", {}
    for line in (readme .. "\n"):gmatch("([^\n]*)\n") do
        local t = line:match("^## (.+)$")
        if t then
            out[title] = table.concat(buf, "\n")
            title, buf = t, {}
        elseif not line:match("^# ") then
            buf[#buf + 1] = line
        end
    end
    out[title] = table.concat(buf, "\n")
    return out
end

-- Markdown paragraphs and tables as roff (.PP paragraphs, .TP rows).
local function markdown(text, out)
    local para, bullet = {}, false
    local function flush()
        if #para > 0 then
            out[#out + 1] = bullet and ".IP \\(bu 2" or ".PP"
            out[#out + 1] = roff(table.concat(para, " "))
            para = {}
        end
        bullet = false
    end
    local in_code = false
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        if line:match("^```") then
            flush()
            in_code = not in_code
            out[#out + 1] = in_code and ".PP\n.nf\n.RS 4" or ".RE\n.fi"
        elseif in_code then
            out[#out + 1] = roff(line)
        elseif line:match("^|") then
            flush()
            local cells = {}
            for cell in line:gmatch("|([^|]*)") do cells[#cells + 1] = cell:match("^%s*(.-)%s*$") end
            if cells[1] and not cells[1]:match("^%-%-%-") and cells[1] ~= "file" and cells[2] then
                out[#out + 1] = ".TP"
                out[#out + 1] = roff(cells[1])
                out[#out + 1] = roff(cells[2])
            end
        elseif line:match("^%s*$") then
            flush()
        elseif line:match("^%- ") then
            flush()
            bullet = true
            para[1] = line:sub(3)
        else
            para[#para + 1] = line
        end
    end
    flush()
end

local function run(ctx, args)
    local readme = ""
    if args[1] then
        local text, err = cm.fs.read(args[1])
        if not text then
            io.stderr:write("[ERROR] ", tostring(err), "\n")
            return 1
        end
        readme = text
    end
    local doc = sections(readme)
    local info = cm.build.info()
    local epoch = tonumber(cm.sys.getenv("SOURCE_DATE_EPOCH") or "") or os.time()
    local out = {}
    local function add(s) out[#out + 1] = s end
    add(('.TH CHAT\\-MANAGER 1 "%s" "chat-manager %s" "User Commands"'):format(
        os.date("!%Y-%m-%d", epoch), roff(info.version)))
    add(".SH NAME")
    add("chat\\-manager \\- run, watch and stop the Chat\\-O\\-Llama app and its LLM backends")
    add(".SH SYNOPSIS")
    add(".B chat\\-manager")
    add("[\\fB\\-\\-root\\fR \\fIDIR\\fR] [\\fB\\-\\-json\\fR] [\\fB\\-\\-no\\-color\\fR] \\fIcommand\\fR [\\fIarguments\\fR]")
    add(".SH DESCRIPTION")
    markdown(doc[""] or "", out)
    add(".SH COMMANDS")
    for _, cmd in ipairs(registry.ordered(ctx.root)) do
        for _, row in ipairs(registry.rows(cmd)) do
            add(".TP")
            add("\\fBchat\\-manager " .. roff(row.usage) .. "\\fR")
            add(roff(row.summary))
        end
        if cmd.description then
            add(".IP")
            add(roff(cmd.description))
        end
        for _, list in ipairs({ cmd.arguments or {}, cmd.options or {} }) do
            for _, a in ipairs(list) do
                add(".RS")
                add(".TP")
                add("\\fI" .. roff(a[1]) .. "\\fR")
                add(roff(a[2]))
                add(".RE")
            end
        end
        if cmd.example then
            add(".IP")
            add("Example: \\fB" .. roff(cmd.example) .. "\\fR")
        end
    end
    add(".SH OPTIONS")
    for _, o in ipairs(registry.GLOBAL_OPTIONS) do
        add(".TP")
        add("\\fB" .. roff(o[1]) .. "\\fR")
        add(roff(o[2]))
    end
    add(".SH EXIT STATUS")
    add(roff(registry.EXIT_CODES:gsub("\n", " ")))
    add(".SH ENVIRONMENT")
    for _, e in ipairs({
        { "CHAT_MANAGER_ROOT", "the instance directory when --root is not given" },
        { "CONFIG_FILE", "the configuration file instead of <root>/config.json (the app reads it too)" },
        { "NO_COLOR", "no colours when set and not empty" },
        { "CHAT_MANAGER_LUA_DIR", "a directory of Lua scripts that override the built-in ones, file by file" },
    }) do
        add(".TP")
        add("\\fB" .. roff(e[1]) .. "\\fR")
        add(roff(e[2]))
    end
    add(".SH FILES")
    if doc["Files"] then markdown(doc["Files"], out) end
    for _, f in ipairs(registry.FILES) do
        if not (doc["Files"] or ""):find(f[1]:gsub("%*.*", ""), 1, true) then
            add(".TP")
            add(roff(f[1]))
            add(roff(f[2]))
        end
    end
    if doc["Configuration"] then
        add(".SH CONFIGURATION")
        markdown(doc["Configuration"], out)
    end
    add(".SH SEE ALSO")
    add("The project's README.md and docs/ (architecture, the Lua API, the JSON output schema).")
    io.stdout:write(table.concat(out, "\n"), "\n")
    return 0
end

return {
    name = "_man",
    usage = "_man [README.md]",
    summary = "internal: the manual page, generated at build time",
    hidden = true,
    max_args = 1,
    run = run,
}
