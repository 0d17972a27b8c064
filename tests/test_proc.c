/*
 * cm.proc: run, spawn, signals, /proc facts, pidfd waits, pipes and orphan
 * reaping, with real processes.  Every Lua snippet registers what it starts
 * (track_child / track_group / track_pid) and the prelude kills all of it
 * at the end, pass or fail; every wait in a test is bounded.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char PRELUDE[] =
    "local started = {}\n"
    "function track_child(c) started[#started + 1] = function() c:kill('KILL') end return c end\n"
    "function track_group(g)\n"
    "  started[#started + 1] = function()\n"
    "    if cm.proc.group_alive(g) then cm.proc.kill_group(g, 'KILL') end\n"
    "  end\n"
    "  return g\n"
    "end\n"
    "function track_pid(p)\n"
    "  started[#started + 1] = function() if cm.proc.alive(p) then cm.proc.kill(p, 'KILL') end "
    "end\n"
    "  return p\n"
    "end\n"
    "local ok, err = xpcall(function()\n";

static const char EPILOGUE[] = "\nend, debug.traceback)\n"
                               "for i = #started, 1, -1 do started[i]() end\n"
                               "if not ok then error(err, 0) end\n";

/* Runs a Lua test body (printf-formatted) inside the cleanup prelude;
 * returns cmt_lua's exit code. */
static int proc_lua(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *body = NULL;
    assert_true(vasprintf(&body, fmt, ap) >= 0);
    va_end(ap);
    size_t n = strlen(PRELUDE) + strlen(body) + strlen(EPILOGUE) + 1;
    char *code = malloc(n);
    assert_non_null(code);
    snprintf(code, n, "%s%s%s", PRELUDE, body, EPILOGUE);
    int rc = cmt_lua(code);
    free(code);
    free(body);
    return rc;
}

/* ---- run ----------------------------------------------------------------- */

static void run_echo_collects_stdout(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua("local r = assert(cm.proc.run{argv={'/bin/echo', 'hi'}})\n"
                 "assert(r.code == 0 and r.signal == 0, r.code)\n"
                 "assert(r.stdout == 'hi\\n' and r.stderr == '', r.stdout)\n"
                 "assert(r.timed_out == false and r.truncated == false)\n"
                 "assert(type(r.ms) == 'number' and r.ms >= 0)\n"
                 "r = assert(cm.proc.run{argv={'sh', '-c', 'echo out; echo err >&2'}})\n"
                 "assert(r.stdout == 'out\\n' and r.stderr == 'err\\n')\n"),
        0);
}

static void run_missing_program_is_enoent(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua("local r, msg, code = cm.proc.run{argv={'cm-no-such-program-42'}}\n"
                 "assert(r == nil and code == 'ENOENT', tostring(code))\n"
                 "assert(msg == 'cm-no-such-program-42: command not found', msg)\n"
                 "r, msg, code = cm.proc.run{argv={'/nonexistent/prog'}}\n"
                 "assert(r == nil and code == 'ENOENT', tostring(code))\n"
                 "r, msg, code = cm.proc.run{argv={'true'}, cwd='/nonexistent/dir'}\n"
                 "assert(r == nil and code == 'ENOENT' and msg:find('no such directory'), msg)\n"
                 "assert(not pcall(cm.proc.run, {argv={}}))\n"
                 "assert(not pcall(cm.proc.run, {argv={'true'}, env={A={}}}))\n"),
        0);
}

static void run_reports_exit_code_and_signal(void **state)
{
    (void)state;
    assert_int_equal(proc_lua("local r = assert(cm.proc.run{argv={'sh', '-c', 'exit 3'}})\n"
                              "assert(r.code == 3 and r.signal == 0, r.code)\n"
                              "r = assert(cm.proc.run{argv={'sh', '-c', 'kill -TERM $$'}})\n"
                              "assert(r.signal == 15, r.signal)\n"
                              "assert(r.code == 128 + 15, r.code)\n"),
                     0);
}

static void run_timeout_kills(void **state)
{
    (void)state;
    double t0 = cmt_now_ms();
    assert_int_equal(
        proc_lua("local t0 = cm.time.now()\n"
                 "local r = assert(cm.proc.run{argv={'sleep', '5'}, timeout=200})\n"
                 "local ms = cm.time.now() - t0\n"
                 "assert(r.timed_out == true, 'not timed out')\n"
                 "assert(r.signal == 9, r.signal)\n"
                 "assert(ms >= 190 and ms < 200 + 800 * SLACK, ms)\n"
                 /* The whole group goes: a grandchild holding the pipe too. */
                 "t0 = cm.time.now()\n"
                 "r = assert(cm.proc.run{argv={'sh', '-c', 'sleep 5; echo never'}, timeout=200})\n"
                 "assert(r.timed_out and cm.time.now() - t0 < 1000 * SLACK)\n"
                 "assert(r.stdout == '')\n"),
        0);
    assert_true(cmt_now_ms() - t0 < cmt_bound_ms(3000));
}

static void run_caps_big_output(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua(
            "local r = assert(cm.proc.run{argv={'head', '-c', '3000000', '/dev/zero'},\n"
            "                             max_output=100000, timeout=10000})\n"
            "assert(r.code == 0 and not r.timed_out, r.code)\n"
            "assert(#r.stdout == 100000, #r.stdout)\n"
            "assert(r.truncated == true)\n"
            "r = assert(cm.proc.run{argv={'head', '-c', '3000000', '/dev/zero'}, timeout=10000})\n"
            "assert(r.code == 0 and #r.stdout == 1024 * 1024, #r.stdout)\n"
            "r = assert(cm.proc.run{argv={'head', '-c', '5000', '/dev/zero'}, max_output=0})\n"
            "assert(r.code == 0 and r.stdout == '' and r.truncated)\n"),
        0);
}

static void runs_overlap(void **state)
{
    (void)state;
    assert_int_equal(proc_lua("local t0 = cm.time.now()\n"
                              "local function nap() return assert(cm.proc.run{argv={'sleep', "
                              "'0.3'}, timeout=5000}) end\n"
                              "local a, b = cm.task.spawn(nap), cm.task.spawn(nap)\n"
                              "local ok1, ra = a:join()\n"
                              "local ok2, rb = b:join()\n"
                              "assert(ok1 and ok2 and ra.code == 0 and rb.code == 0)\n"
                              "local ms = cm.time.now() - t0\n"
                              "assert(ms >= 290 and ms < 590, 'runs did not overlap: ' .. ms)\n"),
                     0);
}

/* env replaces the environment, and its PATH is where argv[0] is looked up. */
static void run_env_replaces_environment(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *tool = cmt_path(dir, "cm-test-tool");
    cmt_write_file(tool, "#!/bin/sh\necho \"tool:$FOO\"\n");
    assert_int_equal(chmod(tool, 0755), 0);
    assert_int_equal(
        proc_lua(
            "local r = assert(cm.proc.run{argv={'sh', '-c', 'echo \"$FOO:${HOME:-unset}\"'},\n"
            "                             env={FOO='bar'}})\n"
            "assert(r.stdout == 'bar:unset\\n', r.stdout)\n"
            /* Found only through the PATH given in env. */
            "assert(select(3, cm.proc.run{argv={'cm-test-tool'}}) == 'ENOENT')\n"
            "r = assert(cm.proc.run{argv={'cm-test-tool'}, env={PATH='%s:/usr/bin:/bin', "
            "FOO=42}})\n"
            "assert(r.code == 0 and r.stdout == 'tool:42\\n', r.stdout)\n"
            "local _, _, code = cm.proc.run{argv={'sh', '-c', 'true'}, env={PATH='/nonexistent'}}\n"
            "assert(code == 'ENOENT', code)\n"
            "r = assert(cm.proc.run{argv={'pwd'}, cwd='%s'})\n"
            "assert(r.stdout == '%s\\n', r.stdout)\n",
            dir, dir, dir),
        0);
    free(tool);
    cmt_rmtree(dir);
    free(dir);
}

/* ---- spawn ------------------------------------------------------------- */

static void spawn_new_session_reports_exit(void **state)
{
    (void)state;
    assert_int_equal(proc_lua("local ev = cm.task.event()\n"
                              "local c = track_child(assert(cm.proc.spawn{\n"
                              "  argv={'sh', '-c', 'sleep 0.2; exit 7'}, new_session=true,\n"
                              "  on_exit=function(code, sig) ev:set(code, sig) end}))\n"
                              "assert(math.type(c.pid) == 'integer' and c.pid > 1)\n"
                              "local info = assert(cm.proc.info(c.pid))\n"
                              "assert(info.pgid == c.pid and info.sid == c.pid, info.pgid)\n"
                              "assert(info.ppid == cm.sys.pid(), info.ppid)\n"
                              "assert(cm.proc.alive(c.pid) and cm.proc.group_alive(c.pid))\n"
                              "local code, sig = ev:wait(3000)\n"
                              "assert(code == 7 and sig == 0, tostring(code))\n"
                              "assert(not cm.proc.alive(c.pid))\n"
                              "local ok, msg, ecode = c:kill('TERM')\n"
                              "assert(ok == nil and ecode == 'ESRCH', msg)\n"
                              /* Killed by a signal: code 128 + signal. */
                              "local ev2 = cm.task.event()\n"
                              "local c2 = track_child(assert(cm.proc.spawn{argv={'sleep', '5'},\n"
                              "  on_exit=function(code, sig) ev2:set(code, sig) end}))\n"
                              "assert(cm.proc.info(c2.pid).pgid ~= c2.pid)\n"
                              "assert(c2:kill('KILL'))\n"
                              "code, sig = ev2:wait(3000)\n"
                              "assert(code == 137 and sig == 9, tostring(code))\n"
                              "local _, _, e = cm.proc.spawn{argv={'cm-no-such-program-42'}}\n"
                              "assert(e == 'ENOENT')\n"),
                     0);
}

/* stdout_fd / stderr_fd: the child writes into our (O_APPEND) log. */
static void spawn_writes_to_given_fds(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *log = cmt_path(dir, "session.log");
    cmt_write_file(log, "first\n");
    int fd = open(log, O_WRONLY | O_APPEND | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(
        proc_lua("local ev = cm.task.event()\n"
                 "track_child(assert(cm.proc.spawn{argv={'sh', '-c', 'echo out; echo err >&2'},\n"
                 "  stdout_fd=%d, stderr_fd=%d, on_exit=function(code) ev:set(code) end}))\n"
                 "assert(ev:wait(3000) == 0)\n"
                 "local _, _, code = cm.proc.spawn{argv={'true'}, stdout_fd=987}\n"
                 "assert(code == 'EBADF', code)\n",
                 fd, fd),
        0);
    close(fd);
    char *text = cmt_read_file(log, NULL);
    assert_string_equal(text, "first\nout\nerr\n");
    free(text);
    free(log);
    cmt_rmtree(dir);
    free(dir);
}

/* The readiness pipe: a CLOEXEC write end passed in extra_fds is fd 3 in
 * the child, and read_fd sees its data, then EOF. */
static void spawn_extra_fds_and_read_fd(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua(
            "local r, w = cm.proc.pipe()\n"
            "assert(math.type(r) == 'integer' and math.type(w) == 'integer')\n"
            "track_child(assert(cm.proc.spawn{argv={'sh', '-c', 'sleep 0.1; echo ready >&3'},\n"
            "  extra_fds={w}, new_session=true}))\n"
            "assert(cm.proc.close_fd(w))\n"
            "local t0 = cm.time.now()\n"
            "local data, msg = cm.proc.read_fd(r, 3000)\n"
            "assert(data == 'ready\\n', tostring(data) .. ' ' .. tostring(msg))\n"
            "local eof, m2 = cm.proc.read_fd(r, 3000)\n"
            "assert(eof == nil and m2 == nil, m2)\n"
            "assert(cm.time.now() - t0 < 2000)\n"
            "assert(cm.proc.close_fd(r))\n"
            /* Nobody writes: a bounded wait. */
            "local r2, w2 = cm.proc.pipe()\n"
            "t0 = cm.time.now()\n"
            "local d, why, code = cm.proc.read_fd(r2, 100)\n"
            "assert(d == nil and why == 'timeout' and code == 'timeout', why)\n"
            "assert(cm.time.now() - t0 < 1000)\n"
            "cm.proc.close_fd(r2) cm.proc.close_fd(w2)\n"
            "local _, _, bad = cm.proc.read_fd(r2, 100)\n"
            "assert(bad == 'EBADF', bad)\n"),
        0);
}

/* detach: the child outlives the runtime, whose loop does not wait for it. */
static void spawn_detach_does_not_hold_the_loop(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *pidfile = cmt_path(dir, "pid");
    double t0 = cmt_now_ms();
    assert_int_equal(proc_lua("local c = assert(cm.proc.spawn{argv={'sleep', '5'}, detach=true,\n"
                              "  on_exit=function() end})\n"
                              "assert(cm.proc.info(c.pid).pgid == c.pid)\n"
                              "local f = assert(io.open('%s', 'w')) f:write(c.pid) f:close()\n",
                              pidfile),
                     0);
    assert_true(cmt_now_ms() - t0 < cmt_bound_ms(2000));
    char *text = cmt_read_file(pidfile, NULL);
    assert_non_null(text);
    pid_t pid = (pid_t)atoi(text);
    assert_true(pid > 1);
    assert_true(cm_proc_alive(pid)); /* it outlived the runtime */
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid); /* still our child: reap it */
    free(text);
    free(pidfile);
    cmt_rmtree(dir);
    free(dir);
}

/* ---- signals and groups ------------------------------------------------ */

static void kill_group_reaches_grandchildren(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua("local r, w = cm.proc.pipe()\n"
                 "local c = track_child(assert(cm.proc.spawn{\n"
                 "  argv={'sh', '-c', 'sleep 30 & echo $! >&3; wait'},\n"
                 "  extra_fds={w}, new_session=true}))\n"
                 "track_group(c.pid)\n"
                 "cm.proc.close_fd(w)\n"
                 "local gpid = tonumber(assert(cm.proc.read_fd(r, 3000)))\n"
                 "cm.proc.close_fd(r)\n"
                 "assert(cm.proc.info(gpid).pgid == c.pid)\n"
                 "assert(cm.proc.wait_group(c.pid, 100) == false)\n"
                 "local t0 = cm.time.now()\n"
                 "assert(cm.proc.kill_group(c.pid, 'TERM'))\n"
                 "assert(cm.proc.wait_group(c.pid, 2000) == true)\n"
                 "assert(cm.time.now() - t0 < 1500)\n"
                 "assert(not cm.proc.alive(gpid) and not cm.proc.group_alive(c.pid))\n"),
        0);
}

static void kill_refuses_init_and_groups(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua("for _, pid in ipairs({0, 1, -1, -5}) do\n"
                 "  local ok, msg, code = cm.proc.kill(pid, 'TERM')\n"
                 "  assert(ok == nil and code == 'EINVAL', msg)\n"
                 "  ok, msg, code = cm.proc.kill_group(pid, 0)\n"
                 "  assert(ok == nil and code == 'EINVAL', msg)\n"
                 "end\n"
                 /* As a container's PID 1 the suite's own group is 0
                  * (its leader is outside the namespace), which the
                  * loop above already refuses. */
                 "local own = cm.proc.info(cm.sys.pid()).pgid\n"
                 "local ok, msg, code = cm.proc.kill_group(own, 0)\n"
                 "assert(ok == nil and code == 'EINVAL' and (own <= 1 or msg:find('own')), msg)\n"
                 "ok, msg, code = cm.proc.kill(4194305, 0)\n"
                 "assert(ok == nil and code == 'ESRCH', msg)\n"
                 /* PID 1 (the suite as a container's init) is
                  * refused like any init. */
                 "local me_ok = cm.sys.pid() ~= 1 or nil\n"
                 "assert(cm.proc.kill(cm.sys.pid(), 0) == me_ok)\n"
                 "assert(cm.proc.kill(cm.sys.pid(), 'SIGCONT') == me_ok)\n"
                 "assert(not pcall(cm.proc.kill, 12345, 'BOGUS'))\n"),
        0);
}

/* ---- /proc facts --------------------------------------------------------- */

static void parse_stat_takes_the_last_paren(void **state)
{
    (void)state;
    cm_proc_stat_t st;
    const char *line = "4242 (a (b) c) S 17 4242 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 "
                       "987654 1000 200 18446744073709551615\n";
    assert_int_equal(cm_proc_parse_stat(line, &st), 0);
    assert_int_equal(st.pid, 4242);
    assert_string_equal(st.name, "a (b) c");
    assert_int_equal(st.state, 'S');
    assert_int_equal(st.ppid, 17);
    assert_int_equal(st.pgid, 4242);
    assert_int_equal(st.sid, 4240);
    assert_int_equal(st.start_time, 987654);
    assert_int_equal(cm_proc_parse_stat("12 (x) S 1 2", &st), -1);
    assert_int_equal(cm_proc_parse_stat("garbage", &st), -1);
    assert_int_equal(cm_proc_signal_number("TERM"), SIGTERM);
    assert_int_equal(cm_proc_signal_number("SIGKILL"), SIGKILL);
    assert_int_equal(cm_proc_signal_number("0"), 0);
    assert_int_equal(cm_proc_signal_number("NOPE"), -1);
}

static void info_reads_comm_with_spaces_and_parens(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *prog = cmt_path(dir, "a (b) c");
    size_t len;
    char *bin = cmt_read_file("/bin/sleep", &len);
    assert_non_null(bin);
    FILE *f = fopen(prog, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bin, 1, len, f), len);
    fclose(f);
    free(bin);
    assert_int_equal(chmod(prog, 0755), 0);
    assert_int_equal(
        proc_lua(
            "local c = track_child(assert(cm.proc.spawn{argv={'%s', '5'}}))\n"
            "local info\n"
            /* Until exec has replaced the fork's comm. */
            "for _ = 1, 100 do\n"
            "  info = assert(cm.proc.info(c.pid))\n"
            "  if info.name == 'a (b) c' then break end\n"
            "  cm.time.sleep(10)\n"
            "end\n"
            "assert(info.name == 'a (b) c', info.name)\n"
            "assert(info.pid == c.pid and info.ppid == cm.sys.pid())\n"
            "assert(info.state == 'S' or info.state == 'R', info.state)\n"
            "assert(math.type(info.start_time) == 'integer' and info.start_time > 0)\n"
            "assert(info.uid == %d, info.uid)\n"
            "assert(#info.cmdline == 2 and info.cmdline[1] == '%s' and info.cmdline[2] == '5')\n"
            "local me = assert(cm.proc.info(cm.sys.pid()))\n"
            "assert(info.start_time >= me.start_time)\n"
            "assert(cm.proc.info(4194305) == nil)\n",
            prog, (int)getuid(), prog),
        0);
    free(prog);
    cmt_rmtree(dir);
    free(dir);
}

static void has_marker_matches_whole_entries(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua("local c = track_child(assert(cm.proc.spawn{argv={'sleep', '5'},\n"
                 "  env={CM_TEST_MARKER='abc', OTHER='x'}}))\n"
                 "assert(cm.proc.has_marker(c.pid, 'CM_TEST_MARKER', 'abc'))\n"
                 "assert(not cm.proc.has_marker(c.pid, 'CM_TEST_MARKER', 'ab'))\n"
                 "assert(not cm.proc.has_marker(c.pid, 'CM_TEST_MARKER', 'abcd'))\n"
                 "assert(not cm.proc.has_marker(c.pid, 'CM_TEST', 'abc'))\n"
                 "assert(not cm.proc.has_marker(c.pid, 'OTHER', 'abc'))\n"
                 "assert(not cm.proc.has_marker(4194305, 'CM_TEST_MARKER', 'abc'))\n"
                 "assert(not cm.proc.has_marker(cm.sys.pid(), 'CM_TEST_MARKER', 'abc'))\n"),
        0);
}

static void list_has_init_and_us(void **state)
{
    (void)state;
    assert_int_equal(proc_lua("local pids = cm.proc.list()\n"
                              "local seen = {}\n"
                              "for i, p in ipairs(pids) do\n"
                              "  seen[p] = true\n"
                              "  assert(i == 1 or pids[i - 1] < p, 'not sorted')\n"
                              "end\n"
                              "assert(seen[1] and seen[cm.sys.pid()])\n"),
                     0);
}

/* Zombies count as dead, for a pid and for a group (kill(-pgid, 0) would
 * still succeed on a group of zombies). */
static void zombies_are_not_alive(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        _exit(0);
    }
    setpgid(pid, pid); /* either side may win the race; both ask the same */
    cm_proc_stat_t st;
    for (int i = 0; i < 200; i++) {
        if (cm_proc_read_stat(pid, &st) == 0 && st.state == 'Z') break;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(cm_proc_read_stat(pid, &st), 0);
    assert_int_equal(st.state, 'Z');
    assert_false(cm_proc_alive(pid));
    assert_int_equal(kill(-pid, 0), 0);
    assert_false(cm_proc_group_alive(pid));
    assert_true(cm_proc_alive(getpid()));
    assert_int_equal(waitpid(pid, NULL, 0), pid);
}

static int collect_pid(pid_t pid, void *arg)
{
    pid_t *seen = arg;
    for (int i = 0; i < 8; i++) {
        if (seen[i] == 0) {
            seen[i] = pid;
            break;
        }
    }
    return 0;
}

/* Groups are looked up among our descendants first (children files, no scan
 * of /proc), and on the whole machine when they are not there. */
static void groups_found_among_descendants_and_beyond(void **state)
{
    (void)state;
    /* Our own group (no child of ours in it yet) is found by the scan; as
     * the init of a PID namespace our group may lie outside it (0). */
    if (getpgrp() > 0) {
        pid_t own = cm_proc_group_lowest(getpgrp());
        assert_true(own > 0 && own <= getpid());
    }
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        pid_t grandchild = fork();
        if (grandchild == 0) {
            setpgid(0, 0);
            pause();
            _exit(0);
        }
        setpgid(grandchild, grandchild);
        (void)!write(fds[1], &grandchild, sizeof grandchild);
        pause();
        _exit(0);
    }
    pid_t grandchild = 0;
    assert_int_equal(read(fds[0], &grandchild, sizeof grandchild), sizeof grandchild);
    close(fds[0]);
    close(fds[1]);
    pid_t seen[8] = {0};
    assert_int_equal(cm_proc_foreach_descendant(collect_pid, seen, 1), 0);
    int found_child = 0, found_grandchild = 0;
    for (int i = 0; i < 8; i++) {
        found_child |= seen[i] == child;
        found_grandchild |= seen[i] == grandchild;
    }
    assert_true(found_child && found_grandchild);
    memset(seen, 0, sizeof seen);
    assert_int_equal(cm_proc_foreach_descendant(collect_pid, seen, 0), 0);
    for (int i = 0; i < 8; i++)
        assert_true(seen[i] != grandchild);
    assert_int_equal(cm_proc_group_lowest(grandchild), grandchild);
    kill(grandchild, SIGKILL);
    kill(child, SIGKILL);
    assert_int_equal(waitpid(child, NULL, 0), child);
    for (int i = 0; i < 400 && cm_proc_group_alive(grandchild); i++) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_false(cm_proc_group_alive(grandchild));
}

/* ---- waits --------------------------------------------------------------- */

static void wait_exit_on_a_non_child(void **state)
{
    (void)state;
    assert_int_equal(proc_lua("local r = assert(cm.proc.run{argv={'sh', '-c', 'sleep 0.3 "
                              ">/dev/null 2>&1 & echo $!'},\n"
                              "                             timeout=5000})\n"
                              "local gpid = track_pid(assert(tonumber(r.stdout)))\n"
                              "local info = cm.proc.info(gpid)\n"
                              /* As PID 1 the orphan is re-parented to us: then it
                               * is our child after all, and must still be waited. */
                              "assert(info and (info.ppid ~= cm.sys.pid() or cm.sys.pid() == 1),\n"
                              "       'expected a non-child')\n"
                              "local t0 = cm.time.now()\n"
                              "assert(cm.proc.wait_exit(gpid, 3000) == true)\n"
                              "local ms = cm.time.now() - t0\n"
                              "assert(ms > 50 and ms < 1500 * SLACK, ms)\n"
                              "assert(not cm.proc.alive(gpid))\n"
                              /* Already gone: at once. */
                              "t0 = cm.time.now()\n"
                              "assert(cm.proc.wait_exit(gpid, 3000) == true)\n"
                              "assert(cm.proc.wait_exit(4194305, 3000) == true)\n"
                              "assert(cm.time.now() - t0 < 100)\n"
                              /* A live one past the timeout: false, bounded. */
                              "local c = track_child(assert(cm.proc.spawn{argv={'sleep', '5'}}))\n"
                              "t0 = cm.time.now()\n"
                              "assert(cm.proc.wait_exit(c.pid, 100) == false)\n"
                              "assert(cm.proc.wait_exit(c.pid, 0) == false)\n"
                              "assert(cm.time.now() - t0 < 1000)\n"
                              "assert(c:kill('KILL'))\n"
                              "assert(cm.proc.wait_exit(c.pid, 2000) == true)\n"),
                     0);
}

/* Without pidfds (kernels before 5.3) the waits re-check every 10 ms. */
static void waits_fall_back_without_pidfd(void **state)
{
    (void)state;
    cm__proc_pidfd_disabled = 1;
    int rc = proc_lua(
        "local c = track_child(assert(cm.proc.spawn{argv={'sleep', '5'}, new_session=true}))\n"
        "track_group(c.pid)\n"
        "local t0 = cm.time.now()\n"
        "assert(cm.proc.wait_exit(c.pid, 100) == false)\n"
        "assert(cm.proc.wait_group(c.pid, 100) == false)\n"
        "assert(cm.time.now() - t0 < 1000 * SLACK)\n"
        "cm.time.timer(100, 0, function() cm.proc.kill_group(c.pid, 'KILL') end)\n"
        "t0 = cm.time.now()\n"
        "assert(cm.proc.wait_group(c.pid, 3000) == true)\n"
        "assert(cm.proc.wait_exit(c.pid, 3000) == true)\n"
        "local ms = cm.time.now() - t0\n"
        "assert(ms >= 90 and ms < 1500 * SLACK, ms)\n");
    cm__proc_pidfd_disabled = 0;
    assert_int_equal(rc, 0);
}

/* The runtime closes while tasks wait on run, wait_exit, wait_group and
 * read_fd: every job is freed (ASan) and the run's child is killed. */
static void abandoned_waits_are_freed(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *pidfile = cmt_path(dir, "pid");
    pid_t sleeper = fork();
    assert_true(sleeper >= 0);
    if (sleeper == 0) {
        setpgid(0, 0);
        execlp("sleep", "sleep", "5", (char *)NULL);
        _exit(127);
    }
    setpgid(sleeper, sleeper);
    double t0 = cmt_now_ms();
    assert_int_equal(
        proc_lua("cm.task.spawn(function()\n"
                 "  cm.proc.run{argv={'sh', '-c', 'echo $$ > %s; exec sleep 5'}}\n"
                 "end)\n"
                 "cm.task.spawn(function() cm.proc.wait_exit(%d, 5000) end)\n"
                 "cm.task.spawn(function() cm.proc.wait_group(%d, 5000) end)\n"
                 "local r, w = cm.proc.pipe()\n"
                 "cm.task.spawn(function() cm.proc.read_fd(r, 5000) end)\n"
                 "for _ = 1, 100 do\n"
                 "  local f = io.open('%s') local s = f and f:read('a') if f then f:close() end\n"
                 "  if s and #s > 0 then break end\n"
                 "  cm.time.sleep(10)\n"
                 "end\n",
                 pidfile, (int)sleeper, (int)sleeper, pidfile),
        0);
    assert_true(cmt_now_ms() - t0 < cmt_bound_ms(3000));
    char *text = cmt_read_file(pidfile, NULL);
    assert_non_null(text);
    pid_t runpid = (pid_t)atoi(text);
    assert_true(runpid > 1);
    /* Killed at teardown; libuv no longer reaps it, so we do. */
    assert_int_equal(waitpid(runpid, NULL, 0), runpid);
    assert_int_equal(kill(sleeper, SIGKILL), 0);
    assert_int_equal(waitpid(sleeper, NULL, 0), sleeper);
    free(text);
    free(pidfile);
    cmt_rmtree(dir);
    free(dir);
}

/* Last: it makes this process a subreaper.  Orphans re-parented to us are
 * reaped; a libuv child, zombie or not, never is. */
static void reap_orphans_leaves_libuv_children(void **state)
{
    (void)state;
    assert_int_equal(
        proc_lua("assert(cm.proc.set_subreaper())\n"
                 /* Children the earlier tests killed just before their runtime
                  * closed were never reaped by libuv: clear them first. */
                 "cm.proc.reap_orphans()\n"
                 "local function orphan()\n"
                 "  local r = assert(cm.proc.run{argv={'sh', '-c', 'sleep 0.1 >/dev/null 2>&1 & "
                 "echo $!'},\n"
                 "                               timeout=5000})\n"
                 "  local pid = track_pid(assert(tonumber(r.stdout)))\n"
                 "  assert(cm.proc.info(pid).ppid == cm.sys.pid(), 'not re-parented to us')\n"
                 "  assert(cm.proc.wait_exit(pid, 3000))\n"
                 "  assert(cm.proc.info(pid).state == 'Z')\n"
                 "  return pid\n"
                 "end\n"
                 "local a, b = orphan(), orphan()\n"
                 /* A libuv child that is a zombie right now: libuv has not had
                  * a chance to reap it, so reap_orphans must leave it. */
                 "local ev = cm.task.event()\n"
                 "local c = track_child(assert(cm.proc.spawn{argv={'sh', '-c', 'exit 5'},\n"
                 "  on_exit=function(code) ev:set(code) end}))\n"
                 "local t0 = cm.time.now()\n"
                 "while cm.proc.info(c.pid).state ~= 'Z' do assert(cm.time.now() - t0 < 3000) end\n"
                 "local reaped = cm.proc.reap_orphans({b})\n"
                 "assert(#reaped == 1 and reaped[1] == a, #reaped)\n"
                 "assert(cm.proc.info(a) == nil and cm.proc.info(b).state == 'Z')\n"
                 "assert(ev:wait(3000) == 5, 'libuv lost the exit status')\n"
                 "reaped = cm.proc.reap_orphans()\n"
                 "assert(#reaped == 1 and reaped[1] == b, #reaped)\n"
                 "assert(#cm.proc.reap_orphans() == 0)\n"),
        0);
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(run_echo_collects_stdout),
        cmocka_unit_test(run_missing_program_is_enoent),
        cmocka_unit_test(run_reports_exit_code_and_signal),
        cmocka_unit_test(run_timeout_kills),
        cmocka_unit_test(run_caps_big_output),
        cmocka_unit_test(runs_overlap),
        cmocka_unit_test(run_env_replaces_environment),
        cmocka_unit_test(spawn_new_session_reports_exit),
        cmocka_unit_test(spawn_writes_to_given_fds),
        cmocka_unit_test(spawn_extra_fds_and_read_fd),
        cmocka_unit_test(spawn_detach_does_not_hold_the_loop),
        cmocka_unit_test(kill_group_reaches_grandchildren),
        cmocka_unit_test(kill_refuses_init_and_groups),
        cmocka_unit_test(parse_stat_takes_the_last_paren),
        cmocka_unit_test(info_reads_comm_with_spaces_and_parens),
        cmocka_unit_test(has_marker_matches_whole_entries),
        cmocka_unit_test(list_has_init_and_us),
        cmocka_unit_test(zombies_are_not_alive),
        cmocka_unit_test(groups_found_among_descendants_and_beyond),
        cmocka_unit_test(wait_exit_on_a_non_child),
        cmocka_unit_test(waits_fall_back_without_pidfd),
        cmocka_unit_test(abandoned_waits_are_freed),
        cmocka_unit_test(reap_orphans_leaves_libuv_children),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
