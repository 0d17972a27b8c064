-- run [port]: the supervisor in the foreground, for systemd and containers.
-- The app's output is shown on stdout too (by following the session log,
-- so the app itself always writes to the file); TERM/INT stop it cleanly.
--
-- Every command recognises a supervisor by the instance marker in its
-- /proc/PID/environ, which holds the environment the process was exec'd
-- with: setenv cannot change it.  So `run` first re-execs itself, same PID
-- (what systemd and a container runtime watch), with the marker added.

local ui = require("ui")
local settings_mod = require("settings")
local instance_mod = require("instance")

return {
    name = "run",
    usage = "run [port]",
    max_args = 1,
    summary = "run the supervisor in the foreground (systemd, containers)",
    group = "app",
    arguments = { { "port", "TCP port for the app; else server.port, else 3113" } },
    description = "The supervisor stays in the foreground and shows the app's output; SIGTERM or Ctrl+C stops the app and exits.  For systemd units and containers.",
    example = "chat-manager run 8080",
    run = function(ctx, args)
        local settings, err = settings_mod.load(ctx.root)
        if not settings then
            ui.error("%s", err)
            return 1
        end
        local port, perr = settings:port(args[1])
        if not port then
            ui.error("%s", perr)
            return 2
        end
        local inst = instance_mod.new(ctx.root)
        if not require("control").check_root(settings, inst) then return 1 end
        if inst:supervisor_alive() then
            ui.error("Chat-O-Llama is already running for %s", ctx.root)
            return 1
        end
        if not cm.net.port_free(port) then
            local owner = cm.net.port_owner(port)
            ui.error("Port %d is already in use%s", port,
                owner and (" by PID %d (%s)"):format(owner.pid, owner.name) or "")
            return 1
        end
        if cm.sys.getenv(instance_mod.MARKER) ~= inst.id then
            local env = cm.sys.environ()
            env[instance_mod.MARKER] = inst.id
            local argv = { assert(cm.sys.exe()), "--root", ctx.root, "run", tostring(port) }
            if ctx.no_color then argv[#argv + 1] = "--no-color" end
            local _, xerr = cm.sys.exec(argv, env)
            ui.error("%s", xerr)
            return 1
        end
        local ready, verr = require("venv").prepare(settings, inst)
        if not ready then
            ui.error("%s", verr)
            return 1
        end
        local stop_echo = cm.task.event()
        local sup = cm.task.spawn(function()
            return require("supervisor").run({ root = ctx.root, port = port, foreground = true })
        end)
        local echo = cm.task.spawn(function()
            -- The supervisor opens the log first; follow it from its start.
            local path
            for _ = 1, 200 do
                path = cm.log.path()
                if path or stop_echo:is_set() then break end
                cm.time.sleep(5)
            end
            if path then require("logfollow").follow(inst, path, 0, stop_echo) end
        end)
        local ok, code = sup:join()
        stop_echo:set()
        echo:join()
        if not ok then error(code, 0) end
        return code
    end,
}
