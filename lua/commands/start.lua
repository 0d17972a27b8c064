-- start [port]: validate, launch the supervisor, wait until the app answers.
local ui = require("ui")
return {
    name = "start",
    usage = "start [port]",
    summary = "start the app (port: argument, else server.port, else 3113)",
    group = "app",
    run = function(ctx, args)
        if #args > 1 then
            ui.error("usage: chat-manager start [port]")
            return 2
        end
        return require("control").start(ctx, args[1])
    end,
}
