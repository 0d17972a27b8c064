/*
 * fuzz_ollama: the Ollama backend's answer parsing (lua/backends/ollama.lua)
 * on arbitrary HTTP bodies, through the real runtime.
 *
 * The parser (parse_tags, version_of) is local to the module, so the target
 * drives the module's public entry points instead, exactly as
 * `backend health ollama` and `backend status --json` do: M.check with
 * cm.http.get replaced by a fake transport that answers the fuzz input,
 * then backends.to_json + cm.json.encode, backends.format_line, M.details
 * and backends.hint_lines on the result.  C code on the path (cm.json,
 * cm.task) gets libFuzzer's coverage feedback from the compiler; the Lua
 * code gets it from a line hook that feeds libFuzzer's extra counters.
 *
 * Input: the /api/tags body (answered with status 200), optionally followed
 * by a NUL byte and the /api/version body (answered 200; without the NUL,
 * /api/version answers 404).
 *
 * Any Lua error aborts: a body from the network must give a verdict and a
 * message, never a traceback.
 *
 * The scripts are the embedded ones unless CHAT_MANAGER_LUA_DIR names a
 * directory (tests/fuzz/run clears it; set it to fuzz a patched copy).
 */
#include "runtime.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Lua line coverage, hashed AFL-style over (previous line, line) pairs.
 * libFuzzer clears and reads this section around every input. */
#define LUA_COUNTERS 8192
__attribute__((used,
               section("__libfuzzer_extra_counters"))) static uint8_t lua_counters[LUA_COUNTERS];
static uintptr_t previous_line;

static void line_hook(lua_State *L, lua_Debug *ar)
{
    if (lua_getinfo(L, "S", ar) == 0) return;
    /* The source string of a loaded chunk lives as long as the chunk. */
    uintptr_t here = ((uintptr_t)ar->source >> 4) * 2654435761u + (uintptr_t)ar->currentline;
    size_t slot = (size_t)((here ^ previous_line) % LUA_COUNTERS);
    if (lua_counters[slot] != 0xFF) lua_counters[slot]++;
    previous_line = here >> 1;
}

static const char harness[] =
    "local backends = require('backends')\n"
    "local ollama = require('backends.ollama')\n"
    "local answers = {}\n"
    "-- The fake transport: what the input says, for the path asked.\n"
    "cm.http.get = function(url)\n"
    "    local a = answers[url:match('/api/%a+$')]\n"
    "    return { status = a.status, body = a.body, ms = 1, content_type = 'application/json' }\n"
    "end\n"
    "local values = {\n"
    "    ['ollama.base_url'] = 'http://127.0.0.1:11434/',\n"
    "    ['ollama.verify_ssl'] = true,\n"
    "    ['manager.health_connect_timeout'] = 2,\n"
    "    ['manager.health_timeout'] = 5,\n"
    "}\n"
    "local settings = { get = function(_, key) return values[key] end }\n"
    "return function(tags_body, version_status, version_body)\n"
    "    answers['/api/tags'] = { status = 200, body = tags_body }\n"
    "    answers['/api/version'] = { status = version_status, body = version_body }\n"
    "    local r = ollama.check(settings)\n"
    "    assert(type(r) == 'table', 'check returned no table')\n"
    "    assert(type(r.healthy) == 'boolean', 'no verdict')\n"
    "    assert(type(r.detail) == 'string' and r.detail ~= '', 'no detail')\n"
    "    assert(r.hint == nil or type(r.hint) == 'string', 'hint is not a string')\n"
    "    if r.healthy then\n"
    "        for _, m in ipairs(r.info.models) do assert(type(m.name) == 'string') end\n"
    "    end\n"
    "    -- What `backend health ollama [--json]` and `backend status --json` print.\n"
    "    r.ms = 1\n"
    "    local text = cm.json.encode(backends.to_json(r), true)\n"
    "    assert(cm.json.decode(text), 'the --json output does not parse')\n"
    "    assert(type(backends.format_line('ollama', r)) == 'string')\n"
    "    for _, line in ipairs(ollama.details(r)) do assert(type(line) == 'string') end\n"
    "    backends.hint_lines(r)\n"
    "    return 0\n"
    "end\n";

static cm_runtime_t *rt;
static int check_ref = LUA_NOREF;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rt = cm_runtime_new();
    if (rt == NULL) abort();
    lua_State *L = cm_runtime_lua(rt);
    if (luaL_loadbufferx(L, harness, sizeof(harness) - 1, "=fuzz_ollama harness", "t") != LUA_OK ||
        cm_pcall(L, 0, 1) != LUA_OK || !lua_isfunction(L, -1)) {
        fprintf(stderr, "harness: %s\n", lua_tostring(L, -1));
        abort();
    }
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [] */
    /* Task threads inherit the hook of the state that creates them. */
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = cm_runtime_lua(rt);
    const uint8_t *nul = memchr(data, '\0', size);
    size_t tags_len = nul != NULL ? (size_t)(nul - data) : size;

    previous_line = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);     /* [fn] */
    lua_pushlstring(L, (const char *)data, tags_len); /* [fn, tags] */
    if (nul != NULL) {
        lua_pushinteger(L, 200); /* [fn, tags, 200] */
        lua_pushlstring(L, (const char *)nul + 1, size - tags_len - 1);
    } else {
        lua_pushinteger(L, 404);
        lua_pushliteral(L, "404 page not found");
    }
    /* [fn, tags, status, version] */
    int code = cm_runtime_run(rt, 3); /* [] */
    if (code != 0) {
        fprintf(stderr, "the Ollama answer above made the backend check fail (exit %d)\n", code);
        abort();
    }
    if (lua_gettop(L) != 0) {
        fprintf(stderr, "the main Lua stack kept %d values after the run\n", lua_gettop(L));
        abort();
    }
    return 0;
}
