-- _complete commands|backends: names for the shell completion scripts
-- (internal), one a line: every command (the root's own too) or every
-- backend (built-in and the root's own).
return {
    name = "_complete",
    usage = "_complete commands|backends",
    summary = "internal: names for shell completion",
    hidden = true,
    max_args = 1,
    run = function(ctx, args)
        local names
        if args[1] == "commands" then
            names = {}
            for _, cmd in ipairs(require("registry").ordered(ctx.root)) do
                names[#names + 1] = cmd.name
            end
        elseif args[1] == "backends" then
            names = require("backends").names(ctx.root)
        else
            return 2
        end
        io.stdout:write(table.concat(names, "\n"), #names > 0 and "\n" or "")
        return 0
    end,
}
