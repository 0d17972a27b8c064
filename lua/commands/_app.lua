-- _app switch PORT NAME (internal): switches the running app live through
-- its endpoint (lua/appapi.lua) for the supervisor, which keeps libcurl out
-- of its own long-lived process.  Prints the result as JSON.

local appapi = require("appapi")

return {
    name = "_app",
    usage = "_app switch PORT NAME",
    summary = "internal: the supervisor's live switch of the running app",
    hidden = true,
    run = function(ctx, args)
        local settings, err = require("settings").load(ctx.root)
        local port = math.tointeger(tonumber(args[2] or ""))
        if not settings or not port or args[1] ~= "switch" or not args[3] then
            io.stderr:write("_app: ", tostring(err or "usage: _app switch PORT NAME"), "\n")
            return 2
        end
        io.stdout:write(cm.json.encode(appapi.switch(settings, port, args[3])), "\n")
        return 0
    end,
}
