-- The Ollama backend: healthy when GET <base_url>/api/tags answers 200 with
-- the {"models": [...]} JSON Ollama sends.  /api/version is asked at the
-- same time; it only adds the version to the report.

local backends = require("backends")

local M = {
    name = "ollama",
    summary = "Ollama HTTP API (ollama.base_url)",
}

-- /api/tags lists every model with its metadata; a few MiB is a lot of
-- models, and a bigger answer is surely not Ollama.
M.MAX_TAGS_BYTES = 8 * 1024 * 1024
M.MAX_VERSION_BYTES = 64 * 1024
M.MAX_LISTED_MODELS = 5

local function hint_lines(...)
    return table.concat({ ... }, "\n")
end

local function connection_hint(base_url)
    return hint_lines(
        "Is Ollama running? Start it with: ollama serve",
        ("Configured URL: %s (ollama.base_url in config.json)"):format(base_url),
        ("Test it by hand: curl %s/api/tags"):format(base_url))
end

-- Decodes the /api/tags body into { {name=, size=, ...} } or nil, why.
local function parse_tags(body)
    local data, err = cm.json.decode(body)
    if data == nil then return nil, "invalid", err end
    -- Decoded JSON arrays carry the cm.json.array metatable: an object
    -- ({"models": {"x": ...}}) is the wrong shape, not "no models".
    if type(data) ~= "table" or type(data.models) ~= "table" or
        getmetatable(data.models) ~= getmetatable(cm.json.array()) then
        return nil, "shape", "no \"models\" list"
    end
    local models = cm.json.array()
    for i, m in ipairs(data.models) do
        if type(m) ~= "table" or type(m.name) ~= "string" then
            return nil, "shape", ("model #%d has no name"):format(i)
        end
        local details = type(m.details) == "table" and m.details or {}
        local function str(v) return type(v) == "string" and v or nil end
        models[#models + 1] = {
            name = m.name,
            -- A size JSON can carry but --json cannot (inf) is no size.
            size = (math.type(m.size) and m.size == m.size and math.abs(m.size) ~= math.huge)
                and m.size or nil,
            family = str(details.family),
            parameter_size = str(details.parameter_size),
            quantization = str(details.quantization_level),
        }
    end
    return models
end

local function version_of(r)
    if type(r) ~= "table" or r.status ~= 200 then return nil end
    local data = cm.json.decode(r.body)
    if type(data) == "table" and type(data.version) == "string" then return data.version end
    return nil
end

function M.check(settings)
    local base_url = tostring(settings:get("ollama.base_url")):gsub("/+$", "")
    local t = backends.timeouts(settings, "ollama.connect_timeout", "ollama.timeout")
    local verify_ssl = settings:get("ollama.verify_ssl") ~= false
    local function get(path, max_bytes)
        return cm.http.get(base_url .. path, {
            connect_timeout = t.connect, timeout = t.total,
            max_bytes = max_bytes, verify_ssl = verify_ssl,
        })
    end

    -- Both requests at once: the version costs no extra time.
    local version_task = cm.task.spawn(get, "/api/version", M.MAX_VERSION_BYTES)
    local tags_url = base_url .. "/api/tags"
    local r, err, code = get("/api/tags", M.MAX_TAGS_BYTES)
    local _, version_answer = version_task:join()
    local version = version_of(version_answer)

    local info = { url = base_url, timeouts_ms = t }
    if not r then
        info.error = code
        local hint = connection_hint(base_url)
        if code == "dns" then
            hint = hint_lines(
                ("Check the host name in ollama.base_url (configured: %s)"):format(base_url),
                "For a local Ollama use http://localhost:11434")
        elseif code == "ssl" then
            hint = hint .. "\nFor a self-signed certificate set ollama.verify_ssl to false"
        elseif code == "too_large" then
            hint = ("Is %s really an Ollama server? (ollama.base_url in config.json)"):format(base_url)
        end
        return { healthy = false, detail = backends.describe_http_error(tags_url, err, code, t),
                 hint = hint, info = info }
    end
    info.status = r.status
    if r.status ~= 200 then
        return {
            healthy = false, info = info,
            detail = ("HTTP %d from %s"):format(r.status, tags_url),
            hint = hint_lines(
                r.status == 404 and ("Is %s really an Ollama server? (ollama.base_url in config.json)"):format(base_url)
                    or "Ollama answered with an error: look at its log (journalctl -u ollama, or the terminal running ollama serve)",
                ("Test it by hand: curl -i %s"):format(tags_url)),
        }
    end
    local models, kind, why = parse_tags(r.body)
    if not models then
        return {
            healthy = false, info = info,
            detail = kind == "invalid"
                and ("%s did not answer valid JSON: %s"):format(tags_url, tostring(why))
                or ("%s answered JSON of an unexpected shape: %s"):format(tags_url, why),
            hint = ("Is %s really an Ollama server? (ollama.base_url in config.json)"):format(base_url),
        }
    end

    info.models, info.version = models, version
    local names = {}
    for i = 1, math.min(#models, M.MAX_LISTED_MODELS) do names[i] = models[i].name end
    if #models > M.MAX_LISTED_MODELS then
        names[#names + 1] = ("+%d more"):format(#models - M.MAX_LISTED_MODELS)
    end
    local detail
    if #models == 0 then
        detail = "no models pulled"
    else
        detail = ("%d model%s (%s)"):format(#models, #models == 1 and "" or "s", table.concat(names, ", "))
    end
    if version then detail = detail .. ", v" .. version end
    return {
        healthy = true, detail = detail, info = info,
        hint = #models == 0 and "Pull a model: ollama pull llama3.2" or nil,
    }
end

-- The lines `backend health ollama` and `backend status` print under its
-- verdict: the version and every model with its size.
function M.details(result)
    local info, lines = result.info or {}, {}
    if info.url then lines[#lines + 1] = "URL:     " .. info.url end
    if info.version then lines[#lines + 1] = "Version: " .. info.version end
    for _, m in ipairs(info.models or {}) do
        local extra = {}
        for _, v in ipairs({ m.parameter_size, m.quantization }) do extra[#extra + 1] = v end
        lines[#lines + 1] = ("  %-28s %8s  %s"):format(m.name, backends.format_size(m.size),
            table.concat(extra, " "))
    end
    return lines
end

return M
