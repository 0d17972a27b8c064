/*
 * The backend registry and the ollama/llamacpp checks against real
 * processes on loopback: every fake-http mode gives its own detail within
 * the configured timeouts, checks run at the same time, each GGUF sample
 * gets its verdict, and a warm import probe starts no Python.
 *
 * Each test gets a fresh root (config.json with 1 s health timeouts, the
 * fake Python as llamacpp.python) and at most one fake-http, started in its
 * own process group and killed by that group in the teardown.  The Lua side
 * of a test reads its inputs from CMT_* environment variables, so the Lua
 * code is plain text with no formatting.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct fixture {
    char *root;     /* the instance directory */
    pid_t http_pid; /* the fake-http group we started, or 0 */
    int http_port;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    f->root = cmt_tempdir();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->http_pid > 0) cmt_kill_group(f->http_pid);
    cmt_rmtree(f->root);
    free(f->root);
    free(f);
    static const char *const vars[] = {"CMT_ROOT",        "CMT_NAME",   "CMT_HEALTHY",
                                       "CMT_DETAIL",      "CMT_MAX_MS", "FAKE_PYTHON_LLAMA",
                                       "FAKE_PYTHON_LOG", NULL};
    for (int i = 0; vars[i] != NULL; i++)
        unsetenv(vars[i]);
    return 0;
}

/* Starts fake-http in `mode` on a free port (told by its port file). */
static void start_http(fixture_t *f, const char *mode, const char *delay_ms)
{
    char *bin = cmt_fixture("fake-http");
    char *port_file = cmt_path(f->root, "http.port");
    char *log = cmt_path(f->root, "http.log");
    const char *argv[] = {bin,       "--port", "0",  "--port-file",
                          port_file, "--mode", mode, delay_ms ? "--delay-ms" : NULL,
                          delay_ms,  NULL};
    f->http_pid = cmt_spawn(argv, NULL, log);
    assert_int_equal(cmt_wait_file(port_file, 5000), 0);
    char *text = cmt_read_file(port_file, NULL);
    f->http_port = atoi(text);
    assert_true(f->http_port > 0);
    free(text);
    free(bin);
    free(port_file);
    free(log);
}

/* Writes <root>/config.json: 1 s health timeouts, ollama at `url` and the
 * fake Python; `ollama_extra` and `llamacpp_extra` are more keys (each
 * starting with a comma) for those sections. */
static void write_config(fixture_t *f, const char *url, const char *ollama_extra,
                         const char *llamacpp_extra)
{
    char *python = cmt_fixture("fake-python");
    char *path = cmt_path(f->root, "config.json");
    char text[4096];
    snprintf(text, sizeof text,
             "{\n"
             "  \"backend\": {\"active\": \"ollama\", \"auto_fallback\": true},\n"
             "  \"ollama\": {\"base_url\": \"%s\"%s},\n"
             "  \"llamacpp\": {\"model_path\": \"./models\", \"python\": \"%s\"%s},\n"
             "  \"manager\": {\"health_timeout\": 1, \"health_connect_timeout\": 1}\n"
             "}\n",
             url, ollama_extra ? ollama_extra : "", python, llamacpp_extra ? llamacpp_extra : "");
    cmt_write_file(path, text);
    free(python);
    free(path);
}

static void write_config_port(fixture_t *f, int port, const char *ollama_extra,
                              const char *llamacpp_extra)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    write_config(f, url, ollama_extra, llamacpp_extra);
}

static void write_in_root(fixture_t *f, const char *rel, const char *text)
{
    char *path = cmt_path(f->root, rel);
    cmt_write_file(path, text);
    free(path);
}

static void mkdir_in_root(fixture_t *f, const char *rel)
{
    char *path = cmt_path(f->root, rel);
    assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
    free(path);
}

/* Copies a GGUF sample into <root>/models/. */
static void add_model(fixture_t *f, const char *sample)
{
    mkdir_in_root(f, "models");
    char rel[256], *src, *dst, *data;
    snprintf(rel, sizeof rel, "gguf/%s", sample);
    src = cmt_fixture(rel);
    size_t len;
    data = cmt_read_file(src, &len);
    assert_non_null(data);
    snprintf(rel, sizeof rel, "models/%s", sample);
    dst = cmt_path(f->root, rel);
    FILE *out = fopen(dst, "wb");
    assert_non_null(out);
    assert_int_equal(fwrite(data, 1, len, out), len);
    assert_int_equal(fclose(out), 0);
    free(data);
    free(src);
    free(dst);
}

/* Lines in a file (0 when it is missing). */
static int count_lines(const char *path)
{
    char *text = cmt_read_file(path, NULL);
    if (text == NULL) return 0;
    int n = 0;
    for (char *p = text; *p; p++)
        n += *p == '\n';
    free(text);
    return n;
}

/* Shared by the Lua snippets: settings for CMT_ROOT, a timed check, and
 * expect(cond, what...). */
#define LUA_PRELUDE                                                                                \
    "local settings = require('settings')\n"                                                       \
    "local backends = require('backends')\n"                                                       \
    "local root = cm.sys.getenv('CMT_ROOT')\n"                                                     \
    "local s = assert(settings.load(root))\n"                                                      \
    "local function expect(cond, ...)\n"                                                           \
    "  if not cond then error(table.concat({ ... }, ' '), 2) end\n"                                \
    "end\n"                                                                                        \
    "local function check(name)\n"                                                                 \
    "  local t0 = cm.time.now()\n"                                                                 \
    "  local r = backends.check_all(s, { name })[name]\n"                                          \
    "  return r, cm.time.now() - t0\n"                                                             \
    "end\n"

/* Checks CMT_NAME and compares with CMT_HEALTHY ("true"/"false"/"nil"),
 * CMT_DETAIL (a plain substring) and CMT_MAX_MS. */
static const char verdict_lua[] = LUA_PRELUDE
    "local name = cm.sys.getenv('CMT_NAME')\n"
    "local r, ms = check(name)\n"
    "print(('%s: %s (%.0f ms)'):format(name, r.detail, ms))\n"
    "expect(tostring(r.healthy) == cm.sys.getenv('CMT_HEALTHY'), 'healthy is', "
    "tostring(r.healthy))\n"
    "local want = cm.sys.getenv('CMT_DETAIL')\n"
    "expect(r.detail:find(want, 1, true), 'detail', r.detail, 'lacks', want)\n"
    "expect(ms < tonumber(cm.sys.getenv('CMT_MAX_MS')) * SLACK, 'took', ms, 'ms')\n"
    "expect(r.healthy == true or (r.hint or '') ~= '', 'an unhealthy verdict without a hint')\n";

static void expect_verdict(fixture_t *f, const char *name, const char *healthy, const char *detail,
                           int max_ms)
{
    char ms[32];
    snprintf(ms, sizeof ms, "%d", max_ms);
    setenv("CMT_ROOT", f->root, 1);
    setenv("CMT_NAME", name, 1);
    setenv("CMT_HEALTHY", healthy, 1);
    setenv("CMT_DETAIL", detail, 1);
    setenv("CMT_MAX_MS", ms, 1);
    assert_int_equal(cmt_lua(verdict_lua), 0);
}

/* The configured total is 1 s: a timeout must end within it plus slack for
 * a sanitizer build, and every other mode much sooner. */
#define WITHIN_TIMEOUT_MS 1700
#define QUICK_MS 900

static void ollama_mode(void **state, const char *mode, const char *healthy, const char *detail,
                        int max_ms)
{
    fixture_t *f = *state;
    start_http(f, mode, NULL);
    write_config_port(f, f->http_port, NULL, NULL);
    expect_verdict(f, "ollama", healthy, detail, max_ms);
}

static void test_ollama_healthy(void **state)
{
    ollama_mode(state, "ollama", "true", "2 models (llama3.2:1b, qwen2.5:0.5b), v0.5.7", QUICK_MS);
    fixture_t *f = *state;
    static const char sizes[] = LUA_PRELUDE
        "local r = check('ollama')\n"
        "local m = r.info.models\n"
        "expect(#m == 2 and m[1].name == 'llama3.2:1b' and m[1].size == 1321098329, 'model 1')\n"
        "expect(m[2].name == 'qwen2.5:0.5b' and m[2].size == 397821319, 'model 2')\n"
        "expect(m[2].quantization == 'Q4_K_M' and m[2].parameter_size == '494.03M', 'details')\n"
        "expect(r.info.version == '0.5.7', 'version')\n";
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(sizes), 0);
}

static void test_ollama_http500(void **state)
{
    ollama_mode(state, "http500", "false", "HTTP 500 from", QUICK_MS);
}

static void test_ollama_slow(void **state)
{
    ollama_mode(state, "slow", "false", "no answer from", WITHIN_TIMEOUT_MS);
}

static void test_ollama_invalid_json(void **state)
{
    ollama_mode(state, "invalid-json", "false", "did not answer valid JSON", QUICK_MS);
}

static void test_ollama_wrong_shape(void **state)
{
    ollama_mode(state, "wrong-shape", "false", "JSON of an unexpected shape: no \"models\" list",
                QUICK_MS);
}

static void test_ollama_close(void **state)
{
    ollama_mode(state, "close", "false", "closed the connection without an answer", QUICK_MS);
}

static void test_ollama_hang(void **state)
{
    ollama_mode(state, "hang", "false", "within 1 s", WITHIN_TIMEOUT_MS);
}

static void test_ollama_huge(void **state)
{
    ollama_mode(state, "huge", "false", "is too large", QUICK_MS);
}

/* A fake llama.cpp server speaks no /api/tags: an HTTP 404. */
static void test_ollama_not_ollama(void **state)
{
    ollama_mode(state, "llamacpp", "false", "HTTP 404 from", QUICK_MS);
}

static void test_ollama_refused(void **state)
{
    fixture_t *f = *state;
    write_config_port(f, cmt_free_port(), NULL, NULL);
    expect_verdict(f, "ollama", "false", "connection refused at http://127.0.0.1:", QUICK_MS);
}

static void test_ollama_dns(void **state)
{
    fixture_t *f = *state;
    write_config(f, "http://no-such-host.invalid:11434", NULL, NULL);
    expect_verdict(f, "ollama", "false", "cannot resolve host 'no-such-host.invalid'",
                   WITHIN_TIMEOUT_MS);
}

/* ollama.timeout smaller than manager.health_timeout wins. */
static void test_ollama_own_timeout_smaller(void **state)
{
    fixture_t *f = *state;
    start_http(f, "hang", NULL);
    write_config_port(f, f->http_port, ", \"timeout\": 0.4, \"connect_timeout\": 0.2", NULL);
    expect_verdict(f, "ollama", "false", "within 0.4 s", 1000);
}

/* ---- llamacpp ------------------------------------------------------------ */

static void test_llamacpp_gguf_verdicts(void **state)
{
    fixture_t *f = *state;
    static const char *const samples[] = {
        "valid-v3.gguf",      "valid-v2.gguf",    "v1.gguf",
        "truncated.gguf",     "wrong-magic.gguf", "absurd-count.gguf",
        "absurd-string.gguf", "empty.gguf",       NULL};
    for (int i = 0; samples[i] != NULL; i++)
        add_model(f, samples[i]);
    mkdir_in_root(f, "models/dir.gguf");
    mkdir_in_root(f, "models/sub");
    add_model(f, "valid-v3.gguf");
    char *dangling = cmt_path(f->root, "models/dangling.gguf");
    assert_int_equal(symlink("/nonexistent/model.gguf", dangling), 0);
    free(dangling);
    char *nested = cmt_path(f->root, "models/sub/nested.gguf");
    char *v3 = cmt_path(f->root, "models/valid-v3.gguf");
    assert_int_equal(link(v3, nested), 0);
    free(nested);
    free(v3);
    write_config_port(f, cmt_free_port(), NULL, NULL);
    static const char verdicts[] = LUA_PRELUDE
        "local r = check('llamacpp')\n"
        "print(r.detail)\n"
        "expect(r.healthy == true, 'healthy', tostring(r.healthy), r.detail)\n"
        "expect(r.detail:find('3 models', 1, true), r.detail)\n"
        "local valid = {}\n"
        "for _, m in ipairs(r.info.models) do valid[m.file] = m end\n"
        "for _, file in ipairs({ 'valid-v3.gguf', 'valid-v2.gguf', 'sub/nested.gguf' }) do\n"
        "  local m = valid[file]\n"
        "  expect(m, file, 'not counted')\n"
        "  expect(m.name == 'Tiny Test' and m.architecture == 'llama', file, 'name/architecture')\n"
        "  expect(m.quantization == 'Q8_0' and m.size_label == '1B', file, 'quantization')\n"
        "  expect(m.context_length == 4096 and m.size > 0, file, 'context/size')\n"
        "end\n"
        "expect(valid['valid-v2.gguf'].version == 2 and valid['valid-v3.gguf'].version == 3, "
        "'versions')\n"
        "local why = {}\n"
        "for _, x in ipairs(r.info.invalid) do why[x.file] = x.why end\n"
        "local expected = {\n"
        "  ['v1.gguf'] = 'unsupported GGUF version 1',\n"
        "  ['truncated.gguf'] = 'truncated',\n"
        "  ['wrong-magic.gguf'] = 'not a GGUF file',\n"
        "  ['absurd-count.gguf'] = 'absurd metadata count',\n"
        "  ['absurd-string.gguf'] = 'string length',\n"
        "  ['empty.gguf'] = 'empty',\n"
        "  ['dir.gguf'] = 'a directory, not a file',\n"
        "  ['dangling.gguf'] = 'a dangling symlink',\n"
        "}\n"
        "local n = 0\n"
        "for file, want in pairs(expected) do\n"
        "  n = n + 1\n"
        "  expect(why[file], file, 'not named as invalid')\n"
        "  expect(why[file]:find(want, 1, true), file, ':', why[file], 'lacks', want)\n"
        "end\n"
        "expect(#r.info.invalid == n, 'invalid files:', #r.info.invalid)\n"
        "expect(r.detail:find('8 files not counted', 1, true), r.detail)\n"
        "local lines = require('backends.llamacpp').details(r)\n"
        "local text = table.concat(lines, '\\n')\n"
        "expect(text:find('truncated.gguf  not counted: truncated', 1, true), text)\n";
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(verdicts), 0);
}

static void test_llamacpp_only_invalid_models(void **state)
{
    fixture_t *f = *state;
    add_model(f, "truncated.gguf");
    add_model(f, "v1.gguf");
    write_config_port(f, cmt_free_port(), NULL, NULL);
    expect_verdict(f, "llamacpp", "false", "no valid GGUF model in", QUICK_MS);
    expect_verdict(f, "llamacpp", "false", "2 files not counted (truncated.gguf, v1.gguf)",
                   QUICK_MS);
}

/* More GGUF files than a check reads (SCAN_MAX_READ = 32): the first 32
 * are read, every one is counted, and the detail says so. */
static void test_llamacpp_many_models_are_counted(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    char *src = cmt_path(f->root, "models/valid-v3.gguf");
    for (int i = 0; i < 39; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "models/m%02d.gguf", i);
        char *dst = cmt_path(f->root, rel);
        assert_int_equal(link(src, dst), 0);
        free(dst);
    }
    free(src);
    write_in_root(f, "models/.hidden.gguf", "not counted");
    write_in_root(f, "models/readme.txt", "listed");
    write_config_port(f, cmt_free_port(), NULL, NULL);
    expect_verdict(f, "llamacpp", "true", "32 models (", QUICK_MS);
    expect_verdict(f, "llamacpp", "true", "first 32 of 40 GGUF files read", QUICK_MS);
    /* cm.fs.list counts what ends in the suffix and lists the first few. */
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(LUA_PRELUDE
                             "local names, n = cm.fs.list(root .. '/models', '.GGUF', 3)\n"
                             "expect(n == 40, 'matched', n)\n"
                             "expect(table.concat(names, ' ') == '.hidden.gguf m00.gguf m01.gguf "
                             "m02.gguf readme.txt', table.concat(names, ' '))\n"
                             "local all, none = cm.fs.list(root .. '/models')\n"
                             "expect(#all == 42 and none == nil, #all)\n"),
                     0);
}

static void test_llamacpp_no_model_dir(void **state)
{
    fixture_t *f = *state;
    write_config_port(f, cmt_free_port(), NULL, NULL);
    expect_verdict(f, "llamacpp", "false", "model directory not found", QUICK_MS);
    static const char hint[] = LUA_PRELUDE
        "local r = check('llamacpp')\n"
        "expect(r.hint:find('Download GGUF models into ' .. root .. '/models', 1, true), r.hint)\n";
    assert_int_equal(cmt_lua(hint), 0);
}

static void test_llamacpp_import_missing(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    write_config_port(f, cmt_free_port(), NULL, NULL);
    setenv("FAKE_PYTHON_LLAMA", "missing", 1);
    expect_verdict(f, "llamacpp", "false", "No module named 'llama_cpp'", QUICK_MS);
    static const char hint[] =
        LUA_PRELUDE "local r = check('llamacpp')\n"
                    "expect(r.detail:find('llama_cpp not importable by', 1, true), r.detail)\n"
                    "expect(r.hint:find('pip install llama-cpp-python', 1, true), r.hint)\n";
    assert_int_equal(cmt_lua(hint), 0);
}

static void test_llamacpp_python_not_found(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    write_config_port(f, cmt_free_port(), NULL, NULL);
    char *path = cmt_path(f->root, "config.json");
    char *text = cmt_read_file(path, NULL);
    char *fake = cmt_fixture("fake-python");
    /* Point llamacpp.python at a file that does not exist. */
    char *at = strstr(text, fake);
    assert_non_null(at);
    char patched[4096];
    snprintf(patched, sizeof patched, "%.*s%s%s", (int)(at - text), text, "./no/such/python",
             at + strlen(fake));
    cmt_write_file(path, patched);
    free(path);
    free(text);
    free(fake);
    expect_verdict(f, "llamacpp", "false", "no Python interpreter", QUICK_MS);
}

/* The fake Python logs each start: a cold check starts one, a warm one none. */
static void test_llamacpp_probe_cache(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    write_config_port(f, cmt_free_port(), NULL, NULL);
    char *log = cmt_path(f->root, "python.log");
    setenv("FAKE_PYTHON_LOG", log, 1);
    expect_verdict(f, "llamacpp", "true", "llama_cpp 0.3.2", QUICK_MS);
    assert_int_equal(count_lines(log), 1);
    expect_verdict(f, "llamacpp", "true", "llama_cpp 0.3.2", QUICK_MS);
    assert_int_equal(count_lines(log), 1);
    static const char cached[] =
        LUA_PRELUDE "local r = check('llamacpp')\n"
                    "expect(r.info.probe_cached == true, 'the answer was not cached')\n";
    assert_int_equal(cmt_lua(cached), 0);
    assert_int_equal(count_lines(log), 1);
    /* A missing package is remembered too. */
    char *cache = cmt_path(f->root, "run/llamacpp-probe.json");
    assert_int_equal(unlink(cache), 0);
    setenv("FAKE_PYTHON_LLAMA", "missing", 1);
    expect_verdict(f, "llamacpp", "false", "No module named", QUICK_MS);
    expect_verdict(f, "llamacpp", "false", "No module named", QUICK_MS);
    assert_int_equal(count_lines(log), 2);
    free(cache);
    free(log);
}

/* A new package in a site-packages directory (its mtime changes) or a new
 * interpreter binary makes the cached answer stale. */
static void test_llamacpp_probe_cache_invalidation(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    mkdir_in_root(f, "site-packages");
    char *fake = cmt_fixture("fake-python");
    char *site = cmt_path(f->root, "site-packages");
    char script[4096];
    /* An interpreter that reports one site-packages directory, as the real
     * probe code does on stderr, then behaves as the fake Python. */
    snprintf(script, sizeof script, "#!/bin/sh\necho 'cm-site:%s' >&2\nexec '%s' \"$@\"\n", site,
             fake);
    write_in_root(f, "python", script);
    char *python = cmt_path(f->root, "python");
    assert_int_equal(chmod(python, 0755), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", cmt_free_port());
    char *path = cmt_path(f->root, "config.json");
    char text[4096];
    snprintf(text, sizeof text,
             "{\"llamacpp\": {\"model_path\": \"models\", \"python\": \"%s\"},\n"
             " \"ollama\": {\"base_url\": \"%s\"},\n"
             " \"manager\": {\"health_timeout\": 1, \"health_connect_timeout\": 1}}\n",
             python, url);
    cmt_write_file(path, text);
    char *log = cmt_path(f->root, "python.log");
    setenv("FAKE_PYTHON_LOG", log, 1);
    expect_verdict(f, "llamacpp", "true", "llama_cpp 0.3.2", QUICK_MS);
    expect_verdict(f, "llamacpp", "true", "llama_cpp 0.3.2", QUICK_MS);
    assert_int_equal(count_lines(log), 1);
    usleep(20000);
    mkdir_in_root(f, "site-packages/llama_cpp"); /* "pip install" */
    expect_verdict(f, "llamacpp", "true", "llama_cpp 0.3.2", QUICK_MS);
    assert_int_equal(count_lines(log), 2);
    expect_verdict(f, "llamacpp", "true", "llama_cpp 0.3.2", QUICK_MS);
    assert_int_equal(count_lines(log), 2);
    usleep(20000);
    write_in_root(f, "python", script); /* a new interpreter binary */
    expect_verdict(f, "llamacpp", "true", "llama_cpp 0.3.2", QUICK_MS);
    assert_int_equal(count_lines(log), 3);
    free(fake);
    free(site);
    free(python);
    free(path);
    free(log);
}

static void test_llamacpp_server_loading_then_ready(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    start_http(f, "llamacpp", "1000");
    char extra[128];
    snprintf(extra, sizeof extra, ", \"server_url\": \"http://127.0.0.1:%d\"", f->http_port);
    write_config_port(f, cmt_free_port(), NULL, extra);
    expect_verdict(f, "llamacpp", "false", "is loading model", QUICK_MS);
    usleep(1100 * 1000);
    expect_verdict(f, "llamacpp", "true", "server ready", QUICK_MS);
}

static void test_llamacpp_server_error(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    start_http(f, "http500", NULL);
    char extra[128];
    snprintf(extra, sizeof extra, ", \"server_url\": \"http://127.0.0.1:%d/\"", f->http_port);
    write_config_port(f, cmt_free_port(), NULL, extra);
    expect_verdict(f, "llamacpp", "false", "HTTP 500 from", QUICK_MS);
}

static void test_llamacpp_server_refused(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    char extra[128];
    snprintf(extra, sizeof extra, ", \"server_url\": \"http://127.0.0.1:%d\"", cmt_free_port());
    write_config_port(f, cmt_free_port(), NULL, extra);
    expect_verdict(f, "llamacpp", "false", "connection refused at", QUICK_MS);
}

/* ---- the registry and concurrency ------------------------------------------ */

static const char slow_backend[] =
    "return { name = 'slow', summary = 'sleeps 300 ms',\n"
    "  check = function() cm.time.sleep(300) return { healthy = true, detail = 'slept' } end }\n";

static void test_two_user_backends_concurrently(void **state)
{
    fixture_t *f = *state;
    write_config_port(f, cmt_free_port(), NULL, NULL);
    mkdir_in_root(f, "backends");
    write_in_root(f, "backends/slow_a.lua", slow_backend);
    write_in_root(f, "backends/slow_b.lua", slow_backend);
    /* User checks run in one child (lua/usercode.lua), each in its own
     * task, so one costs 300 ms plus a process start: two at once cost
     * about one. */
    static const char both[] =
        LUA_PRELUDE "backends.names(s)\n"
                    "local t0 = cm.time.now()\n"
                    "local one = backends.check_all(s, { 'slow_a' })\n"
                    "local one_ms = cm.time.now() - t0\n"
                    "t0 = cm.time.now()\n"
                    "local r = backends.check_all(s, { 'slow_a', 'slow_b' })\n"
                    "local ms = cm.time.now() - t0\n"
                    "print(('one 300 ms check took %.0f ms, two %.0f ms'):format(one_ms, ms))\n"
                    "expect(one.slow_a.healthy, 'healthy')\n"
                    "expect(r.slow_a.healthy and r.slow_b.healthy, 'both healthy')\n"
                    "expect(ms >= 250 and ms < one_ms + 150, 'took', ms, 'ms')\n";
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(both), 0);
}

/* The real backends: ollama answering after 300 ms and a cold import probe
 * that takes 300 ms, checked together in less than both in a row. */
static void test_ollama_and_llamacpp_concurrently(void **state)
{
    fixture_t *f = *state;
    add_model(f, "valid-v3.gguf");
    start_http(f, "ollama", "300");
    write_config_port(f, f->http_port, NULL, NULL);
    setenv("FAKE_PYTHON_LLAMA", "slow", 1);
    static const char both[] = LUA_PRELUDE
        "local t0 = cm.time.now()\n"
        "local r = backends.check_all(s)\n"
        "local ms = cm.time.now() - t0\n"
        "print(('ollama %d ms, llamacpp %d ms, together %.0f ms'):format(r.ollama.ms, "
        "r.llamacpp.ms, ms))\n"
        "expect(r.ollama.healthy == true, r.ollama.detail)\n"
        "expect(r.llamacpp.healthy == true, r.llamacpp.detail)\n"
        "expect(r.ollama.ms >= 250 and r.llamacpp.ms >= 250, 'each check takes 300 ms')\n"
        "expect(ms < 590, 'took', ms, 'ms')\n"; /* less than both in a row */
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(both), 0);
}

static void test_registry(void **state)
{
    fixture_t *f = *state;
    write_config_port(f, cmt_free_port(), NULL, NULL);
    mkdir_in_root(f, "backends");
    write_in_root(
        f, "backends/custom.lua",
        "return { name = 'custom', summary = 'mine',\n"
        "  check = function(s) return { healthy = true, detail = 'root ' .. s.root } end }\n");
    write_in_root(f, "backends/broken.lua", "return {\n");
    write_in_root(f, "backends/notabackend.lua", "return 42\n");
    write_in_root(f, "backends/ollama.lua", "return { check = function() end }\n");
    write_in_root(f, "backends/raises.lua", "return { check = function() error('kaboom') end }\n");
    write_in_root(f, "backends/notes.txt", "not a backend\n");
    static const char registry[] = LUA_PRELUDE
        "expect(table.concat(backends.names(root), ',') == 'custom,llamacpp,ollama,raises',\n"
        "  'names:', table.concat(backends.names(root), ','))\n"
        "expect(backends.get(root, 'custom').summary == 'mine', 'get custom')\n"
        "expect(backends.get(root, 'broken') == nil and backends.get(root, 'nope') == nil, 'get')\n"
        "expect(backends.get(root, 'ollama') == require('backends.ollama'), 'a built-in wins')\n"
        "local r = check('custom')\n"
        "expect(r.healthy == true and r.detail == 'root ' .. root and type(r.ms) == 'number', "
        "'custom')\n"
        "r = check('raises')\n"
        "expect(r.healthy == nil and r.detail:find('check failed: ', 1, true)\n"
        "  and r.detail:find('kaboom', 1, true), r.detail)\n"
        "local all = backends.check_all(s)\n"
        "expect(all.custom and all.raises and all.ollama and all.llamacpp, 'check_all covers "
        "all')\n"
        "expect(backends.check_all(s, { 'nope' }).nope.healthy == nil, 'unknown name')\n";
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(registry), 0);
}

static void test_backend_order(void **state)
{
    fixture_t *f = *state;
    mkdir_in_root(f, "backends");
    write_in_root(f, "backends/zeta.lua", "return { check = function() return {} end }\n");
    write_in_root(
        f, "config.json",
        "{\"backend\": {\"active\": \"ollama\", \"order\": [\"zeta\", \"ollama\", \"gone\"]}}\n");
    static const char order[] = LUA_PRELUDE
        "local names = table.concat(backends.names(root, s), ',')\n"
        "expect(names == 'zeta,ollama,llamacpp', 'order:', names)\n"
        "expect(table.concat(backends.names(s), ',') == names, 'names(settings)')\n"
        "expect(table.concat(backends.names(root), ',') == names, 'names(root) reads the order')\n"
        "expect(table.concat(backends.names(nil), ',') == 'llamacpp,ollama', 'no root: built-ins "
        "only')\n";
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(order), 0);
}

/* A user check that never ends is killed (its child) at health_timeout + 1 s. */
static void test_stuck_check_is_abandoned(void **state)
{
    fixture_t *f = *state;
    write_config_port(f, cmt_free_port(), NULL, NULL);
    mkdir_in_root(f, "backends");
    write_in_root(
        f, "backends/stuck.lua",
        "return { check = function() cm.time.sleep(60000) return { healthy = true } end }\n");
    static const char stuck[] = LUA_PRELUDE "local r, ms = check('stuck')\n"
                                            "expect(r.healthy == nil and r.detail:find('did not "
                                            "finish within 2 s', 1, true), r.detail)\n"
                                            "expect(ms >= 1900 and ms < 2000 + 1000 * SLACK, 'took', ms)\n";
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(stuck), 0);
}

static void test_section_and_switch_restart(void **state)
{
    fixture_t *f = *state;
    start_http(f, "ollama", NULL);
    write_config_port(f, f->http_port, NULL, NULL);
    /* backend switch --restart runs the registry's restart command. */
    static const char restart[] = LUA_PRELUDE
        "local cmd = require('commands.backend')\n"
        "local called = 0\n"
        "local ctx = { root = root, json = false, commands = {\n"
        "  restart = { run = function(c, args) called = called + 1; return 7 end } } }\n"
        "local code = cmd.run(ctx, { 'switch', '--restart', 'llamacpp' })\n"
        "expect(code == 7 and called == 1, 'restart code', tostring(code), called)\n"
        "expect(assert(settings.load(root)):get('backend.active') == 'llamacpp', 'not switched')\n"
        "code = cmd.run({ root = root, commands = {} }, { 'switch', 'ollama', '--restart' })\n"
        "expect(code == 0, 'switch without a restart command', tostring(code))\n"
        "local line = backends.format_line('ollama', { healthy = true, detail = 'd', ms = 3 })\n"
        "expect(line == '  ollama     \\u{2713} healthy     d, 3 ms', line)\n"
        "line = backends.format_line('llamacpp', { healthy = false, detail = 'x', ms = 12 })\n"
        "expect(line == '  llamacpp   \\u{2717} unhealthy   x, 12 ms', line)\n"
        "line = backends.format_line('custom', { detail = 'y', ms = 0 })\n"
        "expect(line == '  custom     ? unknown     y, 0 ms', line)\n";
    setenv("CMT_ROOT", f->root, 1);
    assert_int_equal(cmt_lua(restart), 0);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_ollama_healthy),
        T(test_ollama_http500),
        T(test_ollama_slow),
        T(test_ollama_invalid_json),
        T(test_ollama_wrong_shape),
        T(test_ollama_close),
        T(test_ollama_hang),
        T(test_ollama_huge),
        T(test_ollama_not_ollama),
        T(test_ollama_refused),
        T(test_ollama_dns),
        T(test_ollama_own_timeout_smaller),
        T(test_llamacpp_gguf_verdicts),
        T(test_llamacpp_only_invalid_models),
        T(test_llamacpp_many_models_are_counted),
        T(test_llamacpp_no_model_dir),
        T(test_llamacpp_import_missing),
        T(test_llamacpp_python_not_found),
        T(test_llamacpp_probe_cache),
        T(test_llamacpp_probe_cache_invalidation),
        T(test_llamacpp_server_loading_then_ready),
        T(test_llamacpp_server_error),
        T(test_llamacpp_server_refused),
        T(test_two_user_backends_concurrently),
        T(test_ollama_and_llamacpp_concurrently),
        T(test_registry),
        T(test_backend_order),
        T(test_stuck_check_is_abandoned),
        T(test_section_and_switch_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
