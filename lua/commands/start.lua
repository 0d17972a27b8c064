-- start [port]: validate, launch the supervisor, wait until the app answers.
return {
    name = "start",
    usage = "start [port]",
    max_args = 1,
    summary = "start the app (port: argument, else server.port, else 3113)",
    group = "app",
    json = "outcome",
    arguments = { { "port", "TCP port for the app (1-65535); else server.port in config.json, else 3113" } },
    description = "Checks the config, the port, the app's program and the backends, launches the supervisor and returns when the app answers on its port (and on manager.health_path), or fails with the log's last lines after manager.start_timeout.",
    example = "chat-manager start 8080",
    run = function(ctx, args)
        return require("control").start(ctx, args[1])
    end,
}
