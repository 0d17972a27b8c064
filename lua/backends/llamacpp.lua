-- The llama.cpp backend (llama-cpp-python inside the app): healthy when
--   (a) the app's interpreter can import llama_cpp,
--   (b) at least one valid GGUF model lies under llamacpp.model_path, and
--   (c) when llamacpp.server_url is set, that llama.cpp server's /health
--       answers 200 (503 means it is still loading its model).
-- The three run at the same time.  The import probe costs a Python start
-- (and llama_cpp's shared library load), so its answer is cached in
-- run/llamacpp-probe.json, keyed by the interpreter and its site-packages
-- directories (path + mtime): installing or removing a package changes a
-- site-packages mtime, and a warm check starts no Python at all.

local backends = require("backends")

local M = {
    name = "llamacpp",
    summary = "llama.cpp via llama-cpp-python and local GGUF models (llamacpp.model_path)",
}

M.CACHE_FILE = "run/llamacpp-probe.json"
M.CACHE_VERSION = 1
M.SCAN_DEPTH = 4            -- model_path and up to 3 levels of folders below it
M.SCAN_MAX_FILES = 100000   -- entries looked at: a bound on a runaway folder
M.SCAN_MAX_READ = 32        -- GGUF headers read per check; further files are counted only
M.MAX_LISTED = 5

-- One Python start answers both questions: the site-packages directories
-- (on stderr, each line prefixed, printed before the import so an
-- ImportError still reports them) and llama_cpp's version (on stdout).
M.PROBE_CODE = table.concat({
    "import sys",
    "d = [p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))]",
    "try:",
    "    import site; d.append(site.getusersitepackages())",
    "except Exception:",
    "    pass",
    "sys.stderr.write(''.join('cm-site:%s\\n' % p for p in d)); sys.stderr.flush()",
    "import llama_cpp",
    "sys.stdout.write(llama_cpp.__version__)",
}, "\n")

-- ---- the interpreter ----------------------------------------------------

local function is_executable_file(path)
    local st = cm.fs.stat(path)
    return st ~= nil and st.type == "file" and cm.fs.access(path, "x")
end

local function search_path(name)
    for dir in (cm.sys.getenv("PATH") or "/usr/local/bin:/usr/bin:/bin"):gmatch("[^:]+") do
        local p = dir .. "/" .. name
        if is_executable_file(p) then return p end
    end
    return nil
end

-- The app's interpreter: llamacpp.python, else the venv's python (as the
-- app would run with manager.app.venv), else python3 on PATH.  Returns
-- path, how it was chosen; or nil, the name that was not found.
function M.interpreter(settings)
    local configured = settings:get("llamacpp.python")
    if type(configured) == "string" and configured ~= "" then
        if configured:find("/", 1, true) then
            local p = settings:resolve(configured)
            return is_executable_file(p) and p or nil, p
        end
        local p = search_path(configured)
        return p, p or configured
    end
    local venv = settings:get("manager.app.venv")
    local dirs = {}
    if venv == "auto" or venv == nil then
        dirs = { settings.root .. "/venv", settings.root .. "/.venv" }
    elseif type(venv) == "string" then
        dirs = { settings:resolve(venv) }
    end
    for _, dir in ipairs(dirs) do
        for _, exe in ipairs({ "python", "python3" }) do
            local p = dir .. "/bin/" .. exe
            if is_executable_file(p) then return p, p end
        end
    end
    local p = search_path("python3")
    return p, p or "python3"
end

-- ---- the import probe and its cache ---------------------------------------

local function mtime_of(path)
    local st = cm.fs.stat(path)
    return st and ("%.9f"):format(st.mtime) or "missing"
end

local function interpreter_key(python)
    return python .. "|" .. mtime_of(python)
end

local function cache_path(settings)
    return settings.root .. "/" .. M.CACHE_FILE
end

-- The cached answer when the interpreter and every site-packages directory
-- are as they were, else nil.
local function cache_lookup(settings, python)
    local text = cm.fs.read(cache_path(settings), 1024 * 1024)
    local c = text and cm.json.decode(text)
    if type(c) ~= "table" or c.version ~= M.CACHE_VERSION or c.key ~= interpreter_key(python)
        or type(c.sites) ~= "table" or type(c.answer) ~= "table" then
        return nil
    end
    for _, s in ipairs(c.sites) do
        if type(s) ~= "table" or type(s.path) ~= "string" or mtime_of(s.path) ~= s.mtime then
            return nil
        end
    end
    return c.answer
end

-- Best effort: a root we cannot write to just means no cache.
local function cache_store(settings, python, sites, answer)
    local entries = {}
    for i, p in ipairs(sites) do entries[i] = { path = p, mtime = mtime_of(p) } end
    -- A directory that holds no app gets no run/ from a check.
    if not require("instance").root_holds_app(settings.root, settings.path) then return end
    local ok = cm.fs.mkdir(settings.root .. "/run", tonumber("700", 8))
    if not ok then return end
    cm.fs.write_atomic(cache_path(settings),
        cm.json.encode({ version = M.CACHE_VERSION, key = interpreter_key(python),
                         sites = entries, answer = answer }, true) .. "\n",
        tonumber("600", 8))
end

-- Runs (or recalls) the probe.  Returns { ok = true, version = "0.3.2" } or
-- { ok = false, error = "..." } (llama_cpp definitely not importable), or
-- { ok = nil, error = "..." } (could not tell: timeout, crash); and whether
-- the answer came from the cache.
function M.probe(settings, python, timeout_ms)
    local cached = cache_lookup(settings, python)
    if cached then return cached, true end
    local r, err = cm.proc.run({ argv = { python, "-c", M.PROBE_CODE }, cwd = settings.root,
                                 timeout = timeout_ms, max_output = 256 * 1024 })
    if not r then return { ok = false, error = ("cannot run %s: %s"):format(python, tostring(err)) }, false end
    if r.timed_out then
        return { ok = nil, error = ("the import probe did not finish within %s"):format(
            backends.seconds(timeout_ms)) }, false
    end
    local sites, lines = {}, {}
    for line in (r.stderr or ""):gmatch("[^\n]+") do
        local site = line:match("^cm%-site:(.*)$")
        if site then sites[#sites + 1] = site else lines[#lines + 1] = line end
    end
    local answer
    if r.code == 0 then
        local version = (r.stdout or ""):match("^%s*(.-)%s*$")
        answer = { ok = true, version = version ~= "" and version or "unknown version" }
    else
        local why = lines[#lines] or ("exit code %s"):format(tostring(r.code or r.signal))
        local import_error = why:find("ModuleNotFoundError", 1, true) or why:find("ImportError", 1, true)
        -- Only a clean "not installed" is worth remembering; a crash may
        -- not happen next time.
        answer = { ok = nil, error = why }
        if not import_error then return answer, false end
        answer.ok = false
    end
    cache_store(settings, python, sites, answer)
    return answer, false
end

-- ---- the models -----------------------------------------------------------

local function strip_path(msg, path)
    msg = tostring(msg)
    if msg:sub(1, #path + 2) == path .. ": " then return msg:sub(#path + 3) end
    return msg
end

-- Every *.gguf under dir: valid, invalid ({{file=, why=}}), and counts
-- { files = GGUF files found, read = headers read, truncated = entries
-- beyond SCAN_MAX_FILES not looked at }.  Only the first SCAN_MAX_READ
-- files are read (a check must stay cheap with thousands of files); the
-- rest are counted by name, and the caller says so.
local function scan_models(dir)
    local valid, invalid, seen = {}, {}, 0
    local counts = { files = 0, read = 0, truncated = false }
    local function walk(path, rel, depth)
        -- The C side counts the GGUF files and lists only as many as can
        -- still be read (no Lua string for a file that is only counted).
        local names, matched = cm.fs.list(path, ".gguf", M.SCAN_MAX_READ - counts.read)
        counts.files = counts.files + (matched or 0)
        for _, n in ipairs(names or {}) do
            if seen >= M.SCAN_MAX_FILES then
                counts.truncated = true
                return
            end
            if n:sub(1, 1) ~= "." then
                seen = seen + 1
                local is_gguf = n:find("%.[gG][gG][uU][fF]$") ~= nil
                local p, r = path .. "/" .. n, rel and (rel .. "/" .. n) or n
                if is_gguf and counts.read < M.SCAN_MAX_READ then
                    counts.read = counts.read + 1
                    local lst = cm.fs.lstat(p)
                    local st, serr, scode = cm.fs.stat(p)
                    if not st then
                        local why = strip_path(serr, p)
                        if lst and lst.type == "link" and scode == "ENOENT" then
                            why = "a dangling symlink"
                        end
                        invalid[#invalid + 1] = { file = r, why = why }
                    elseif st.type ~= "file" then
                        local kinds = { dir = "a directory", fifo = "a FIFO",
                                        socket = "a socket", device = "a device" }
                        invalid[#invalid + 1] = { file = r,
                            why = (kinds[st.type] or "something else") .. ", not a file" }
                    else
                        local info, err = cm.gguf.read(p)
                        if info then
                            info.file = r
                            valid[#valid + 1] = info
                        else
                            invalid[#invalid + 1] = { file = r, why = strip_path(err, p) }
                        end
                    end
                elseif not is_gguf and depth < M.SCAN_DEPTH then
                    local lst = cm.fs.lstat(p)
                    if lst and lst.type == "dir" then walk(p, r, depth + 1) end
                end
            end
        end
    end
    walk(dir, nil, 1)
    return valid, invalid, counts
end

-- 1235814400 -> "1.24B parameters"
local function parameters(n)
    if not math.type(n) or n <= 0 then return nil end
    for _, u in ipairs({ { 1e12, "T" }, { 1e9, "B" }, { 1e6, "M" }, { 1e3, "K" } }) do
        if n >= u[1] then return ("%.3g%s parameters"):format(n / u[1], u[2]) end
    end
    return ("%d parameters"):format(n)
end

local function describe_model(m)
    local parts = {}
    for _, v in ipairs({ m.architecture, m.size_label, parameters(m.parameter_count), m.quantization }) do
        if type(v) == "string" and v ~= "" then parts[#parts + 1] = v end
    end
    parts[#parts + 1] = backends.format_size(m.size)
    local name = (type(m.name) == "string" and m.name ~= "") and m.name or m.file
    return ("%s (%s)"):format(name, table.concat(parts, ", "))
end

-- Model names for the one-line detail: general.name, or the file name
-- when the name is missing or shared by several files.
local function short_names(models)
    local count = {}
    for _, m in ipairs(models) do
        if type(m.name) == "string" and m.name ~= "" then count[m.name] = (count[m.name] or 0) + 1 end
    end
    local names = {}
    for i, m in ipairs(models) do
        names[i] = (count[m.name] == 1) and m.name or m.file
    end
    return names
end

local function list_of(items, fmt)
    local out = {}
    for i = 1, math.min(#items, M.MAX_LISTED) do out[i] = fmt(items[i]) end
    if #items > M.MAX_LISTED then out[#out + 1] = ("+%d more"):format(#items - M.MAX_LISTED) end
    return table.concat(out, ", ")
end

-- ---- the optional llama.cpp server ------------------------------------------

local function check_server(settings, url, t)
    local health_url = url:gsub("/+$", "") .. "/health"
    local r, err, code = cm.http.get(health_url, {
        connect_timeout = t.connect, timeout = t.total, max_bytes = 64 * 1024,
        verify_ssl = settings:get("ollama.verify_ssl") ~= false,
    })
    if not r then
        return { healthy = false, error = code, detail = backends.describe_http_error(health_url, err, code, t) }
    end
    if r.status == 200 then return { healthy = true, status = 200, detail = "server ready" } end
    if r.status == 503 then
        return { healthy = false, status = 503, loading = true,
                 detail = ("server at %s is loading model"):format(url) }
    end
    return { healthy = false, status = r.status, detail = ("HTTP %d from %s"):format(r.status, health_url) }
end

-- ---- the check ------------------------------------------------------------

function M.check(settings)
    local t = backends.timeouts(settings)
    local model_dir = settings:resolve(settings:get("llamacpp.model_path"))
    local server_url = settings:get("llamacpp.server_url")
    if type(server_url) ~= "string" or server_url == "" then server_url = nil end
    local python, python_name = M.interpreter(settings)

    -- The probe and the server request wait on the loop while the models
    -- are read here.
    local probe_task = python and cm.task.spawn(M.probe, settings, python, t.total)
    local server_task = server_url and cm.task.spawn(check_server, settings, server_url, t)

    local dir_st = cm.fs.stat(model_dir)
    local valid, invalid, counts = {}, cm.json.array(), { files = 0, read = 0 }
    if dir_st and dir_st.type == "dir" then valid, invalid, counts = scan_models(model_dir) end

    local probe, cached
    if probe_task then
        local ok, a, b = probe_task:join()
        if ok then probe, cached = a, b else probe = { ok = nil, error = tostring(a) } end
    else
        probe = { ok = false, error = ("no Python interpreter: %s not found"):format(python_name) }
    end
    local server
    if server_task then
        local ok, s = server_task:join()
        server = ok and s or { healthy = nil, detail = "server check failed: " .. tostring(s) }
    end

    local info = {
        python = python or python_name, llama_cpp = probe.ok and probe.version or nil,
        probe_cached = cached or false, model_path = model_dir,
        models = cm.json.array(), invalid = invalid, server = server,
        gguf_files = counts.files, gguf_read = counts.read, scan_truncated = counts.truncated,
    }
    for i, m in ipairs(valid) do
        info.models[i] = { file = m.file, name = m.name, architecture = m.architecture,
                           size_label = m.size_label, quantization = m.quantization,
                           context_length = m.context_length, version = m.version, size = m.size,
                           parameter_count = m.parameter_count }
    end

    -- A problem is definite (unhealthy) or an open question (unknown).
    local problems, hints, definite = {}, {}, 0
    if probe.ok == false then
        definite = definite + 1
        problems[#problems + 1] = python
            and ("llama_cpp not importable by %s (%s)"):format(python, probe.error) or probe.error
        hints[#hints + 1] = python
            and ("Install it into the app's interpreter: %s -m pip install llama-cpp-python"):format(python)
            or "Create the app's venv (python3 -m venv venv) or set llamacpp.python in config.json"
        hints[#hints + 1] = "(the old manager's advice: pip install llama-cpp-python, with the venv activated)"
    elseif probe.ok == nil then
        problems[#problems + 1] = ("llama_cpp import by %s unclear: %s"):format(python, tostring(probe.error))
    end
    if #valid == 0 then definite = definite + 1 end
    if not dir_st then
        problems[#problems + 1] = ("model directory not found: %s"):format(model_dir)
    elseif dir_st.type ~= "dir" then
        problems[#problems + 1] = ("model path is not a directory: %s"):format(model_dir)
    elseif #valid == 0 then
        problems[#problems + 1] = ("no valid GGUF model in %s"):format(model_dir)
    end
    if #valid == 0 then
        hints[#hints + 1] = ("Download GGUF models into %s (llamacpp.model_path in config.json)"):format(model_dir)
    end
    if #invalid > 0 then
        hints[#hints + 1] = "Files not counted are not usable GGUF models: re-download or remove them"
    end
    if server then
        if server.healthy == false then definite = definite + 1 end
        if server.healthy ~= true then
            problems[#problems + 1] = server.detail
            hints[#hints + 1] = server.loading
                and "The llama.cpp server is still loading its model; check again shortly"
                or ("Start the llama.cpp server at %s, or unset llamacpp.server_url"):format(server_url)
        end
    end

    local parts = {}
    if #valid > 0 then
        parts[#parts + 1] = ("%d model%s (%s)"):format(#valid, #valid == 1 and "" or "s",
            list_of(short_names(valid), tostring))
    end
    if counts.read < counts.files or counts.truncated then
        parts[#parts + 1] = ("first %d of %s%d GGUF files read"):format(counts.read,
            counts.truncated and "more than " or "", counts.files)
    end
    if probe.ok then parts[#parts + 1] = "llama_cpp " .. probe.version end
    if server and server.healthy then parts[#parts + 1] = server.detail end
    local detail = table.concat(parts, ", ")
    if #problems > 0 then
        detail = table.concat(problems, "; ") .. (detail ~= "" and ("; " .. detail) or "")
    end
    if #invalid > 0 then
        -- The reasons are in info.invalid and in `backend health llamacpp`.
        detail = ("%s; %d file%s not counted (%s)"):format(detail, #invalid, #invalid == 1 and "" or "s",
            list_of(invalid, function(x) return x.file end))
        hints[#hints + 1] = "See why files are not counted: chat-manager backend health llamacpp"
    end

    local healthy
    if #problems == 0 then
        healthy = true
    elseif definite > 0 then
        healthy = false
    end
    return { healthy = healthy, detail = detail, info = info,
             hint = #hints > 0 and table.concat(hints, "\n") or nil }
end

-- The lines `backend health llamacpp` and `backend status` print under its
-- verdict.  opts.current: the model the running app has loaded (marked *).
function M.details(result, opts)
    local info, lines = result.info or {}, {}
    local current = opts and opts.current
    if info.python then
        lines[#lines + 1] = ("Python:  %s%s"):format(info.python,
            info.llama_cpp and (" (llama_cpp %s%s)"):format(info.llama_cpp,
                info.probe_cached and ", cached answer" or "") or "")
    end
    if info.model_path then lines[#lines + 1] = "Models:  " .. info.model_path end
    for _, m in ipairs(info.models or {}) do
        local loaded = current ~= nil and (current == m.file or current == m.name or
            current == (m.file or ""):gsub("%.gguf$", ""))
        lines[#lines + 1] = ("%s %s  %s, GGUF v%s%s%s"):format(loaded and "*" or " ", m.file, describe_model(m),
            tostring(m.version), (math.type(m.context_length) and m.context_length > 0)
                and (", context " .. m.context_length) or "", loaded and " (loaded by the app)" or "")
    end
    for _, x in ipairs(info.invalid or {}) do
        lines[#lines + 1] = ("  %s  not counted: %s"):format(x.file, x.why)
    end
    if (info.gguf_read or 0) < (info.gguf_files or 0) or info.scan_truncated then
        lines[#lines + 1] = ("  (first %d of %s%d GGUF files read; the rest are not checked)"):format(
            info.gguf_read, info.scan_truncated and "more than " or "", info.gguf_files)
    end
    if info.server then lines[#lines + 1] = "Server:  " .. tostring(info.server.detail) end
    return lines
end

return M
