/*
 * cm.net against loopback sockets made by the test itself: a listener
 * (connect succeeds, port taken, owner is this process), a socket bound but
 * not listening (connect refused, deterministically), a listener with a full
 * accept queue (connect times out, when the kernel drops SYNs so), and a
 * runtime closed while a connect waits.  No address outside loopback is used.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cm_modules.h"
#include "cmtest.h"
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

/* ---- connect ------------------------------------------------------------ */

static void test_connect_ok(void **state)
{
    (void)state;
    int port = 0;
    int fd = cmt_bound_loopback(16, &port);
    int rc = lua_fmt("assert(cm.net.connect('127.0.0.1', %d, 2000) == true)\n"
                     "assert(cm.net.connect('localhost', %d, 2000) == true)\n"
                     "assert(cm.net.connect('127.0.0.1', %d) == true) -- default timeout\n",
                     port, port, port);
    close(fd);
    assert_int_equal(rc, 0);
}

static void test_connect_ipv6(void **state)
{
    (void)state;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0) {
        if (fd >= 0) close(fd);
        skip(); /* no IPv6 loopback here */
        return;
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin6_port);
    int rc = lua_fmt("assert(cm.net.connect('::1', %d, 2000) == true)\n"
                     "assert(cm.net.connect('[::1]', %d, 2000) == true)\n"
                     "assert(cm.net.port_listening(%d) == true)\n",
                     port, port, port);
    close(fd);
    assert_int_equal(rc, 0);
}

/* A name other than "localhost" goes through uv_getaddrinfo.  Only a name
 * that /etc/hosts maps to 127.0.0.1 is used (so no DNS query leaves the
 * machine); without one, skip. */
static void test_connect_resolves_name(void **state)
{
    (void)state;
    char name[256] = "";
    FILE *f = fopen("/etc/hosts", "r");
    if (f != NULL) {
        char line[512];
        while (name[0] == '\0' && fgets(line, sizeof line, f) != NULL) {
            char addr[64], first[256];
            if (sscanf(line, "%63s %255s", addr, first) != 2 || strcmp(addr, "127.0.0.1") != 0)
                continue;
            if (strcmp(first, "localhost") != 0 && strspn(first, "abcdefghijklmnopqrstuvwxyz"
                                                                 "0123456789.-") == strlen(first))
                snprintf(name, sizeof name, "%s", first);
        }
        fclose(f);
    }
    if (name[0] == '\0') {
        skip();
        return;
    }
    int port = 0;
    int fd = cmt_bound_loopback(16, &port);
    int rc = lua_fmt("assert(cm.net.connect('%s', %d, 5000) == true)\n", name, port);
    close(fd);
    assert_int_equal(rc, 0);
}

/* Bound but not listening: the kernel answers a SYN with RST at once. */
static void test_connect_refused(void **state)
{
    (void)state;
    int port = 0;
    int fd = cmt_bound_loopback(-1, &port);
    int rc = lua_fmt("local t0 = cm.time.now()\n"
                     "local ok, msg, code = cm.net.connect('127.0.0.1', %d, 2000)\n"
                     "assert(ok == nil)\n"
                     "assert(code == 'refused', tostring(code) .. ': ' .. tostring(msg))\n"
                     "assert(msg == 'connection refused', msg)\n"
                     "assert(cm.time.now() - t0 < 1000 * SLACK)\n",
                     port);
    close(fd);
    assert_int_equal(rc, 0);
}

/* A connect that never completes can be made on loopback only through a full
 * accept queue; when the kernel does not drop SYNs that way, skip. */
static void test_connect_timeout(void **state)
{
    (void)state;
    int fds[CMT_BLACKHOLE_MAX_FDS], nfds = 0;
    int port = cmt_blackhole_port(fds, &nfds);
    if (port < 0) {
        skip();
        return;
    }
    int rc = lua_fmt("local t0 = cm.time.now()\n"
                     "local ok, msg, code = cm.net.connect('127.0.0.1', %d, 300)\n"
                     "local ms = cm.time.now() - t0\n"
                     "assert(ok == nil)\n"
                     "assert(code == 'timeout', tostring(code) .. ': ' .. tostring(msg))\n"
                     "assert(ms >= 250 and ms < 300 + 700 * SLACK, ms)\n",
                     port);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    assert_int_equal(rc, 0);
}

/* Several connects wait at the same time: they cost one timeout, not three. */
static void test_connect_concurrent(void **state)
{
    (void)state;
    int fds[CMT_BLACKHOLE_MAX_FDS], nfds = 0;
    int port = cmt_blackhole_port(fds, &nfds);
    if (port < 0) {
        skip();
        return;
    }
    int rc = lua_fmt("local t0 = cm.time.now()\n"
                     "local tasks = {}\n"
                     "for i = 1, 3 do\n"
                     "  tasks[i] = cm.task.spawn(cm.net.connect, '127.0.0.1', %d, 300)\n"
                     "end\n"
                     "for i = 1, 3 do\n"
                     "  local ok, r, msg, code = tasks[i]:join()\n"
                     "  assert(ok and r == nil and code == 'timeout', tostring(code))\n"
                     "end\n"
                     "local ms = cm.time.now() - t0\n"
                     "assert(ms < 890, ms)\n", /* less than three in a row */
                     port);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    assert_int_equal(rc, 0);
}

static void test_connect_argument_errors(void **state)
{
    (void)state;
    assert_int_equal(
        lua_fmt("local function raises(f, pattern)\n"
                "  local ok, err = pcall(f)\n"
                "  assert(not ok, 'expected an error')\n"
                "  assert(tostring(err):find(pattern, 1, true), err)\n"
                "end\n"
                "raises(function() cm.net.connect() end, 'string expected')\n"
                "raises(function() cm.net.connect('127.0.0.1', 'x') end, 'number expected')\n"
                "raises(function() cm.net.connect('127.0.0.1', 80.5) end, 'integer')\n"
                "raises(function() cm.net.connect('127.0.0.1', 80, 0) end, 'timeout')\n"
                "raises(function() cm.net.connect('', 80) end, 'empty host')\n"
                "raises(coroutine.wrap(function() cm.net.connect('127.0.0.1', 80) end), 'task')\n"
                "local ok, msg, code = cm.net.connect('127.0.0.1', 0)\n"
                "assert(ok == nil and code == 'range', tostring(code))\n"
                "ok, msg, code = cm.net.connect('127.0.0.1', 65536)\n"
                "assert(ok == nil and code == 'range' and msg:find('65536'), msg)\n"),
        0);
}

/* The runtime closes while connects wait: nothing resumes (a task would
 * append to the marker), nothing leaks (ASan).  Once before the loop ever
 * ran (the connect is only queued), once with a SYN out and dropped. */
static void test_connect_runtime_closes_in_flight(void **state)
{
    (void)state;
    int fds[CMT_BLACKHOLE_MAX_FDS], nfds = 0;
    int hole = cmt_blackhole_port(fds, &nfds);
    int port = 0;
    int fd = cmt_bound_loopback(16, &port);
    char *dir = cmt_tempdir();
    char *marker = cmt_path(dir, "resumed");
    const char *script =
        "local function connect_then_mark(port)\n"
        "  local ok, msg, code = cm.net.connect('127.0.0.1', port, 60000)\n"
        "  cm.fs.append('%s', ('port %%d: %%s %%s\\n'):format(port, tostring(ok),\n"
        "                                                  tostring(code)))\n"
        "end\n"
        "cm.task.spawn(connect_then_mark, %d)\n"
        "if %d > 0 then cm.time.sleep(50) end\n"
        "return 0\n";
    /* The main task ends at once: the loop never turns before teardown. */
    int rc1 = lua_fmt(script, marker, port, 0);
    /* The main task sleeps while the connect waits on a port dropping SYNs. */
    int rc2 = hole > 0 ? lua_fmt(script, marker, hole, 1) : 0;
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    close(fd);
    char *resumed = cmt_read_file(marker, NULL);
    if (resumed != NULL) fprintf(stderr, "resumed: %s", resumed);
    free(resumed);
    free(marker);
    cmt_rmtree(dir);
    free(dir);
    assert_int_equal(rc1, 0);
    assert_int_equal(rc2, 0);
    assert_null(resumed);
}

/* ---- port probes -------------------------------------------------------- */

static void test_port_free(void **state)
{
    (void)state;
    int port = 0;
    int fd = cmt_bound_loopback(16, &port);
    int rc = lua_fmt("assert(cm.net.port_free(%d) == false)\n"
                     "assert(cm.net.port_free(%d, '127.0.0.1') == false)\n"
                     "assert(cm.net.port_free(%d, 'localhost') == false)\n",
                     port, port, port);
    close(fd);
    assert_int_equal(rc, 0);
    /* Closed: free again (the listener had no connection, so no TIME_WAIT). */
    assert_int_equal(lua_fmt("assert(cm.net.port_free(%d) == true)\n"
                             "assert(cm.net.port_free(%d, '127.0.0.1') == true)\n",
                             port, port),
                     0);
    /* Bound without listening still takes the port. */
    fd = cmt_bound_loopback(-1, &port);
    rc = lua_fmt("assert(cm.net.port_free(%d) == false)\n", port);
    close(fd);
    assert_int_equal(rc, 0);
}

static void test_port_free_argument_errors(void **state)
{
    (void)state;
    assert_int_equal(lua_fmt("local ok, err = pcall(cm.net.port_free, 'x')\n"
                             "assert(not ok)\n"
                             "ok, err = pcall(cm.net.port_free, 1.5)\n"
                             "assert(not ok and err:find('integer'), err)\n"
                             "ok, err = pcall(cm.net.port_free, 8080, 'example.com')\n"
                             "assert(not ok and err:find('numeric'), err)\n"
                             "local r, msg, code = cm.net.port_free(0)\n"
                             "assert(r == nil and code == 'range', tostring(code))\n"
                             "r, msg, code = cm.net.port_free(70000)\n"
                             "assert(r == nil and code == 'range', tostring(code))\n"
                             "r, msg, code = cm.net.port_owner(-1)\n"
                             "assert(r == nil and code == 'range', tostring(code))\n"
                             "r, msg, code = cm.net.port_listening(65536)\n"
                             "assert(r == nil and code == 'range', tostring(code))\n"),
                     0);
}

static void test_port_listening(void **state)
{
    (void)state;
    int port = 0;
    int fd = cmt_bound_loopback(16, &port);
    int rc = lua_fmt("assert(cm.net.port_listening(%d) == true)\n", port);
    close(fd);
    assert_int_equal(rc, 0);
    assert_int_equal(lua_fmt("assert(cm.net.port_listening(%d) == false)\n", port), 0);
    /* Bound but not listening is not LISTEN. */
    fd = cmt_bound_loopback(-1, &port);
    rc = lua_fmt("assert(cm.net.port_listening(%d) == false)\n", port);
    close(fd);
    assert_int_equal(rc, 0);
}

/* The listener is ours, so the owner must be this very process. */
static void test_port_owner(void **state)
{
    (void)state;
    int port = 0;
    int fd = cmt_bound_loopback(16, &port);
    char comm[64] = "";
    FILE *f = fopen("/proc/self/comm", "r");
    assert_non_null(f);
    assert_non_null(fgets(comm, sizeof comm, f));
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    int rc = lua_fmt("local owner = cm.net.port_owner(%d)\n"
                     "assert(owner, 'no owner found')\n"
                     "assert(owner.pid == %d, owner.pid)\n"
                     "assert(owner.name == '%s', owner.name)\n"
                     "assert(owner.pid == cm.sys.pid())\n",
                     port, (int)getpid(), comm);
    close(fd);
    assert_int_equal(rc, 0);
    assert_int_equal(lua_fmt("assert(cm.net.port_owner(%d) == nil)\n", port), 0);
}

/* The C side directly: a free port has no owner and the name stays empty. */
static void test_port_owner_c(void **state)
{
    (void)state;
    int port = 0;
    int fd = cmt_bound_loopback(16, &port);
    pid_t pid = 0;
    char name[16];
    assert_int_equal(cm_net_port_owner(port, &pid, name, sizeof name), 1);
    assert_int_equal(pid, getpid());
    assert_int_equal(cm_net_port_listening(port), 1);
    close(fd);
    assert_int_equal(cm_net_port_owner(port, &pid, name, sizeof name), 0);
    assert_int_equal(cm_net_port_listening(port), 0);
    assert_int_equal(cm_net_port_free("127.0.0.1", port), 1);
    assert_int_equal(cm_net_port_free("not-an-address", port), -EINVAL);
}

/* The ports a group listens on: this process's group holds two listeners
 * and a socket that is only bound; another group holds none. */
static void test_group_ports(void **state)
{
    (void)state;
    /* Another group, started before the sockets exist (a child between
     * fork and exec holds our descriptors). */
    const char *argv[] = {"/bin/sleep", "30", NULL};
    pid_t other = cmt_spawn(argv, NULL, NULL);
    int p1 = 0, p2 = 0, p3 = 0;
    int fd1 = cmt_bound_loopback(16, &p1), fd2 = cmt_bound_loopback(16, &p2);
    int fd3 = cmt_bound_loopback(-1, &p3);
    int lo = p1 < p2 ? p1 : p2, hi = p1 < p2 ? p2 : p1;
    int ports[8];
    int n = cm_net_group_ports(getpgrp(), ports, 8);
    int seen_lo = 0, seen_hi = 0, seen_bound = 0;
    for (int i = 0; i < n; i++) {
        seen_lo += ports[i] == lo;
        seen_hi += ports[i] == hi;
        seen_bound += ports[i] == p3;
        if (i > 0) assert_true(ports[i - 1] < ports[i]);
    }
    assert_int_equal(seen_lo, 1);
    assert_int_equal(seen_hi, 1);
    assert_int_equal(seen_bound, 0);
    assert_int_equal(lua_fmt("local ports = cm.net.group_ports(%d)\n"
                             "local seen = {}\n"
                             "for _, p in ipairs(ports) do seen[p] = true end\n"
                             "assert(seen[%d] and seen[%d] and not seen[%d])\n"
                             "assert(not pcall(cm.net.group_ports, 0))\n",
                             (int)getpgrp(), p1, p2, p3),
                     0);
    assert_int_equal(cm_net_group_ports(other, ports, 8), 0);
    cmt_kill_group(other);
    close(fd1);
    close(fd2);
    close(fd3);
    n = cm_net_group_ports(getpgrp(), ports, 8);
    for (int i = 0; i < n; i++)
        assert_true(ports[i] != p1 && ports[i] != p2);
}

int main(void)
{
    /* A strong reference, so the group is linked from the static library
     * even while lua_cm.c refers to the groups weakly. */
    volatile lua_CFunction linked = cm__open_net;
    (void)linked;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_ok),
        cmocka_unit_test(test_connect_ipv6),
        cmocka_unit_test(test_connect_resolves_name),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_connect_concurrent),
        cmocka_unit_test(test_connect_argument_errors),
        cmocka_unit_test(test_connect_runtime_closes_in_flight),
        cmocka_unit_test(test_port_free),
        cmocka_unit_test(test_port_free_argument_errors),
        cmocka_unit_test(test_port_listening),
        cmocka_unit_test(test_port_owner),
        cmocka_unit_test(test_port_owner_c),
        cmocka_unit_test(test_group_ports),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
