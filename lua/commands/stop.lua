-- stop: TERM to the app's group, KILL after stop_timeout; returns the moment
-- the group is gone.
return {
    name = "stop",
    usage = "stop",
    max_args = 0,
    summary = "stop the app gracefully (SIGTERM, then SIGKILL after stop_timeout)",
    group = "app",
    json = "outcome",
    description = "Sends SIGTERM to the app's process group, SIGKILL after manager.stop_timeout, and returns the moment the group is gone.  Works from process.pid and /proc when the supervisor is gone.",
    example = "chat-manager stop",
    run = function(ctx)
        return require("control").stop(ctx)
    end,
}
