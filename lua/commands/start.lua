-- start [port]: validate, launch the supervisor, wait until the app answers.
return {
    name = "start",
    usage = "start [port]",
    max_args = 1,
    summary = "start the app (port: argument, else server.port, else 3113)",
    group = "app",
    run = function(ctx, args)
        return require("control").start(ctx, args[1])
    end,
}
