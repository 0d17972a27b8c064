-- The first start prepares the app, as the old script did: with
-- manager.app.venv "auto", no venv/ or .venv/ in the root, no VIRTUAL_ENV
-- and a Python project in the app's directory (pyproject.toml or
-- requirements.txt), it creates venv/ (`uv venv` when uv is on PATH, else
-- `python3 -m venv`) and installs the app into it (`uv sync`, else
-- `pip install .`; `-r requirements.txt` without a pyproject.toml).  Their
-- output is shown line by line as progress.
--
-- A failed or interrupted preparation never leaves a venv/ that a later
-- start trusts: run/venv-incomplete exists from the first step until the
-- last one succeeded, and a start that finds it removes venv/ first.

local ui = require("ui")

local M = {}

-- A step may download the app's dependencies: generous, but bounded.
M.STEP_TIMEOUT_MS = 15 * 60 * 1000

local function is_dir(path)
    local st = cm.fs.stat(path)
    return st ~= nil and st.type == "dir"
end

local function remove_venv(dir)
    local r = cm.proc.run({ argv = { "rm", "-rf", "--", dir }, timeout = 60000 })
    if not r or r.code ~= 0 or is_dir(dir) then
        return nil, ("cannot remove %s%s"):format(dir, r and r.stderr ~= "" and (": " .. r.stderr) or "")
    end
    return true
end

-- Runs one step with its output (stdout and stderr) shown as it comes.
-- Returns true, or nil and what failed.
local function step(argv, cwd, env)
    ui.info("Running: %s", table.concat(argv, " "))
    local rfd, wfd = cm.proc.pipe()
    local done = cm.task.event()
    local child, err = cm.proc.spawn({
        argv = argv, cwd = cwd, env = env, stdout_fd = wfd, stderr_fd = wfd, new_session = true,
        on_exit = function(code) done:set(code) end,
    })
    cm.fs.close(wfd)
    if not child then
        cm.fs.close(rfd)
        return nil, err
    end
    local deadline = cm.time.now() + M.STEP_TIMEOUT_MS
    local buffer, timed_out = "", false
    local function show(line) if line:match("%S") then ui.info("  %s", line) end end
    while true do
        local data, rerr = cm.proc.read_fd(rfd, math.max(0, deadline - cm.time.now()))
        if not data then
            timed_out = rerr == "timeout"
            break
        end
        buffer = buffer .. data
        for line in buffer:gmatch("([^\n]*)\n") do show(line) end
        buffer = buffer:match("([^\n]*)$")
    end
    show(buffer)
    cm.fs.close(rfd)
    if timed_out then
        cm.proc.kill_group(child.pid, "KILL")
        done:wait(5000)
        return nil, ("'%s' did not finish within %d s"):format(table.concat(argv, " "),
            M.STEP_TIMEOUT_MS // 1000)
    end
    local code = done:wait(math.max(1000, deadline - cm.time.now()))
    if code ~= 0 then
        return nil, ("'%s' %s"):format(table.concat(argv, " "),
            code == nil and "did not exit" or code > 128 and ("was killed by signal %d"):format(code - 128)
            or ("exited with code %d"):format(code))
    end
    return true
end

-- Does this start need a venv made?  Returns the app's directory and the
-- kind of project ("pyproject" or "requirements"), or nil.
local function wanted(settings, inst)
    if settings:get("manager.app.venv") ~= "auto" then return nil end
    for _, name in ipairs({ "venv", ".venv" }) do
        if is_dir(inst.root .. "/" .. name .. "/bin") then return nil end
    end
    if (cm.sys.getenv("VIRTUAL_ENV") or "") ~= "" then return nil end
    local app_dir = settings:resolve(settings:get("manager.app.cwd"))
    if cm.fs.exists(app_dir .. "/pyproject.toml") then return app_dir, "pyproject" end
    if cm.fs.exists(app_dir .. "/requirements.txt") then return app_dir, "requirements" end
    return nil
end

-- Prepares the app's venv when it needs one (see above).  Returns true, or
-- nil and a message saying what failed (venv/ is then removed).
function M.prepare(settings, inst)
    local dir = inst.root .. "/venv"
    local pending = inst.run_dir .. "/venv-incomplete"
    if cm.fs.exists(pending) then
        ui.warn("%s was left incomplete by an earlier start: removing it", dir)
        local ok, err = remove_venv(dir)
        if not ok then return nil, err end
        cm.fs.remove(pending)
    end
    local app_dir, project = wanted(settings, inst)
    if not app_dir then return true end

    local find_program = require("app").find_program
    local path = cm.sys.getenv("PATH") or "/usr/bin:/bin"
    local uv = find_program("uv", path)
    local python = not uv and find_program("python3", path)
    if not uv and not python then
        return nil, "cannot create a virtual environment: neither uv nor python3 is on PATH"
    end
    if cm.fs.exists(dir) then
        return nil, ("%s exists but is not a virtual environment (no bin/): remove it, or set " ..
            "manager.app.venv"):format(dir)
    end
    ui.info("No virtual environment found: creating %s and installing the app into it", dir)
    local ok, err = inst:ensure_dirs()
    if ok then ok, err = cm.fs.write_atomic(pending, dir .. "\n", tonumber("600", 8), false) end
    if not ok then return nil, err end

    local env = cm.sys.environ()
    env.VIRTUAL_ENV = dir
    env.PATH = dir .. "/bin:" .. path
    env.PYTHONHOME = nil
    local what = "create the virtual environment"
    if uv then
        ok, err = step({ uv, "venv", dir }, app_dir, env)
    else
        ok, err = step({ python, "-m", "venv", dir }, app_dir, env)
    end
    if ok and not is_dir(dir .. "/bin") then ok, err = nil, dir .. "/bin was not created" end
    if ok then
        what = "install the app"
        if uv then
            env.UV_PROJECT_ENVIRONMENT = dir -- uv sync's own default is .venv
            ok, err = step(project == "pyproject" and { uv, "sync" } or
                { uv, "pip", "install", "-r", "requirements.txt" }, app_dir, env)
        else
            local pip = find_program("pip", env.PATH)
            if not pip then
                ok, err = nil, "pip not found in " .. dir .. "/bin or on PATH"
            else
                ok, err = step(project == "pyproject" and { pip, "install", "." } or
                    { pip, "install", "-r", "requirements.txt" }, app_dir, env)
            end
        end
    end
    if not ok then
        local msg = ("could not %s: %s"):format(what, err)
        local removed, rerr = remove_venv(dir)
        if removed then
            cm.fs.remove(pending)
        else
            msg = msg .. "; " .. rerr
        end
        return nil, msg
    end
    cm.fs.remove(pending)
    ui.info("Virtual environment ready: %s", dir)
    return true
end

return M
