-- restart [port]: stop then start, on the same port unless one is given.
local ui = require("ui")
return {
    name = "restart",
    usage = "restart [port]",
    summary = "stop, then start (same port unless given)",
    group = "app",
    run = function(ctx, args)
        if #args > 1 then
            ui.error("usage: chat-manager restart [port]")
            return 2
        end
        return require("control").restart(ctx, args[1])
    end,
}
