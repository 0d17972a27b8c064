/*
 * cm.json, cm.config and cm.gguf as Lua sees them (src/lua_json.c,
 * src/lua_config.c, src/lua_gguf.c): each test runs a Lua chunk on a fresh
 * runtime; the chunk asserts, and a failed assert fails the test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fixtures/gguf_writer.h"
#include "cm_modules.h"
#include "cmtest.h"

/* lua_cm.c may still reference these groups weakly, and a weak reference
 * does not pull an object out of a static library: name them here so the
 * suite always links them. */
int (*volatile const cm_json_test_groups[])(lua_State *) = {cm__open_json, cm__open_config,
                                                            cm__open_gguf};

static char *dir;

static int setup(void **state)
{
    (void)state;
    dir = cmt_tempdir();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cmt_rmtree(dir);
    free(dir);
    return 0;
}

/* Runs a Lua chunk with DIR defined as the test's temp directory. */
static void lua_ok(const char *code)
{
    size_t n = strlen(code) + strlen(dir) + 64;
    char *chunk = malloc(n);
    snprintf(chunk, n, "local DIR = %s%s%s\n%s", "[[", dir, "]]", code);
    int rc = cmt_lua(chunk);
    free(chunk);
    assert_int_equal(rc, 0);
}

static void test_decode(void **state)
{
    (void)state;
    lua_ok("local v = cm.json.decode('{\"a\": [1, 2.5, \"x\", true, null], \"b\": {}, '\n"
           "  .. '\"c\": [], \"big\": 9007199254740993, \"f\": 1.0, \"e\": 1e2, \"u\": "
           "\"\\\\u00e9\"}')\n"
           "assert(v.a[1] == 1 and math.type(v.a[1]) == 'integer')\n"
           "assert(v.a[2] == 2.5 and v.a[3] == 'x' and v.a[4] == true)\n"
           "assert(v.a[5] == cm.json.null and #v.a == 5)\n"
           "assert(type(v.b) == 'table' and next(v.b) == nil)\n"
           "assert(getmetatable(v.c) and getmetatable(v.c).__jsonarray)\n"
           "assert(v.big == 9007199254740993 and math.type(v.big) == 'integer')\n"
           "assert(math.type(v.f) == 'float' and v.f == 1.0)\n"
           "assert(math.type(v.e) == 'float' and v.e == 100)\n"
           "assert(v.u == '\\xc3\\xa9')\n"
           "assert(cm.json.decode('null') == cm.json.null)\n"
           "assert(cm.json.decode(' 42 ') == 42)\n"
           "assert(cm.json.decode('\"s\"') == 's')\n");
}

static void test_decode_errors(void **state)
{
    (void)state;
    lua_ok("local v, msg, code = cm.json.decode('{\\n  \"a\": 1\\n  \"b\": 2\\n}')\n"
           "assert(v == nil and code == 'syntax', msg)\n"
           "assert(msg == \"3:3: invalid JSON: missing ',' or '}' near '\\\"b\\\": 2'\", msg)\n"
           "v, msg = cm.json.decode('')\n"
           "assert(v == nil and msg:find('unexpected end of input'), msg)\n"
           "v, msg = cm.json.decode('[1,]')\n"
           "assert(msg:find('trailing comma'), msg)\n"
           "v, msg = cm.json.decode('{\"a\":1}\\0')\n"
           "assert(v == nil and msg:find('NUL byte'), msg)\n"
           "v, msg = cm.json.decode(string.rep('[', 1001) .. string.rep(']', 1001))\n"
           "assert(v == nil and msg:find('nesting deeper than 1000 levels'), msg)\n"
           "assert(not pcall(cm.json.decode))\n");
}

static void test_encode(void **state)
{
    (void)state;
    lua_ok(
        "local e = cm.json.encode\n"
        "assert(e({b = 1, a = {x = true, c = 0.7}, d = 'q\"\\n'}) == "
        "'{\"a\":{\"c\":0.7,\"x\":true},\"b\":1,\"d\":\"q\\\\\"\\\\n\"}')\n"
        "assert(e({}) == '{}')\n"
        "assert(e(cm.json.array()) == '[]')\n"
        "assert(e(cm.json.array({1, 2})) == '[1,2]')\n"
        "assert(e({1, 'two', cm.json.null, false}) == '[1,\"two\",null,false]')\n"
        "assert(e(nil) == 'null' and e(cm.json.null) == 'null')\n"
        "assert(e(9007199254740993) == '9007199254740993')\n"
        "assert(e(math.mininteger) == '-9223372036854775808')\n"
        "assert(e(1e-05) == '1e-05' and e(3.0) == '3' and e(0.1 + 0.2) == '0.30000000000000004')\n"
        "assert(e('\\xc3\\xa9\\1') == '\"\\xc3\\xa9\\\\u0001\"')\n"
        "assert(e({a = {1, {}}, b = cm.json.array()}, true) == "
        "'{\\n  \"a\": [\\n    1,\\n    {}\\n  ],\\n  \"b\": []\\n}')\n"
        "-- decoded arrays stay arrays, even empty ones\n"
        "local text = '{\"c\":[],\"n\":[1.0,1E5,12345678901234567890]}'\n"
        "assert(e(cm.json.decode(text)) == '{\"c\":[],\"n\":[1,100000,1.2345678901234567e+19]}', "
        "e(cm.json.decode(text)))\n"
        "local big = cm.json.decode('[9223372036854775807, -5]')\n"
        "assert(e(big) == '[9223372036854775807,-5]', e(big))\n");
}

static void test_encode_errors(void **state)
{
    (void)state;
    lua_ok("local function fails(v, part)\n"
           "  local ok, err = pcall(cm.json.encode, v)\n"
           "  assert(not ok, 'encoded: ' .. tostring(v))\n"
           "  assert(tostring(err):find(part, 1, true), err)\n"
           "end\n"
           "fails(print, 'cannot encode a function')\n"
           "fails({a = {b = {print}}}, 'cannot encode a function at .a.b[1]')\n"
           "fails({1, 2, nil, 4}, 'sparse array')\n"
           "local holes = {}; holes[1] = 1; holes[2] = 2; holes[4] = 4\n"
           "fails(holes, 'sparse array')\n"
           "fails({[2] = 1}, 'sparse array')\n"
           "fails({[0] = 1}, 'mixes keys')\n"
           "fails({1, x = 2}, 'mixes keys')\n"
           "fails({[1.5] = 1}, 'mixes keys')\n"
           "fails({[true] = 1}, 'mixes keys')\n"
           "fails(0/0, 'NaN or infinity')\n"
           "fails(math.huge, 'NaN or infinity')\n"
           "fails('a\\0b', 'NUL byte')\n"
           "fails({['a\\0b'] = 1}, 'NUL byte')\n"
           "fails(setmetatable({x = 1}, getmetatable(cm.json.array())), 'mixes keys')\n"
           "local t = {}; t.self = t\n"
           "fails(t, 'cycle')\n"
           "local deep = {}; local cur = deep\n"
           "for i = 1, 250 do cur.x = {}; cur = cur.x end\n"
           "fails(deep, 'nested too deeply')\n"
           "-- the same table twice (not a cycle) is fine\n"
           "local shared = {1}\n"
           "assert(cm.json.encode({a = shared, b = shared}) == '{\"a\":[1],\"b\":[1]}')\n"
           "-- 199 levels are fine\n"
           "deep = {}; cur = deep\n"
           "for i = 1, 198 do cur.x = {}; cur = cur.x end\n"
           "assert(cm.json.encode(deep))\n");
}

static const char STYLED[] = "{\n"
                             "  \"backend\": {\n"
                             "    \"active\": \"ollama\",\n"
                             "    \"auto_fallback\": true,\n"
                             "    \"health_check_interval\": 30\n"
                             "  },\n"
                             "  \"ollama\": {\n"
                             "    \"temperature\": 0.7,\n"
                             "    \"epsilon\": 1e-05\n"
                             "  },\n"
                             "  \"manager\": {\n"
                             "    \"app\": {\n"
                             "      \"command\": [\n"
                             "        \"python3\",\n"
                             "        \"app.py\"\n"
                             "      ],\n"
                             "      \"env\": {}\n"
                             "    },\n"
                             "    \"health_path\": null\n"
                             "  }\n"
                             "}\n";

static void test_config_from_lua(void **state)
{
    (void)state;
    char *path = cmt_path(dir, "config.json");
    cmt_write_file(path, STYLED);
    lua_ok("local path = DIR .. '/config.json'\n"
           "local cfg, err, code = cm.config.load(path)\n"
           "assert(cfg, err)\n"
           "assert(cfg.path == path and tostring(cfg):find('cm.config'))\n"
           "assert(cfg:get('backend.active') == 'ollama')\n"
           "assert(cfg:get('backend.health_check_interval') == 30)\n"
           "assert(math.type(cfg:get('backend.health_check_interval')) == 'integer')\n"
           "assert(cfg:get('ollama.temperature') == 0.7)\n"
           "assert(cfg:get('manager.health_path') == nil)\n"
           "assert(cfg:get('nope.nothing') == nil)\n"
           "local m = cfg:get('manager')\n"
           "assert(m.health_path == nil and m.app.command[2] == 'app.py')\n"
           "assert(next(m.app.env) == nil)\n"
           "assert(cfg:get().backend.auto_fallback == true)\n"
           "assert(cfg:text() == cm.fs.read(path))\n"
           "-- a table read back and set again is written as it was\n"
           "assert(cfg:set('manager', m))\n"
           "assert(cfg:set('manager.health_path', cm.json.null))\n"
           "assert(cfg:set('ollama', cfg:get('ollama')))\n"
           "-- (keys of a set table come out sorted)\n"
           "assert(cfg:text():find('\"ollama\": {\\n    \"epsilon\": 1e-05,\\n    \"temperature\": "
           "0.7\\n  }', 1, true), cfg:text())\n"
           "assert(cfg:set('backend.active', 'llamacpp'))\n"
           "assert(cfg:set('manager.restart.max_restarts', 7))\n"
           "assert(cfg:set('backend.health_check_interval', nil))\n"
           "local ok, msg, c = cfg:set('backend.active.x', 1)\n"
           "assert(ok == nil and c == 'key' and msg:find('not an object'), msg)\n"
           "assert(not pcall(cfg.set, cfg, 'x', print))\n"
           "assert(cfg:save())\n"
           "local again = assert(cm.config.load(path))\n"
           "assert(again:get('backend.active') == 'llamacpp')\n"
           "assert(again:get('backend.health_check_interval') == nil)\n"
           "assert(again:get('manager.restart.max_restarts') == 7)\n"
           "assert(again:text() == cfg:text())\n"
           "-- save to another path, with an explicit lock\n"
           "assert(cfg:save{path = DIR .. '/copy.json', lock = DIR .. '/copy.lock'})\n"
           "assert(cm.fs.read(DIR .. '/copy.json') == cfg:text())\n"
           "assert(cm.fs.exists(DIR .. '/copy.lock'))\n"
           "assert(cfg:save(DIR .. '/copy2.json'))\n"
           "assert(cm.fs.exists(DIR .. '/.copy2.json.lock'))\n"
           "ok, msg, c = cfg:save(DIR .. '/missing/dir/x.json')\n"
           "assert(ok == nil and c == 'ENOENT', msg)\n"
           "-- load errors\n"
           "local none, e1, c1 = cm.config.load(DIR .. '/absent.json')\n"
           "assert(none == nil and c1 == 'ENOENT' and e1 == DIR .. '/absent.json: No such file or "
           "directory', e1)\n"
           "cm.fs.write_atomic(DIR .. '/bad.json', '{\\n\\n  \"a\": 1,\\n}\\n')\n"
           "none, e1, c1 = cm.config.load(DIR .. '/bad.json')\n"
           "assert(c1 == 'syntax' and e1:find('bad.json:4:1: invalid JSON: trailing comma', 1, "
           "true), e1)\n"
           "cm.fs.write_atomic(DIR .. '/arr.json', '[]')\n"
           "none, e1, c1 = cm.config.load(DIR .. '/arr.json')\n"
           "assert(c1 == 'type' and e1:find('top level must be a JSON object'), e1)\n"
           "assert(not pcall(cm.config.load))\n");
    free(path);
}

static void test_gguf_from_lua(void **state)
{
    (void)state;
    gguf_writer w = {.version = 3};
    gguf_put_header(&w, 0, 5);
    gguf_put_kv_string(&w, "general.architecture", "qwen2");
    gguf_put_kv_string(&w, "general.name", "Qwen Test");
    gguf_put_kv_u32(&w, "general.file_type", 15);
    gguf_put_kv_u32(&w, "qwen2.context_length", 32768);
    gguf_put_kv_u64(&w, "general.parameter_count", 494032768u);
    char *path = cmt_path(dir, "model.gguf");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(w.data, 1, w.len, f), w.len);
    fclose(f);
    free(w.data);
    char *bad = cmt_path(dir, "bad.gguf");
    cmt_write_file(bad, "GGML and more bytes");

    lua_ok("local info, err, code = cm.gguf.read(DIR .. '/model.gguf')\n"
           "assert(info, err)\n"
           "assert(info.version == 3 and info.tensor_count == 0 and info.kv_count == 5)\n"
           "assert(info.architecture == 'qwen2' and info.name == 'Qwen Test')\n"
           "assert(info.size_label == nil)\n"
           "assert(info.file_type == 15 and info.quantization == 'Q4_K_M')\n"
           "assert(info.context_length == 32768)\n"
           "assert(info.size == cm.fs.stat(DIR .. '/model.gguf').size)\n"
           "info, err, code = cm.gguf.read(DIR .. '/bad.gguf')\n"
           "assert(info == nil and code == 'invalid' and err:find('not a GGUF file'), err)\n"
           "info, err, code = cm.gguf.read(DIR)\n"
           "assert(info == nil and code == 'EISDIR' and err:find('is a directory'), err)\n"
           "info, err, code = cm.gguf.read(DIR .. '/none.gguf')\n"
           "assert(info == nil and code == 'ENOENT', err)\n");
    free(path);
    free(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode),          cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_encode),          cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_config_from_lua), cmocka_unit_test(test_gguf_from_lua),
    };
    return cmocka_run_group_tests_name("json", tests, setup, teardown);
}
