-- The running app's own backend endpoints (Chat-O-Llama's): switching it
-- to another backend live, without a restart (POST manager.app.switch_path
-- {"backend_type": name}), and asking which backend it serves with and how
-- it sees each (GET manager.app.status_path).  Either path set to null in
-- config.json turns that use off.
--
-- Every answer is untrusted: a wrong shape is reported, never raised.

local M = {}

M.STATUS_CONNECT_MS = 500
M.STATUS_TIMEOUT_MS = 2000 -- status must stay quick: the app's view is a bonus
-- The app checks the backend's health before it switches (Chat-O-Llama asks
-- Ollama's /api/version with a 5 s connect and 10 s read timeout).
M.SWITCH_TIMEOUT_MS = 20000
M.MAX_BYTES = 1024 * 1024
-- run/<this>: the user's last explicit switch { backend, at }, which the
-- supervisor's fallback honours (never undone within the cooldown).
M.USER_SWITCH_FILE = "user-switch.json"

local function url(port, path)
    return ("http://127.0.0.1:%d%s"):format(port, path)
end

local function str(v) return type(v) == "string" and v or nil end

-- The port the app listens on: the supervisor's (run/state.json) when it
-- runs, else server.port.
function M.port(settings, state)
    return (state and math.tointeger(state.port)) or settings:get("server.port")
end

-- A short text from the app's error answer: its "error" or "message".
local function app_error(doc, status)
    if type(doc) == "table" then
        local e = str(doc.error) or str(doc.message)
        if e then return e end
    end
    return ("HTTP %d"):format(status)
end

-- Switches the running app to `name`.  Returns a result table:
--   outcome = "switched"  the app now serves with name (serving = name)
--           | "already"   it already did
--           | "refused"   it answered with an error (error = its text)
--           | "missing"   no such endpoint (404/405, or an answer that is not
--                         the endpoint's JSON): a restart applies a change
--           | "unreachable"  no answer (error = why)
--           | "off"       manager.app.switch_path is null
--   serving = the backend the app says it serves with, when it says
function M.switch(settings, port, name)
    local path = settings:optional("manager.app.switch_path")
    if not path then return { outcome = "off" } end
    local r, err, code = cm.http.post(url(port, path), cm.json.encode({ backend_type = name }), {
        connect_timeout = 2000, timeout = M.SWITCH_TIMEOUT_MS, max_bytes = M.MAX_BYTES,
    })
    if not r then return { outcome = "unreachable", error = err, code = code } end
    if r.status == 404 or r.status == 405 then
        return { outcome = "missing", status = r.status, error = ("HTTP %d from %s"):format(r.status, path) }
    end
    local doc = cm.json.decode(r.body)
    if type(doc) ~= "table" then
        return { outcome = "missing", status = r.status,
                 error = ("%s answered HTTP %d without JSON"):format(path, r.status) }
    end
    local current = str(doc.current_backend)
    local ok = r.status >= 200 and r.status < 300
    if ok and doc.status ~= "error" and (current == name or (current == nil and doc.status == "success")) then
        return { outcome = doc.switched == false and "already" or "switched", serving = name,
                 status = r.status, message = str(doc.message) }
    end
    if ok and doc.status ~= "error" and current == nil then
        -- JSON, but not the endpoint's answer (a catch-all page of the app).
        return { outcome = "missing", status = r.status,
                 error = ("%s answered without saying which backend it serves"):format(path) }
    end
    return { outcome = "refused", status = r.status, serving = current, error = app_error(doc, r.status) }
end

-- The app's own view: { serving = name|nil, auto_fallback = bool|nil,
-- backends = { name = { status = "available"|..., healthy = bool|nil } } },
-- or nil, why, outcome ("off", "missing", "unreachable", "invalid").
function M.status(settings, port)
    local path = settings:optional("manager.app.status_path")
    if not path then return nil, "manager.app.status_path is null", "off" end
    local r, err = cm.http.get(url(port, path), {
        connect_timeout = M.STATUS_CONNECT_MS, timeout = M.STATUS_TIMEOUT_MS, max_bytes = M.MAX_BYTES,
    })
    if not r then return nil, err, "unreachable" end
    if r.status == 404 or r.status == 405 then
        return nil, ("HTTP %d from %s"):format(r.status, path), "missing"
    end
    local doc = cm.json.decode(r.body)
    if type(doc) ~= "table" then
        return nil, ("%s answered HTTP %d without JSON"):format(path, r.status), "invalid"
    end
    if r.status < 200 or r.status >= 300 then
        return nil, app_error(doc, r.status), "invalid"
    end
    local view = { serving = str(doc.active_backend), backends = {} }
    local conf = type(doc.configuration) == "table" and doc.configuration or {}
    if type(conf.auto_fallback) == "boolean" then view.auto_fallback = conf.auto_fallback end
    if type(doc.backends) == "table" then
        for name, b in pairs(doc.backends) do
            if type(name) == "string" and type(b) == "table" then
                local status = str(b.status)
                local healthy
                if status == "available" then healthy = true
                elseif status == "unavailable" or status == "error" then healthy = false end
                view.backends[name] = { status = status, healthy = healthy }
                local info = type(b.backend_info) == "table" and b.backend_info or {}
                if str(info.current_model) then
                    view.models = view.models or {}
                    view.models[name] = info.current_model
                end
            end
        end
    end
    return view
end

-- The running app, when there is one: { pid, port, state } (state: the
-- supervisor's run/state.json, or nil).
function M.find(settings)
    local app, state = require("instance").new(settings.root):app()
    if not (app and app.alive) then return nil end
    return { pid = app.pid, port = M.port(settings, state), state = state }
end

-- Everything about the running app's backend: { pid, port, state, view }
-- or with error/outcome instead of view; nil when no app runs.
function M.observe(settings)
    local app = M.find(settings)
    if not app then return nil end
    app.view, app.error, app.outcome = M.status(settings, app.port)
    return app
end

-- Why the app serves with another backend than config.json's, or nil.
-- record: run/state.json (the manager's own switches and their reasons).
function M.explain(configured, serving, record, view)
    if serving == nil or serving == configured then return nil end
    record = record or {}
    local reason = type(record.serving_reason) == "string" and record.serving_reason
    if record.serving == serving and reason and record.serving_by ~= "app" then
        if record.serving_by == "start" then
            return ("the manager started the app with '%s': %s"):format(serving, reason)
        elseif record.serving_by == "user" then
            return ("switched live to '%s' by the user (backend switch)"):format(serving)
        elseif record.serving_by == "config" then
            return reason
        end
        return ("the manager switched the app to '%s': %s"):format(serving, reason)
    end
    return ("the app fell back to '%s' by itself%s"):format(serving,
        view and view.auto_fallback and " (backend.auto_fallback)" or "")
end

-- What status and backend status show about the backends' use: configured
-- (config.json), serving (the app's answer), the explanation of a
-- difference, and the app's view for --json.
function M.fields(settings, app)
    local configured = settings:get("backend.active")
    local serving = app and app.view and app.view.serving
    return {
        configured = configured,
        serving = serving,
        explain = app and M.explain(configured, serving, app.state, app.view),
        app = app and (M.to_json(app.view) or { error = app.error, outcome = app.outcome }) or nil,
    }
end

-- The app's view as JSON-ready data.
function M.to_json(view)
    if not view then return nil end
    local backends = {}
    for name, b in pairs(view.backends or {}) do
        backends[name] = { status = b.status, healthy = b.healthy == nil and cm.json.null or b.healthy }
    end
    return { serving = view.serving, auto_fallback = view.auto_fallback, backends = backends }
end

return M
