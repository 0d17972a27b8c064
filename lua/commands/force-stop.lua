-- force-stop: kill this instance's processes at once (never anyone else's).
return {
    name = "force-stop",
    usage = "force-stop",
    max_args = 0,
    summary = "kill the supervisor, the app and this instance's orphans now",
    group = "app",
    json = "outcome",
    description = "Sends SIGKILL at once to the supervisor, the app's group and every process carrying this root's instance marker; processes of others on the common ports are named, never touched.",
    example = "chat-manager force-stop",
    run = function(ctx)
        return require("control").force_stop(ctx)
    end,
}
