-- force-stop: kill this instance's processes at once (never anyone else's).
local ui = require("ui")
return {
    name = "force-stop",
    usage = "force-stop",
    summary = "kill the supervisor, the app and this instance's orphans now",
    group = "app",
    run = function(ctx, args)
        if #args > 0 then
            ui.error("usage: chat-manager force-stop")
            return 2
        end
        return require("control").force_stop(ctx)
    end,
}
