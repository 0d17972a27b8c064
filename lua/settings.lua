-- The configuration as the manager sees it: config.json (Chat-O-Llama's own
-- keys plus a "manager" section) over the documented defaults, with the
-- types of every key the manager reads checked up front so that a bad value
-- is named clearly instead of failing somewhere later.

local M = {}
M.__index = M

M.DEFAULT_PORT = 3113

-- docs/design.md §8: every manager key is optional; these are the defaults.
M.defaults = {
    backend = { active = "ollama", auto_fallback = true, health_check_interval = 30 },
    ollama = { base_url = "http://localhost:11434", verify_ssl = true },
    llamacpp = { model_path = "./models" },
    server = { port = M.DEFAULT_PORT },
    manager = {
        app = { command = { "python3", "app.py" }, cwd = ".", env = {}, venv = "auto",
                switch_path = "/api/backend/switch", status_path = "/api/backend/status" },
        start_timeout = 30,
        stop_timeout = 10,
        health_connect_timeout = 5,
        health_timeout = 10,
        restart = { policy = "on-failure", max_restarts = 5, backoff_initial = 1,
                    backoff_max = 60, reset_after = 30 },
        fallback_after = 2,
        fallback_cooldown = 300,
        failback_after = 3,
        log_keep = 20,
        log_max_bytes = 52428800,
        log_backups = 5,
        -- The user's policy and backends run in a child under these limits
        -- (lua/usercode.lua): wall-clock seconds (also the CPU seconds) of
        -- one policy decision or one backend load, MiB of memory, bytes of
        -- output kept.  A backend check's deadline is its health timeout.
        user_code = { timeout = 5, memory_mb = 256, max_output = 65536 },
    },
}

-- Numbers that JSON spells but no wait can use (1e999 reads as infinity)
-- are refused like any other wrong value.
local function finite(v) return type(v) == "number" and v == v and v > -math.huge and v < math.huge end
local function positive(v) return finite(v) and v > 0 end
local function nonneg_int(v) return math.type(v) == "integer" and v >= 0 end
local function port(v) return math.type(v) == "integer" and v >= 1 and v <= 65535 end
local function str(v) return type(v) == "string" and v ~= "" end
local function bool(v) return type(v) == "boolean" end
local function opt_str(v) return v == nil or v == cm.json.null or str(v) end
local function argv(v)
    if type(v) ~= "table" or #v == 0 then return false end
    for _, a in ipairs(v) do if type(a) ~= "string" then return false end end
    return true
end
local function env(v)
    if type(v) ~= "table" then return false end
    for k, x in pairs(v) do
        if type(k) ~= "string" or type(x) ~= "string" then return false end
    end
    return true
end

-- key -> { check, what it must be }
local schema = {
    ["backend.active"] = { str, "a backend name" },
    ["backend.auto_fallback"] = { bool, "true or false" },
    ["backend.health_check_interval"] = { positive, "a positive number of seconds" },
    ["backend.order"] = { function(v) return argv(v) end, "a list of backend names" },
    ["ollama.base_url"] = { str, "a URL" },
    ["ollama.timeout"] = { positive, "a positive number of seconds" },
    ["ollama.connect_timeout"] = { positive, "a positive number of seconds" },
    ["ollama.verify_ssl"] = { bool, "true or false" },
    ["llamacpp.model_path"] = { str, "a directory" },
    ["llamacpp.server_url"] = { opt_str, "a URL" },
    ["llamacpp.python"] = { opt_str, "an interpreter path" },
    ["server.port"] = { port, "a port number (1-65535)" },
    ["manager.app.command"] = { argv, "a non-empty list of strings" },
    ["manager.app.cwd"] = { str, "a directory" },
    ["manager.app.env"] = { env, "an object of strings" },
    ["manager.app.venv"] = { function(v) return v == "auto" or v == false or str(v) end,
                             "\"auto\", \"system\", false or a directory" },
    ["manager.app.switch_path"] = { function(v) return v == cm.json.null or (str(v) and v:sub(1, 1) == "/") end,
                                    "a path such as /api/backend/switch, or null" },
    ["manager.app.status_path"] = { function(v) return v == cm.json.null or (str(v) and v:sub(1, 1) == "/") end,
                                    "a path such as /api/backend/status, or null" },
    ["manager.start_timeout"] = { positive, "a positive number of seconds" },
    ["manager.stop_timeout"] = { positive, "a positive number of seconds" },
    ["manager.health_path"] = { opt_str, "a path such as /health, or null" },
    ["manager.health_connect_timeout"] = { positive, "a positive number of seconds" },
    ["manager.health_timeout"] = { positive, "a positive number of seconds" },
    ["manager.restart.policy"] = { function(v) return v == "no" or v == "on-failure" or v == "always" end,
                                   "\"no\", \"on-failure\" or \"always\"" },
    ["manager.restart.max_restarts"] = { nonneg_int, "a whole number >= 0" },
    ["manager.restart.backoff_initial"] = { positive, "a positive number of seconds" },
    ["manager.restart.backoff_max"] = { positive, "a positive number of seconds" },
    ["manager.restart.reset_after"] = { positive, "a positive number of seconds" },
    ["manager.fallback_after"] = { function(v) return math.type(v) == "integer" and v >= 1 end,
                                   "a whole number >= 1" },
    ["manager.fallback_cooldown"] = { function(v) return finite(v) and v >= 0 end,
                                      "a number of seconds >= 0" },
    ["manager.failback_after"] = { function(v) return math.type(v) == "integer" and v >= 1 end,
                                   "a whole number >= 1" },
    ["manager.log_keep"] = { function(v) return math.type(v) == "integer" and v >= 1 end,
                             "a whole number >= 1" },
    ["manager.log_max_bytes"] = { nonneg_int, "a whole number of bytes >= 0 (0: no cap)" },
    ["manager.log_backups"] = { nonneg_int, "a whole number >= 0" },
    ["manager.policy"] = { opt_str, "a file path, or null" },
    ["manager.user_code.timeout"] = { function(v) return positive(v) and v <= 3600 end,
                                      "a positive number of seconds (at most 3600)" },
    ["manager.user_code.memory_mb"] = { function(v) return math.type(v) == "integer" and v >= 16 and v <= 65536 end,
                                        "a whole number of MiB (16-65536)" },
    ["manager.user_code.max_output"] = { function(v) return math.type(v) == "integer" and v >= 1024 and v <= 16777216 end,
                                         "a whole number of bytes (1024-16777216)" },
}

local function default_of(key)
    local node = M.defaults
    for part in key:gmatch("[^.]+") do
        if type(node) ~= "table" then return nil end
        node = node[part]
    end
    return node
end

function M.config_path(root)
    local env_path = cm.sys.getenv("CONFIG_FILE")
    if env_path and env_path ~= "" then
        if env_path:sub(1, 1) ~= "/" then
            -- Relative to where the command was given: made absolute for
            -- every process it starts too (the supervisor runs elsewhere),
            -- so that they all read the file this command checked.
            env_path = cm.sys.cwd() .. "/" .. env_path
            cm.sys.setenv("CONFIG_FILE", env_path)
        end
        return env_path
    end
    return root .. "/config.json"
end

-- Loads and checks the config.  A missing file is allowed (the defaults
-- apply, like the old script with no config.json); a broken one is not.
-- Returns settings, or nil, message, code.
function M.load(root)
    local path = M.config_path(root)
    local cfg, err, code = cm.config.load(path)
    if not cfg and code ~= "ENOENT" then return nil, err, code end
    local s = setmetatable({ root = root, path = path, cfg = cfg, missing = cfg == nil }, M)
    local ok, verr = s:validate()
    if not ok then return nil, verr, "type" end
    return s
end

-- The defaults alone, for the commands that must work when config.json is
-- broken (stop; status recognising the old script's app).
function M.defaults_only(root)
    return setmetatable({ root = root, path = "", missing = true }, M)
end

local function is_object(t)
    return type(t) == "table" and t[1] == nil and next(t) ~= nil
end

-- The file's object over the default one, key by key (a partial
-- "restart": {"max_restarts": 2} keeps the other defaults).  Lists are
-- values: a configured command replaces the default one whole.
local function overlay(default, value)
    if not is_object(default) or type(value) ~= "table" or value[1] ~= nil then return value end
    local merged = {}
    for k, v in pairs(default) do merged[k] = v end
    for k, v in pairs(value) do
        if v ~= cm.json.null then merged[k] = overlay(default[k], v) end
    end
    return merged
end

-- The value at a dotted key: the file's, else the default.  JSON null
-- counts as absent.
function M:get(key)
    local default = default_of(key)
    if self.cfg then
        local v = self.cfg:get(key)
        if v ~= nil and v ~= cm.json.null then return overlay(default, v) end
    end
    return default
end

-- A key whose JSON null means "off" (not "the default"): nil then.
function M:optional(key)
    if self.cfg and self.cfg:get(key) == cm.json.null then return nil end
    return self:get(key)
end

-- The sections the keys above live in: a section that is not an object
-- ("manager": 5) would silently hide every key below it.
local sections = { "backend", "ollama", "llamacpp", "server", "manager", "manager.app",
                   "manager.restart", "manager.user_code" }

local function is_json_object(v)
    return type(v) == "table" and getmetatable(v) == nil and v[1] == nil
end

function M:validate()
    for _, key in ipairs(sections) do
        local v = self.cfg and self.cfg:get(key)
        if v ~= nil and v ~= cm.json.null and not is_json_object(v) then
            return nil, ("%s: '%s' must be an object"):format(self.path, key)
        end
    end
    for key, rule in pairs(schema) do
        local v = self.cfg and self.cfg:get(key)
        if v ~= nil and v ~= cm.json.null and not rule[1](v) then
            return nil, ("%s: '%s' must be %s"):format(self.path, key, rule[2])
        end
    end
    return true
end

-- A root-relative path made absolute.
function M:resolve(p)
    if p:sub(1, 1) == "/" then return p end
    p = p:gsub("^%./", "")
    if p == "." or p == "" then return self.root end
    return self.root .. "/" .. p
end

-- The port: the argument, else server.port, else 3113.  Returns nil and a
-- message for a bad argument.
function M:port(arg)
    if arg == nil then return self:get("server.port") end
    local n = math.tointeger(tonumber(arg, 10))
    if not n or not tostring(arg):match("^%d+$") or n < 1 or n > 65535 then
        return nil, ("Invalid port: %s (expected 1-65535)"):format(arg)
    end
    return n
end

return M
