-- stop: TERM to the app's group, KILL after stop_timeout; returns the moment
-- the group is gone.
return {
    name = "stop",
    usage = "stop",
    max_args = 0,
    summary = "stop the app gracefully (SIGTERM, then SIGKILL after stop_timeout)",
    group = "app",
    run = function(ctx)
        return require("control").stop(ctx)
    end,
}
