-- stop: TERM to the app's group, KILL after stop_timeout; returns the moment
-- the group is gone.
local ui = require("ui")
return {
    name = "stop",
    usage = "stop",
    summary = "stop the app gracefully (SIGTERM, then SIGKILL after stop_timeout)",
    group = "app",
    run = function(ctx, args)
        if #args > 0 then
            ui.error("usage: chat-manager stop")
            return 2
        end
        return require("control").stop(ctx)
    end,
}
