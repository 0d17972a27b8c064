-- How the app is launched: its command, working directory and environment
-- (docs/design.md §8), and the config it is given.
--
-- Chat-O-Llama reads its port from `server.port` and its backend from
-- `backend.active` in the file named by CONFIG_FILE; it ignores PORT.  When a
-- start's port or the serving backend differs from config.json, the app is
-- given run/app-config.json instead: config.json's text with only those
-- values replaced, rebuilt at every (re)start.  config.json itself is never
-- changed by an override.

local M = {}

local APP_CONFIG = "app-config.json"

-- The values config.json would give the app, with the app's own defaults.
local function configured(settings)
    return { port = settings:get("server.port"), backend = settings:get("backend.active") }
end

-- The config file the app should read for `overrides` ({ port =, backend = },
-- either may be nil): config.json's path when nothing differs, else
-- run/app-config.json, written now.  Returns path, or nil and why.
function M.config_for(settings, inst, overrides)
    local want = configured(settings)
    local changes = {}
    if overrides.port and overrides.port ~= want.port then changes["server.port"] = overrides.port end
    if overrides.backend and overrides.backend ~= want.backend then
        changes["backend.active"] = overrides.backend
    end
    local path = inst.run_dir .. "/" .. APP_CONFIG
    if next(changes) == nil then
        cm.fs.remove(path) -- a stale override must not be mistaken for the app's config
        return settings.path
    end
    local text
    if settings.missing then
        -- No config.json: the app runs on its defaults but these values.
        local t = {}
        for key, value in pairs(changes) do
            local section, name = key:match("^(%w+)%.(%w+)$")
            t[section] = { [name] = value }
        end
        text = cm.json.encode(t, true) .. "\n"
    else
        local doc, err = cm.config.load(settings.path)
        if not doc then return nil, err end
        for _, key in ipairs({ "server.port", "backend.active" }) do
            if changes[key] ~= nil then
                local ok, serr = doc:set(key, changes[key])
                if not ok then return nil, ("%s: %s"):format(settings.path, serr) end
            end
        end
        text = doc:text()
    end
    local ok, werr = cm.fs.write_atomic(path, text, tonumber("600", 8), false)
    if not ok then return nil, werr end
    return path
end

-- The app's command, working directory and environment for a start on
-- `port`; `config_file` is the file the app reads (see config_for).
function M.launch(settings, inst, port, config_file)
    local marker = require("instance").MARKER
    local env = cm.sys.environ()
    env.PORT = tostring(port)
    env.CONFIG_FILE = config_file or settings.path
    env[marker] = inst.id
    for k, v in pairs(settings:get("manager.app.env")) do env[k] = v end
    local venv = settings:get("manager.app.venv")
    local venv_dir
    if venv == "auto" then
        for _, name in ipairs({ "venv", ".venv" }) do
            local st = cm.fs.stat(inst.root .. "/" .. name .. "/bin")
            if st and st.type == "dir" then
                venv_dir = inst.root .. "/" .. name
                break
            end
        end
    elseif type(venv) == "string" and venv ~= "system" then
        venv_dir = settings:resolve(venv)
    end
    if venv_dir then
        -- What `source venv/bin/activate` would do.
        env.VIRTUAL_ENV = venv_dir
        env.PATH = venv_dir .. "/bin:" .. (env.PATH or "/usr/bin:/bin")
        env.PYTHONHOME = nil
    end
    local argv = {}
    for i, a in ipairs(settings:get("manager.app.command")) do argv[i] = a end
    return { argv = argv, cwd = settings:resolve(settings:get("manager.app.cwd")), env = env,
             venv = venv_dir }
end

-- Is `name` runnable with this PATH?  The lookup the spawn itself does
-- (cm.proc.which); no PATH finds only a name with a '/'.
function M.find_program(name, path, cwd)
    if not name:find("/") and (path == nil or path == "") then return nil end
    return (cm.proc.which(name, path, cwd))
end

return M
