/*
 * cm.http.get against real sockets: the fake-http fixture in each of its
 * modes, a few raw loopback sockets for the cases it cannot produce (a
 * connect that never completes, a body without Content-Length), and a
 * runtime closed while transfers are in flight (ASan checks that nothing
 * leaks; a marker file checks that nothing resumes).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cm_modules.h"
#include "cmtest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

/* Formats a Lua chunk and runs it on a fresh runtime; returns its exit code. */
static int lua_fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *code = NULL;
    int n = vasprintf(&code, fmt, ap);
    va_end(ap);
    assert_true(n > 0);
    int rc = cmt_lua(code);
    free(code);
    return rc;
}

typedef struct server {
    pid_t pgid; /* the fixture, leader of its own process group */
    int port;
    char *dir; /* holds the port file and the fixture's output */
} server_t;

/* Starts fake-http in `mode` (delay_ms < 0: the mode's default) and waits
 * (bounded) until it has written its port file. */
static server_t server_start(const char *mode, int delay_ms)
{
    server_t s = {0};
    s.dir = cmt_tempdir();
    char *bin = cmt_fixture("fake-http");
    char *port_file = cmt_path(s.dir, "port");
    char *out = cmt_path(s.dir, "out.log");
    char delay[32];
    snprintf(delay, sizeof delay, "%d", delay_ms);
    const char *argv_delay[] = {bin,           "--port",  "0",          "--mode", mode,
                                "--port-file", port_file, "--delay-ms", delay,    NULL};
    if (delay_ms < 0) argv_delay[7] = NULL;
    s.pgid = cmt_spawn(argv_delay, NULL, out);
    assert_int_equal(cmt_wait_file(port_file, 10000), 0);
    char *text = cmt_read_file(port_file, NULL);
    assert_non_null(text);
    s.port = atoi(text);
    assert_true(s.port > 0 && s.port < 65536);
    free(text);
    free(out);
    free(port_file);
    free(bin);
    return s;
}

static void server_stop(server_t *s)
{
    cmt_kill_group(s->pgid);
    cmt_rmtree(s->dir);
    free(s->dir);
}

/* ---- answers ------------------------------------------------------------ */

static void test_get_ok(void **state)
{
    (void)state;
    server_t s = server_start("ollama", -1);
    assert_int_equal(
        lua_fmt("local r, msg, code = cm.http.get('http://127.0.0.1:%d/api/tags',\n"
                "    {connect_timeout = 2000, timeout = 5000})\n"
                "assert(r, tostring(msg) .. ' ' .. tostring(code))\n"
                "assert(r.status == 200, r.status)\n"
                "assert(r.body:find('\"models\"', 1, true), r.body)\n"
                "assert(r.body:find('llama3.2:1b', 1, true), r.body)\n"
                "assert(r.content_type == 'application/json', r.content_type)\n"
                "assert(type(r.ms) == 'number' and r.ms >= 0 and r.ms < 5000 * SLACK)\n"
                "local v = assert(cm.http.get('http://localhost:%d/api/version'))\n"
                "assert(v.status == 200 and v.body:find('version', 1, true), v.body)\n",
                s.port, s.port),
        0);
    server_stop(&s);
}

/* 4xx and 5xx are answers: the caller gets the table and decides. */
static void test_get_error_status_is_an_answer(void **state)
{
    (void)state;
    server_t s = server_start("http500", -1);
    assert_int_equal(lua_fmt("local r, msg = cm.http.get('http://127.0.0.1:%d/api/tags')\n"
                             "assert(r, msg)\n"
                             "assert(r.status == 500, r.status)\n"
                             "assert(type(r.body) == 'string')\n",
                             s.port),
                     0);
    server_stop(&s);

    s = server_start("ollama", -1);
    assert_int_equal(lua_fmt("local r, msg = cm.http.get('http://127.0.0.1:%d/no/such/path')\n"
                             "assert(r, msg)\n"
                             "assert(r.status == 404, r.status)\n",
                             s.port),
                     0);
    server_stop(&s);
}

/* A POST carries its body and Content-Type; the fake Ollama's chat answer
 * streams NDJSON (chunked) and curl hands it back whole. */
static void test_post_chat(void **state)
{
    (void)state;
    server_t s = server_start("ollama", -1);
    assert_int_equal(
        lua_fmt("local url = 'http://127.0.0.1:%d'\n"
                "local r = assert(cm.http.post(url .. '/api/chat',\n"
                "    '{\"model\":\"llama3.2:1b\",\"messages\":[]}', {timeout = 5000}))\n"
                "assert(r.status == 200, r.status)\n"
                "assert(r.content_type == 'application/x-ndjson', r.content_type)\n"
                "local text, lines, last = '', 0\n"
                "for line in r.body:gmatch('[^\\n]+') do\n"
                "    local m = assert(cm.json.decode(line), line)\n"
                "    assert(m.model == 'llama3.2:1b', line)\n"
                "    text = text .. m.message.content\n"
                "    lines, last = lines + 1, m\n"
                "end\n"
                "assert(lines == 7 and last.done == true, r.body)\n"
                "assert(text == 'Hello from the fake Ollama.', text)\n"
                "local g = assert(cm.http.post(url .. '/api/generate',\n"
                "    '{\"model\":\"m\",\"prompt\":\"hi\",\"stream\":false}'))\n"
                "local one = assert(cm.json.decode(g.body), g.body)\n"
                "assert(one.done == true and one.response == 'Hello from the fake Ollama.', g.body)\n"
                "local bad = pcall(cm.http.post, url, 'x', {content_type = 'a\\r\\nX-Evil: 1'})\n"
                "assert(not bad, 'a header with a line break must be refused')\n"
                "assert(not pcall(cm.http.get, url, {content_type = 'text/plain'}))\n",
                s.port),
        0);
    server_stop(&s);
}

/* ---- failures ----------------------------------------------------------- */

static void test_get_refused(void **state)
{
    (void)state;
    int port = cmt_free_port();
    assert_int_equal(lua_fmt("local r, msg, code = cm.http.get('http://127.0.0.1:%d/api/tags')\n"
                             "assert(r == nil)\n"
                             "assert(code == 'refused', code)\n"
                             "assert(msg == 'connection refused', msg)\n",
                             port),
                     0);
}

static void test_get_timeout(void **state)
{
    (void)state;
    server_t s = server_start("hang", -1);
    assert_int_equal(lua_fmt("local t0 = cm.time.now()\n"
                             "local r, msg, code = cm.http.get('http://127.0.0.1:%d/api/tags',\n"
                             "    {timeout = 300})\n"
                             "local ms = cm.time.now() - t0\n"
                             "assert(r == nil)\n"
                             "assert(code == 'timeout', tostring(code) .. ': ' .. tostring(msg))\n"
                             "assert(msg:find('Timeout', 1, true), msg)\n"
                             "assert(ms >= 250 and ms < 300 + 700 * SLACK, ms)\n",
                             s.port),
                     0);
    server_stop(&s);
}

/* A connect that never completes can be made on loopback only through a full
 * accept queue; when the kernel does not drop SYNs that way, skip. */
static void test_get_connect_timeout(void **state)
{
    (void)state;
    int fds[CMT_BLACKHOLE_MAX_FDS], nfds = 0;
    int port = cmt_blackhole_port(fds, &nfds);
    if (port < 0) {
        skip();
        return;
    }
    int rc = lua_fmt("local t0 = cm.time.now()\n"
                     "local r, msg, code = cm.http.get('http://127.0.0.1:%d/',\n"
                     "    {connect_timeout = 300, timeout = 5000})\n"
                     "local ms = cm.time.now() - t0\n"
                     "assert(r == nil)\n"
                     "assert(code == 'connect_timeout', tostring(code) .. ': ' .. tostring(msg))\n"
                     "assert(ms >= 250 and ms < 300 + 700 * SLACK, ms)\n",
                     port);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    assert_int_equal(rc, 0);
}

static void test_get_closed(void **state)
{
    (void)state;
    server_t s = server_start("close", -1);
    assert_int_equal(lua_fmt("local r, msg, code = cm.http.get('http://127.0.0.1:%d/api/tags',\n"
                             "    {timeout = 3000})\n"
                             "assert(r == nil)\n"
                             "assert(code == 'closed', tostring(code) .. ': ' .. tostring(msg))\n",
                             s.port),
                     0);
    server_stop(&s);
}

/* The fixture announces 64 MiB in Content-Length: refused before reading. */
static void test_get_too_large(void **state)
{
    (void)state;
    server_t s = server_start("huge", -1);
    assert_int_equal(
        lua_fmt("local t0 = cm.time.now()\n"
                "local r, msg, code = cm.http.get('http://127.0.0.1:%d/api/tags',\n"
                "    {max_bytes = 1024 * 1024, timeout = 5000})\n"
                "assert(r == nil)\n"
                "assert(code == 'too_large', tostring(code) .. ': ' .. tostring(msg))\n"
                "assert(msg:find('1048576', 1, true), msg)\n"
                "assert(cm.time.now() - t0 < 3000 * SLACK)\n",
                s.port),
        0);
    server_stop(&s);
}

/* A body without Content-Length is cut by the write callback at max_bytes.
 * A forked child plays the server: one connection, 2 MiB, then close. */
static void test_get_too_large_streamed(void **state)
{
    (void)state;
    int port = 0;
    int lfd = cmt_bound_loopback(4, &port);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        alarm(10); /* never outlive the test by much */
        signal(SIGPIPE, SIG_IGN);
        int c = accept(lfd, NULL, NULL);
        char buf[4096];
        if (c >= 0 && read(c, buf, sizeof buf) > 0) {
            const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               "Connection: close\r\n\r\n";
            if (write(c, head, strlen(head)) < 0) _exit(1);
            memset(buf, 'x', sizeof buf);
            for (int i = 0; i < 512; i++)
                if (write(c, buf, sizeof buf) < 0) break;
        }
        _exit(0);
    }
    close(lfd);
    int rc = lua_fmt("local r, msg, code = cm.http.get('http://127.0.0.1:%d/',\n"
                     "    {max_bytes = 1024 * 1024, timeout = 5000})\n"
                     "assert(r == nil)\n"
                     "assert(code == 'too_large', tostring(code) .. ': ' .. tostring(msg))\n",
                     port);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    assert_int_equal(rc, 0);
}

static void test_get_bad_url(void **state)
{
    (void)state;
    assert_int_equal(lua_fmt("local r, msg, code = cm.http.get('ftp://127.0.0.1:1/x')\n"
                             "assert(r == nil and code == 'url', tostring(code))\n"
                             "r, msg, code = cm.http.get('http://[::1/x')\n"
                             "assert(r == nil and code == 'url', tostring(code))\n"
                             "r, msg, code = cm.http.get('')\n"
                             "assert(r == nil and code == 'url', tostring(code))\n"),
                     0);
}

/* Wrong types are programming errors: they raise, before anything starts. */
static void test_get_argument_errors(void **state)
{
    (void)state;
    assert_int_equal(
        lua_fmt("local function raises(f, pattern)\n"
                "  local ok, err = pcall(f)\n"
                "  assert(not ok, 'expected an error')\n"
                "  assert(tostring(err):find(pattern, 1, true), err)\n"
                "end\n"
                "local url = 'http://127.0.0.1:1/'\n"
                "raises(function() cm.http.get() end, 'string expected')\n"
                "raises(function() cm.http.get(url, 5) end, 'table expected')\n"
                "raises(function() cm.http.get(url, {timeout_ms = 5}) end, 'timeout_ms')\n"
                "raises(function() cm.http.get(url, {timeout = 'x'}) end, 'timeout')\n"
                "raises(function() cm.http.get(url, {timeout = 0}) end, 'between')\n"
                "raises(function() cm.http.get(url, {max_bytes = -1}) end, 'between')\n"
                "raises(function() cm.http.get(url, {verify_ssl = 1}) end, 'boolean')\n"
                "-- a plain coroutine is not a task: it cannot park\n"
                "raises(coroutine.wrap(function() cm.http.get(url) end), 'task')\n"),
        0);
}

/* ---- concurrency and teardown ------------------------------------------- */

/* Two transfers of 300 ms each overlap: together they take one delay. */
static void test_get_concurrent(void **state)
{
    (void)state;
    server_t s = server_start("ollama", 300);
    assert_int_equal(lua_fmt("local url = 'http://127.0.0.1:%d/api/tags'\n"
                             "local t0 = cm.time.now()\n"
                             "local a = cm.task.spawn(function() return cm.http.get(url) end)\n"
                             "local b = cm.task.spawn(function() return cm.http.get(url) end)\n"
                             "local ok1, r1, e1 = a:join()\n"
                             "local ok2, r2, e2 = b:join()\n"
                             "local ms = cm.time.now() - t0\n"
                             "assert(ok1 and r1, tostring(r1) .. tostring(e1))\n"
                             "assert(ok2 and r2, tostring(r2) .. tostring(e2))\n"
                             "assert(r1.status == 200 and r2.status == 200)\n"
                             /* less than the two in a row: they overlapped */
                             "assert(ms >= 290 and ms < 590, ms)\n",
                             s.port),
                     0);
    server_stop(&s);
}

/* The runtime closes while transfers wait: one not yet connected, one
 * connected to a server that never answers.  Nothing may resume (the tasks
 * would write the marker) and nothing may leak (ASan). */
static void test_get_runtime_closes_in_flight(void **state)
{
    (void)state;
    server_t s = server_start("hang", -1);
    char *marker = cmt_path(s.dir, "resumed");
    assert_int_equal(lua_fmt("local url = 'http://127.0.0.1:%d/api/tags'\n"
                             "local function get_then_mark()\n"
                             "  cm.http.get(url, {timeout = 60000})\n"
                             "  cm.fs.write_atomic('%s', 'resumed')\n"
                             "end\n"
                             "cm.task.spawn(get_then_mark)\n"
                             "cm.time.sleep(200) -- the first one is connected and waiting by now\n"
                             "cm.task.spawn(get_then_mark)\n"
                             "return 0\n",
                             s.port, marker),
                     0);
    assert_null(cmt_read_file(marker, NULL));
    free(marker);
    server_stop(&s);
}

/* Many runtimes one after another each get a fresh engine. */
static void test_get_sequential_runtimes(void **state)
{
    (void)state;
    server_t s = server_start("ollama", -1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lua_fmt("for i = 1, 3 do\n"
                                 "  local r = assert(cm.http.get('http://127.0.0.1:%d/api/tags'))\n"
                                 "  assert(r.status == 200)\n"
                                 "end\n",
                                 s.port),
                         0);
    }
    server_stop(&s);
}

int main(void)
{
    /* A strong reference, so the group is linked from the static library
     * even while lua_cm.c refers to the groups weakly. */
    volatile lua_CFunction linked = cm__open_http;
    (void)linked;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_ok),
        cmocka_unit_test(test_get_error_status_is_an_answer),
        cmocka_unit_test(test_post_chat),
        cmocka_unit_test(test_get_refused),
        cmocka_unit_test(test_get_timeout),
        cmocka_unit_test(test_get_connect_timeout),
        cmocka_unit_test(test_get_closed),
        cmocka_unit_test(test_get_too_large),
        cmocka_unit_test(test_get_too_large_streamed),
        cmocka_unit_test(test_get_bad_url),
        cmocka_unit_test(test_get_argument_errors),
        cmocka_unit_test(test_get_concurrent),
        cmocka_unit_test(test_get_runtime_closes_in_flight),
        cmocka_unit_test(test_get_sequential_runtimes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
