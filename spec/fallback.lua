-- The fallback policy's behaviour as data: each row is a context and the
-- decision expected for it (tests/test_fallback_spec.c runs one cmocka test
-- per row through lua/policy/fallback.lua).
--
-- A row: { name, ctx, expect = { action, to, restart, reason } }
--   expect.reason is a Lua pattern the decision's reason must match; every
--   decision must carry a reason.
-- User-policy rows also give `policy` (the file's text; the runner writes it
-- to <tmp>/<file> with file = row.file or "policy.lua") and, when the policy
-- is broken, `error_line` (the line the error must name, as
-- "<path>:<line>:"; false when the error names only the file) and `error`
-- (a plain substring of the error).  For a broken policy `expect` is the
-- built-in policy's decision, and its reason must say the built-in decided.

-- The base context: ollama active and failing, llamacpp healthy.
local function ctx(over)
    local c = {
        active = "ollama",
        auto_fallback = true,
        health = { ollama = false, llamacpp = true },
        order = { "ollama", "llamacpp" },
        failures = 2,
        fallback_after = 2,
        why = "health",
        now = 100000,
        last_switch = nil,
        cooldown = 300,
    }
    for k, v in pairs(over or {}) do c[k] = v end
    return c
end

local SWITCH_TO_LLAMACPP = { action = "switch", to = "llamacpp", restart = true }

return {
    -- The built-in policy.
    { name = "keep a healthy active backend",
      ctx = ctx { health = { ollama = true, llamacpp = true }, failures = 0 },
      expect = { action = "keep", reason = "'ollama' is healthy" } },
    { name = "keep a healthy active backend even when another comes first in order",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true }, failures = 0 },
      expect = { action = "keep", reason = "'llamacpp' is healthy" } },
    { name = "hysteresis: one failure below fallback_after keeps",
      ctx = ctx { failures = 1 },
      expect = { action = "keep", reason = "1 of 2 failed checks" } },
    { name = "hysteresis: no failure counted yet keeps",
      ctx = ctx { failures = 0 },
      expect = { action = "keep", reason = "0 of 2 failed checks" } },
    { name = "hysteresis: failures at fallback_after switch and restart",
      ctx = ctx { failures = 2 },
      expect = { action = "switch", to = "llamacpp", restart = true, reason = "failed 2 consecutive checks" } },
    { name = "hysteresis: failures beyond fallback_after switch",
      ctx = ctx { failures = 7 },
      expect = SWITCH_TO_LLAMACPP },
    { name = "hysteresis: a larger fallback_after waits longer",
      ctx = ctx { failures = 2, fallback_after = 3 },
      expect = { action = "keep", reason = "2 of 3 failed checks" } },
    { name = "cooldown: no switch within the cooldown of the last one",
      ctx = ctx { failures = 5, last_switch = 100000 - 100 },
      expect = { action = "keep", reason = "last switch was 100 s ago %(cooldown 300 s%)" } },
    { name = "cooldown: a switch just before the end of the cooldown still keeps",
      ctx = ctx { failures = 5, last_switch = 100000 - 299.5 },
      expect = { action = "keep", reason = "cooldown 300 s" } },
    { name = "cooldown: once it has passed the policy switches",
      ctx = ctx { failures = 5, last_switch = 100000 - 300 },
      expect = SWITCH_TO_LLAMACPP },
    { name = "cooldown: zero allows an immediate switch",
      ctx = ctx { failures = 2, last_switch = 100000, cooldown = 0 },
      expect = SWITCH_TO_LLAMACPP },
    { name = "start: an unhealthy active backend is replaced at once, without restart",
      ctx = ctx { why = "start", failures = 0 },
      expect = { action = "switch", to = "llamacpp", restart = false, reason = "at start" } },
    { name = "start: the cooldown does not apply (nothing runs yet)",
      ctx = ctx { why = "start", failures = 0, last_switch = 100000 - 10 },
      expect = { action = "switch", to = "llamacpp", restart = false } },
    { name = "start: a healthy active backend is kept",
      ctx = ctx { why = "start", failures = 0, health = { ollama = true, llamacpp = true } },
      expect = { action = "keep", reason = "healthy" } },
    { name = "no healthy alternative keeps the active backend",
      ctx = ctx { failures = 4, health = { ollama = false, llamacpp = false } },
      expect = { action = "keep", reason = "no other backend is healthy" } },
    { name = "no healthy alternative at start keeps the active backend",
      ctx = ctx { why = "start", health = { ollama = false, llamacpp = false } },
      expect = { action = "keep", reason = "no other backend is healthy" } },
    { name = "auto_fallback off keeps an unhealthy backend",
      ctx = ctx { auto_fallback = false, failures = 9 },
      expect = { action = "keep", reason = "auto_fallback is off" } },
    { name = "auto_fallback off keeps at start too",
      ctx = ctx { auto_fallback = false, why = "start" },
      expect = { action = "keep", reason = "auto_fallback is off" } },
    { name = "order: the first healthy backend in order is chosen",
      ctx = ctx { order = { "ollama", "custom", "llamacpp" },
                  health = { ollama = false, custom = true, llamacpp = true } },
      expect = { action = "switch", to = "custom", restart = true } },
    { name = "order: a different order chooses differently",
      ctx = ctx { order = { "llamacpp", "ollama", "custom" },
                  health = { ollama = false, custom = true, llamacpp = true } },
      expect = SWITCH_TO_LLAMACPP },
    { name = "order: unhealthy backends early in the order are skipped",
      ctx = ctx { order = { "ollama", "custom", "llamacpp" },
                  health = { ollama = false, custom = false, llamacpp = true } },
      expect = SWITCH_TO_LLAMACPP },
    { name = "unknown health (nil) of an alternative is not healthy",
      ctx = ctx { order = { "ollama", "custom", "llamacpp" },
                  health = { ollama = false, llamacpp = true } },
      expect = SWITCH_TO_LLAMACPP },
    { name = "unknown health (nil) of the active backend counts as a failure",
      ctx = ctx { health = { llamacpp = true }, failures = 2 },
      expect = { action = "switch", to = "llamacpp", restart = true } },
    { name = "unknown health of the active backend below fallback_after keeps",
      ctx = ctx { health = { llamacpp = true }, failures = 1 },
      expect = { action = "keep", reason = "unknown health" } },
    { name = "only alternatives of unknown health: keep",
      ctx = ctx { health = { ollama = false } },
      expect = { action = "keep", reason = "no other backend is healthy" } },

    -- User policies (manager.policy).
    { name = "user policy: a valid policy decides",
      file = "always-keep.lua",
      policy = [[
return function(ctx)
    return { action = "keep", reason = "pinned to " .. ctx.active }
end
]],
      ctx = ctx { failures = 5 },
      expect = { action = "keep", reason = "^pinned to ollama$" } },
    { name = "user policy: may switch to a backend the built-in would not pick",
      file = "prefer-last.lua",
      policy = [[
return function(ctx)
    for i = #ctx.order, 1, -1 do
        local name = ctx.order[i]
        if name ~= ctx.active and ctx.health[name] then
            return { action = "switch", to = name, reason = "last healthy in order" }
        end
    end
    return { action = "keep" }
end
]],
      ctx = ctx { order = { "ollama", "custom", "llamacpp" },
                  health = { ollama = false, custom = true, llamacpp = true }, failures = 1 },
      expect = { action = "switch", to = "llamacpp", restart = true, reason = "last healthy in order" } },
    { name = "user policy: may defer to the built-in policy",
      file = "wrap-builtin.lua",
      policy = [[
return function(ctx, builtin)
    local d = builtin(ctx)
    d.reason = "wrapped: " .. d.reason
    return d
end
]],
      ctx = ctx { why = "start" },
      expect = { action = "switch", to = "llamacpp", restart = false, reason = "^wrapped: " } },
    { name = "user policy: a syntax error is reported with file:line and the built-in decides",
      file = "syntax.lua",
      policy = "return function(ctx)\n    local x = \n    return { action = 'keep' }\nend\n",
      ctx = ctx {},
      error_line = 3, error = "unexpected symbol",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: a runtime error is reported with file:line and the built-in decides",
      file = "runtime.lua",
      policy = "return function(ctx)\n    local n = nil\n    return { action = 'keep', reason = n .. 'x' }\nend\n",
      ctx = ctx { failures = 1 },
      error_line = 3, error = "attempt to concatenate a nil value",
      expect = { action = "keep", reason = "1 of 2 failed checks" } },
    { name = "user policy: error() is reported with file:line",
      file = "raises.lua",
      policy = "return function(ctx)\n    error('policy says no')\nend\n",
      ctx = ctx {},
      error_line = 2, error = "policy says no",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: an endless loop is stopped by the instruction budget",
      file = "endless.lua",
      policy = "return function(ctx)\n    while true do end\nend\n",
      ctx = ctx {},
      error_line = 2, error = "policy exceeded its instruction budget",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: an endless loop inside pcall is stopped too",
      file = "endless-pcall.lua",
      policy = "return function(ctx)\n    while true do pcall(function() while true do end end) end\nend\n",
      ctx = ctx {},
      error_line = 2, error = "policy exceeded its instruction budget",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: an endless loop at load time is stopped",
      file = "endless-load.lua",
      policy = "local n = 0\nwhile true do n = n + 1 end\nreturn function() end\n",
      ctx = ctx {},
      error_line = 2, error = "policy exceeded its instruction budget",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: os.execute is not available",
      file = "forbidden-os.lua",
      policy = "return function(ctx)\n    os.execute('touch /tmp/cm-policy-escaped')\n    return { action = 'keep' }\nend\n",
      ctx = ctx {},
      error_line = 2, error = "attempt to call a nil value (field 'execute')",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: io is not available",
      file = "forbidden-io.lua",
      policy = "return function(ctx)\n    local f = io.open('/etc/passwd')\n    return { action = 'keep' }\nend\n",
      ctx = ctx {},
      error_line = 2, error = "global 'io'",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: require, load and cm are not available",
      file = "forbidden-require.lua",
      policy = "local ok = require or load or loadfile or dofile or cm or debug or package or collectgarbage\n" ..
               "return function(ctx)\n    return ok('os')\nend\n",
      ctx = ctx {},
      error_line = 3, error = "attempt to call a nil value (upvalue 'ok')",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: a wrong return type is reported with file:line",
      file = "wrong-type.lua",
      policy = "\nreturn function(ctx)\n    return 'switch'\nend\n",
      ctx = ctx {},
      error_line = 2, error = "returned string, expected a decision table",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: an unknown action is rejected",
      file = "bad-action.lua",
      policy = "return function(ctx)\n    return { action = 'panic' }\nend\n",
      ctx = ctx { failures = 0 },
      error_line = 1, error = "action must be \"keep\" or \"switch\"",
      expect = { action = "keep", reason = "0 of 2 failed checks" } },
    { name = "user policy: a switch to an unknown backend is rejected",
      file = "unknown-target.lua",
      policy = "return function(ctx)\n    return { action = 'switch', to = 'nonesuch' }\nend\n",
      ctx = ctx {},
      error_line = 1, error = "unknown backend: nonesuch",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: a switch to the active backend is rejected",
      file = "same-target.lua",
      policy = "return function(ctx)\n    return { action = 'switch', to = ctx.active }\nend\n",
      ctx = ctx {},
      error_line = 1, error = "already the active backend",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: a file that does not return a function is rejected",
      file = "not-a-function.lua",
      policy = "return { action = 'keep' }\n",
      ctx = ctx {},
      error_line = false, error = "the policy file must return a function, not table",
      expect = SWITCH_TO_LLAMACPP },
    { name = "user policy: changes to ctx do not leak back to the caller",
      file = "mutates.lua",
      policy = "return function(ctx)\n    ctx.health.llamacpp = false\n    ctx.order = {}\n    return { action = 'keep', reason = 'mutated' }\nend\n",
      ctx = ctx {},
      expect = { action = "keep", reason = "^mutated$" } },
}
