-- restart [port]: stop then start, on the same port unless one is given.
return {
    name = "restart",
    usage = "restart [port]",
    max_args = 1,
    summary = "stop, then start (the last working port unless given)",
    group = "app",
    json = "outcome",
    arguments = { { "port", "TCP port for the app (1-65535); else the port it ran on" } },
    example = "chat-manager restart",
    run = function(ctx, args)
        return require("control").restart(ctx, args[1])
    end,
}
