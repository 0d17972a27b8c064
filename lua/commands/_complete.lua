-- _complete commands|backends: names for the shell completion scripts
-- (internal), one a line: every command (the root's own too) or every
-- backend (built-in and the root's own).  Only plain names are given: bash's
-- `compgen -W` expands what it is given, so a name such as `$(rm ...)` in a
-- hostile root must never reach it.

local function plain(name)
    return type(name) == "string" and name:match("^[%w][%w_.%-]*$") ~= nil
end

return {
    name = "_complete",
    usage = "_complete commands|backends",
    summary = "internal: names for shell completion",
    hidden = true,
    max_args = 1,
    run = function(ctx, args)
        local all
        if args[1] == "commands" then
            all = {}
            for _, cmd in ipairs(require("registry").ordered(ctx.root)) do all[#all + 1] = cmd.name end
        elseif args[1] == "backends" then
            all = require("backends").names(ctx.root)
        else
            return 2
        end
        local names = {}
        for _, name in ipairs(all) do
            if plain(name) then names[#names + 1] = name end
        end
        io.stdout:write(table.concat(names, "\n"), #names > 0 and "\n" or "")
        return 0
    end,
}
