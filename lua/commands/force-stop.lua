-- force-stop: kill this instance's processes at once (never anyone else's).
return {
    name = "force-stop",
    usage = "force-stop",
    max_args = 0,
    summary = "kill the supervisor, the app and this instance's orphans now",
    group = "app",
    run = function(ctx)
        return require("control").force_stop(ctx)
    end,
}
