-- The fallback policy's behaviour as data: each row is a context and the
-- decision expected for it (tests/test_fallback_spec.c runs one cmocka test
-- per row through lua/policy/fallback.lua).
--
-- A row: { name, ctx, expect = { action, to, how, reason } }
--   expect.reason is a Lua pattern the decision's reason must match; every
--   decision must carry a reason.
-- User-policy rows also give `policy` (the file's text; the runner writes it
-- to <tmp>/<file> with file = row.file or "policy.lua") and, when the policy
-- is broken, `error_line` (the line the error must name, as
-- "<path>:<line>:"; false when the error names only the file) and `error`
-- (a plain substring of the error).  For a broken policy `expect` is the
-- built-in policy's decision, and its reason must say the built-in decided.

-- The base context: ollama configured, active and failing, llamacpp healthy,
-- an app that switches live.
local function ctx(over)
    local c = {
        active = "ollama",
        configured = "ollama",
        live = true,
        auto_fallback = true,
        health = { ollama = false, llamacpp = true },
        order = { "ollama", "llamacpp" },
        failures = 2,
        fallback_after = 2,
        why = "health",
        now = 100000,
        last_switch = nil,
        cooldown = 300,
        failback_after = 3,
        configured_healthy = 0,
    }
    for k, v in pairs(over or {}) do c[k] = v end
    return c
end

-- docs/backends.md's complete example, word for word.
local DOCS_EXAMPLE = [[
return function(ctx, builtin)
    local d = builtin(ctx)
    if d.action == "switch" and d.to == ctx.configured and ctx.active ~= ctx.configured then
        return { action = "keep", reason = "no automatic failback; serving with " .. ctx.active }
    end
    if d.action == "switch" and ctx.health.llamacpp == true and ctx.active ~= "llamacpp" then
        d.to = "llamacpp"
    end
    local hour = math.floor(ctx.now % 86400 / 3600) -- UTC
    if d.action == "switch" and ctx.why == "health" and (hour < 6) then d.how = "restart" end
    return d
end
]]

local SWITCH_TO_LLAMACPP = { action = "switch", to = "llamacpp", how = "live" }

return {
    -- The built-in policy.
    { name = "keep a healthy active backend",
      ctx = ctx { health = { ollama = true, llamacpp = true }, failures = 0 },
      expect = { action = "keep", reason = "'ollama' is healthy" } },
    { name = "keep a healthy active backend even when another comes first in order",
      ctx = ctx { active = "llamacpp", configured = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0 },
      expect = { action = "keep", reason = "'llamacpp' is healthy" } },
    { name = "hysteresis: one failure below fallback_after keeps",
      ctx = ctx { failures = 1 },
      expect = { action = "keep", reason = "1 of 2 failed checks" } },
    { name = "hysteresis: no failure counted yet keeps",
      ctx = ctx { failures = 0 },
      expect = { action = "keep", reason = "0 of 2 failed checks" } },
    { name = "hysteresis: failures at fallback_after switch and restart",
      ctx = ctx { failures = 2 },
      expect = { action = "switch", to = "llamacpp", how = "live", reason = "failed 2 consecutive checks" } },
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
      expect = { action = "switch", to = "llamacpp", how = "none", reason = "at start" } },
    { name = "start: the cooldown does not apply (nothing runs yet)",
      ctx = ctx { why = "start", failures = 0, last_switch = 100000 - 10 },
      expect = { action = "switch", to = "llamacpp", how = "none" } },
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
      expect = { action = "switch", to = "custom", how = "live" } },
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
      expect = { action = "switch", to = "llamacpp", how = "live" } },
    { name = "unknown health of the active backend below fallback_after keeps",
      ctx = ctx { health = { llamacpp = true }, failures = 1 },
      expect = { action = "keep", reason = "unknown health" } },
    { name = "only alternatives of unknown health: keep",
      ctx = ctx { health = { ollama = false } },
      expect = { action = "keep", reason = "no other backend is healthy" } },

    -- How a switch reaches the app.
    { name = "how: an app without the switch endpoint is restarted with the new backend",
      ctx = ctx { live = false },
      expect = { action = "switch", to = "llamacpp", how = "restart", reason = "failed 2 consecutive checks" } },
    { name = "how: at start nothing runs, whatever the endpoint",
      ctx = ctx { why = "start", live = false },
      expect = { action = "switch", to = "llamacpp", how = "none" } },

    -- The app refusing a live switch.
    { name = "refused: a backend the app refused lately is not chosen again",
      ctx = ctx { order = { "ollama", "llamacpp", "custom" },
                  health = { ollama = false, llamacpp = true, custom = true },
                  refused = { llamacpp = "Failed to switch to llamacpp backend" } },
      expect = { action = "switch", to = "custom", how = "live" } },
    { name = "refused: when the app refused the only healthy one, keep and say why",
      ctx = ctx { refused = { llamacpp = "Failed to switch to llamacpp backend" } },
      expect = { action = "keep", reason = "the app refused to switch to it: Failed to switch" } },

    -- Failback to the configured backend (the user's choice in config.json).
    { name = "failback: the configured backend healthy for failback_after checks comes back",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 3, last_switch = 100000 - 300,
                  last_switch_by = "policy" },
      expect = { action = "switch", to = "ollama", how = "live",
                 reason = "^failback: the configured backend 'ollama' has been healthy for 3 checks" } },
    { name = "failback: not within the cooldown of the fallback (never flap)",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 5, last_switch = 100000 - 10,
                  last_switch_by = "policy" },
      expect = { action = "keep", reason = "healthy again, but the last switch was 10 s ago %(cooldown 300 s%)" } },
    { name = "failback: fewer healthy checks than failback_after keep the fallback",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 2 },
      expect = { action = "keep", reason = "2 of 3 checks before a failback" } },
    { name = "failback: a larger failback_after waits longer",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 3, failback_after = 5 },
      expect = { action = "keep", reason = "3 of 5 checks" } },
    { name = "failback: even when the fallback fails too, only after failback_after checks",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = false },
                  failures = 1, configured_healthy = 1 },
      expect = { action = "keep", reason = "1 of 2 failed checks" } },
    { name = "failback: a failing fallback goes to the healthy configured backend as a fallback",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = false },
                  failures = 2, configured_healthy = 1 },
      expect = { action = "switch", to = "ollama", how = "live", reason = "failed 2 consecutive checks" } },
    { name = "failback: without the endpoint the app is restarted on the configured backend",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 4, live = false },
      expect = { action = "switch", to = "ollama", how = "restart", reason = "^failback" } },
    { name = "failback: an unhealthy configured backend is not gone back to",
      ctx = ctx { active = "llamacpp", health = { ollama = false, llamacpp = true },
                  failures = 0, configured_healthy = 9 },
      expect = { action = "keep", reason = "'llamacpp' is healthy" } },

    -- Pinning: the user's own switch is never undone within the cooldown.
    { name = "pinned: a user's switch is kept within the cooldown though it fails",
      ctx = ctx { failures = 5, last_switch = 100000 - 60, last_switch_by = "user" },
      expect = { action = "keep", reason = "chosen by the user 60 s ago" } },
    { name = "pinned: no failback within the cooldown of a user's switch",
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 9, last_switch = 100000 - 1,
                  last_switch_by = "user" },
      expect = { action = "keep", reason = "chosen by the user" } },
    { name = "pinned: after the cooldown a user's switch is subject to fallback",
      ctx = ctx { failures = 2, last_switch = 100000 - 300, last_switch_by = "user" },
      expect = SWITCH_TO_LLAMACPP },

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
      expect = { action = "switch", to = "llamacpp", how = "live", reason = "last healthy in order" } },
    { name = "user policy: may forbid failback and keep the fallback",
      file = "no-failback.lua",
      policy = [[
return function(ctx, builtin)
    local d = builtin(ctx)
    if d.action == "switch" and d.to == ctx.configured then
        return { action = "keep", reason = "no failback: staying on " .. ctx.active }
    end
    return d
end
]],
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 9 },
      expect = { action = "keep", reason = "^no failback: staying on llamacpp$" } },
    -- The complete example of docs/backends.md.
    { name = "user policy: the documented example restarts at night (03:46 UTC)",
      file = "docs-example.lua", policy = DOCS_EXAMPLE,
      ctx = ctx { order = { "ollama", "custom", "llamacpp" },
                  health = { ollama = false, custom = true, llamacpp = true } },
      expect = { action = "switch", to = "llamacpp", how = "restart", reason = "failed 2 consecutive checks" } },
    { name = "user policy: the documented example switches live by day",
      file = "docs-example.lua", policy = DOCS_EXAMPLE,
      ctx = ctx { now = 100000 + 10 * 3600 },
      expect = { action = "switch", to = "llamacpp", how = "live" } },
    { name = "user policy: the documented example does not fail back",
      file = "docs-example.lua", policy = DOCS_EXAMPLE,
      ctx = ctx { active = "llamacpp", health = { ollama = true, llamacpp = true },
                  failures = 0, configured_healthy = 9 },
      expect = { action = "keep", reason = "^no automatic failback; serving with llamacpp$" } },
    { name = "user policy: chooses how a switch reaches the app",
      file = "restart-always.lua",
      policy = [[
return function(ctx, builtin)
    local d = builtin(ctx)
    if d.action == "switch" then d.how = "restart" end
    return d
end
]],
      ctx = ctx {},
      expect = { action = "switch", to = "llamacpp", how = "restart" } },
    { name = "user policy: a switch without how is live when the app can",
      file = "no-how.lua",
      policy = "return function(ctx)\n    return { action = 'switch', to = 'llamacpp' }\nend\n",
      ctx = ctx { failures = 0 },
      expect = { action = "switch", to = "llamacpp", how = "live" } },
    { name = "user policy: the older restart = false still means none",
      file = "old-restart.lua",
      policy = "return function(ctx)\n    return { action = 'switch', to = 'llamacpp', restart = false }\nend\n",
      ctx = ctx {},
      expect = { action = "switch", to = "llamacpp", how = "none" } },
    { name = "user policy: an unknown how is rejected",
      file = "bad-how.lua",
      policy = "return function(ctx)\n    return { action = 'switch', to = 'llamacpp', how = 'reboot' }\nend\n",
      ctx = ctx {},
      error_line = 1, error = "how must be \"live\", \"restart\" or \"none\", not \"reboot\"",
      expect = SWITCH_TO_LLAMACPP },
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
      expect = { action = "switch", to = "llamacpp", how = "none", reason = "^wrapped: " } },
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
