-- version (also --version, -V): this build and the libraries it runs with.
return {
    name = "version",
    usage = "version",
    max_args = 0,
    summary = "show the version, the Lua, libuv and libcurl versions and the build type",
    group = "other",
    json = "own",
    example = "chat-manager --version",
    run = function(ctx)
        local info = cm.build.info()
        if ctx.json then
            require("ui").json(info)
            return 0
        end
        io.stdout:write(("chat-manager %s (%s build)\n"):format(info.version, info.build_type),
            ("  %s\n"):format(info.lua),
            ("  libuv %s\n"):format(info.libuv),
            ("  %s\n"):format(info.libcurl or ("libcurl: " .. tostring(info.libcurl_error))))
        return 0
    end,
}
