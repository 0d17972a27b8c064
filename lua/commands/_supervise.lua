-- _supervise PORT [BACKEND [WHY]]: the detached supervisor launched by
-- `start` (internal); BACKEND is the one the app starts with when the
-- fallback policy chose another than config.json's, for reason WHY.
return {
    name = "_supervise",
    usage = "_supervise PORT [BACKEND [WHY]]",
    summary = "internal: the supervisor process launched by start",
    hidden = true,
    run = function(ctx, args)
        local port = math.tointeger(tonumber(args[1] or ""))
        if not port then return 2 end
        local fd = math.tointeger(tonumber(cm.sys.getenv("CHAT_MANAGER_READY_FD") or ""))
        cm.sys.setenv("CHAT_MANAGER_READY_FD", nil)
        if fd then cm.sys.cloexec(fd) end
        return require("supervisor").run({ root = ctx.root, port = port, ready_fd = fd,
                                           serving = args[2], serving_reason = args[3] })
    end,
}
