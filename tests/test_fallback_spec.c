/*
 * Runs spec/fallback.lua: one cmocka test per row, built at run time.  Each
 * row runs on a fresh runtime through lua/policy/fallback.lua (the embedded
 * copy, the one the binary uses); user-policy rows write their policy file
 * into a temporary directory first.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"
#include "runtime.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The Lua side of one row: args (spec path, row index, temp dir).  Returns
 * 0, or prints what differs and returns 1. */
static const char row_runner[] =
    "local spec_path, index, tmp = ...\n"
    "local fallback = require('policy.fallback')\n"
    "local row = dofile(spec_path)[index]\n"
    "local problems = {}\n"
    "local function bad(fmt, ...) problems[#problems + 1] = fmt:format(...) end\n"
    "local function dump(v)\n"
    "  if type(v) ~= 'table' then return tostring(v) end\n"
    "  local keys = {}\n"
    "  for k in pairs(v) do keys[#keys + 1] = tostring(k) end\n"
    "  table.sort(keys)\n"
    "  local parts = {}\n"
    "  for _, k in ipairs(keys) do parts[#parts + 1] = k .. '=' .. dump(v[k]) end\n"
    "  return '{' .. table.concat(parts, ', ') .. '}'\n"
    "end\n"
    "local function check(d, where)\n"
    "  if type(d) ~= 'table' then bad('%s: no decision table: %s', where, dump(d)) return end\n"
    "  local e = row.expect\n"
    "  if d.action ~= e.action then bad('%s: action %s, expected %s', where, dump(d.action), "
    "e.action) end\n"
    "  if e.to ~= nil and d.to ~= e.to then bad('%s: to %s, expected %s', where, dump(d.to), e.to) "
    "end\n"
    "  if e.action == 'keep' and d.to ~= nil then bad('%s: keep with to=%s', where, dump(d.to)) "
    "end\n"
    "  if e.how ~= nil and d.how ~= e.how then\n"
    "    bad('%s: how %s, expected %s', where, dump(d.how), tostring(e.how)) end\n"
    "  if type(d.reason) ~= 'string' or d.reason == '' then bad('%s: no reason', where)\n"
    "  elseif e.reason and not d.reason:find(e.reason) then\n"
    "    bad('%s: reason %q does not match %q', where, d.reason, e.reason) end\n"
    "end\n"
    "local function copy(v)\n"
    "  if type(v) ~= 'table' then return v end\n"
    "  local c = {}\n"
    "  for k, x in pairs(v) do c[k] = copy(x) end\n"
    "  return c\n"
    "end\n"
    "require('usercode').exe = os.getenv('CM_BINARY')\n"
    "local before = dump(row.ctx)\n"
    "if row.policy == nil then\n"
    "  check(fallback.decide(copy(row.ctx)), 'decide')\n"
    "  local none = { root = tmp, get = function() return nil end }\n"
    "  local d, err = fallback.evaluate(none, row.ctx)\n"
    "  check(d, 'evaluate')\n"
    "  if err ~= nil then bad('evaluate without a policy gave an error: %s', tostring(err)) end\n"
    "else\n"
    "  local path = tmp .. '/' .. (row.file or 'policy.lua')\n"
    "  local f = assert(io.open(path, 'w'))\n"
    "  f:write(row.policy)\n"
    "  f:close()\n"
    "  local settings = { root = tmp,\n"
    "    get = function(_, key) if key == 'manager.policy' then return path end end,\n"
    "    resolve = function(_, p) return p end }\n"
    "  local printed = {}\n"
    "  local d, err = fallback.evaluate(settings, row.ctx,\n"
    "    { print = function(s) printed[#printed + 1] = s end })\n"
    "  check(d, 'evaluate')\n"
    "  if row.error then\n"
    "    local prefix = path .. ':' .. (row.error_line and (row.error_line .. ':') or '')\n"
    "    if type(err) ~= 'string' then bad('no error reported (expected %s)', row.error)\n"
    "    else\n"
    "      if err:sub(1, #prefix) ~= prefix then bad('error %q does not start with %q', err, "
    "prefix) end\n"
    "      if not err:find(row.error, 1, true) then bad('error %q does not contain %q', err, "
    "row.error) end\n"
    "    end\n"
    "    if d and d.policy_error ~= err then bad('decision.policy_error is not the error') end\n"
    "    if d and type(d.reason) == 'string' and not d.reason:find('built-in policy decided', 1, "
    "true) then\n"
    "      bad('the reason does not say the built-in policy decided: %q', d.reason) end\n"
    "  elseif err ~= nil then\n"
    "    bad('unexpected error: %s', tostring(err))\n"
    "  end\n"
    "end\n"
    "if dump(row.ctx) ~= before then bad('the policy changed the caller\\'s ctx: %s', "
    "dump(row.ctx)) end\n"
    "if #problems > 0 then\n"
    "  io.stderr:write(('row %d (%s):\\n  %s\\n'):format(index, row.name, table.concat(problems, "
    "'\\n  ')))\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

typedef struct row {
    int index;
    char *name;
} row_t;

static char *spec_path;

static void run_row(void **state)
{
    const row_t *row = *state;
    char *tmp = cmt_tempdir();
    cm_runtime_t *rt = cm_runtime_new();
    assert_non_null(rt);
    lua_State *L = cm_runtime_lua(rt);
    int rc = 1;
    if (luaL_loadbufferx(L, row_runner, strlen(row_runner), "=fallback-spec-runner", "t") !=
        LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    } else {                            /* [runner] */
        lua_pushstring(L, spec_path);   /* [runner, spec] */
        lua_pushinteger(L, row->index); /* [runner, spec, index] */
        lua_pushstring(L, tmp);         /* [runner, spec, index, tmp] */
        rc = cm_runtime_run(rt, 3);
    }
    int closed = cm_runtime_free(rt);
    /* The escape attempt in the os.execute row must not have happened. */
    assert_int_not_equal(access("/tmp/cm-policy-escaped", F_OK), 0);
    cmt_rmtree(tmp);
    free(tmp);
    assert_int_equal(rc, 0);
    assert_int_equal(closed, 0); /* the loop closed empty */
}

/* Reads the row names with a plain Lua state (the spec is only data). */
static row_t *load_rows(size_t *count)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadfilex(L, spec_path, "t") != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK ||
        !lua_istable(L, -1)) {
        fprintf(stderr, "cannot load %s: %s\n", spec_path,
                lua_isstring(L, -1) ? lua_tostring(L, -1) : "it must return a table");
        lua_close(L);
        return NULL;
    } /* [rows] */
    size_t n = (size_t)luaL_len(L, -1);
    row_t *rows = calloc(n ? n : 1, sizeof *rows);
    for (size_t i = 0; i < n; i++) {
        lua_geti(L, -1, (lua_Integer)i + 1); /* [rows, row] */
        lua_getfield(L, -1, "name");         /* [rows, row, name] */
        char label[512];
        snprintf(label, sizeof label, "fallback spec %zu: %s", i + 1,
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "(unnamed)");
        rows[i].index = (int)i + 1;
        rows[i].name = strdup(label);
        lua_pop(L, 2); /* [rows] */
    }
    lua_close(L);
    *count = n;
    return rows;
}

int main(void)
{
    const char *src = getenv("CM_SOURCE_DIR");
    if (src == NULL || src[0] == '\0') {
        fprintf(stderr, "CM_SOURCE_DIR is not set (run via ctest)\n");
        return 1;
    }
    size_t len = strlen(src) + sizeof "/spec/fallback.lua";
    spec_path = malloc(len);
    snprintf(spec_path, len, "%s/spec/fallback.lua", src);
    size_t n = 0;
    row_t *rows = load_rows(&n);
    if (rows == NULL || n == 0) return 1;
    struct CMUnitTest *tests = calloc(n, sizeof *tests);
    for (size_t i = 0; i < n; i++) {
        tests[i].name = rows[i].name;
        tests[i].test_func = run_row;
        tests[i].initial_state = &rows[i];
    }
    int failed = _cmocka_run_group_tests("fallback spec", tests, n, NULL, NULL);
    for (size_t i = 0; i < n; i++)
        free(rows[i].name);
    free(rows);
    free(tests);
    free(spec_path);
    return failed;
}
