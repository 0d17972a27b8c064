/*
 * The runtime: tasks, parking primitives, error reporting, the embedded
 * scripts and their override folder, and command dispatch.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Two tasks that each sleep 300 ms run at the same time. */
static void two_sleeps_overlap(void **state)
{
    (void)state;
    assert_int_equal(
        cmt_lua("local t0 = cm.time.now()\n"
                "local a = cm.task.spawn(function() cm.time.sleep(300) return 'a' end)\n"
                "local b = cm.task.spawn(function() cm.time.sleep(300) return 'b' end)\n"
                "local ok1, ra = a:join()\n"
                "local ok2, rb = b:join()\n"
                "local ms = cm.time.now() - t0\n"
                "assert(ok1 and ok2 and ra == 'a' and rb == 'b')\n"
                "assert(ms >= 295, 'slept too little: ' .. ms)\n"
                "assert(ms < 595, 'sleeps did not overlap: ' .. ms)\n"),
        0);
}

/* A timer is measured from when it is started, not from libuv's cached loop
 * time: after 200 ms of work in the same callback, a 300 ms sleep (and a
 * one-shot timer, and an event wait's timeout) still lasts 300 ms. */
static void timers_after_busy_work_do_not_fire_early(void **state)
{
    (void)state;
    assert_int_equal(cmt_lua("local function busy(ms) local t = cm.time.now() while cm.time.now() "
                             "- t < ms do end end\n"
                             "cm.time.sleep(1)\n"
                             "busy(200)\n"
                             "local t0 = cm.time.now()\n"
                             "cm.time.sleep(300)\n"
                             "local slept = cm.time.now() - t0\n"
                             "assert(slept >= 295, 'sleep returned early: ' .. slept)\n"
                             "busy(200)\n"
                             "t0 = cm.time.now()\n"
                             "local ev = cm.task.event()\n"
                             "assert(select(2, ev:wait(300)) == 'timeout')\n"
                             "slept = cm.time.now() - t0\n"
                             "assert(slept >= 295, 'event wait timed out early: ' .. slept)\n"
                             "busy(200)\n"
                             "t0 = cm.time.now()\n"
                             "local fired = cm.task.event()\n"
                             "cm.time.timer(300, 0, function() fired:set(cm.time.now() - t0) end)\n"
                             "slept = fired:wait()\n"
                             "assert(slept >= 295, 'timer fired early: ' .. slept)\n"),
                     0);
}

/* Durations that are not finite are programming errors, not "no wait" or
 * "forever": sleep, timer, event waits and process timeouts raise. */
static void non_finite_durations_are_refused(void **state)
{
    (void)state;
    assert_int_equal(cmt_lua("for _, v in ipairs({ math.huge, -math.huge, 0/0 }) do\n"
                             "  local calls = {\n"
                             "    function() cm.time.sleep(v) end,\n"
                             "    function() cm.time.timer(v, 0, function() end) end,\n"
                             "    function() cm.time.timer(1, v, function() end) end,\n"
                             "    function() cm.task.event():wait(v) end,\n"
                             "    function() cm.proc.run{ argv = { 'true' }, timeout = v } end,\n"
                             "    function() cm.proc.wait_exit(cm.sys.pid(), v) end,\n"
                             "    function() cm.fs.lock('/tmp/cm-non-finite.lock', { wait = true, "
                             "timeout = v }) end,\n"
                             "  }\n"
                             "  for i, f in ipairs(calls) do\n"
                             "    local ok, err = pcall(f)\n"
                             "    assert(not ok and tostring(err):find('finite', 1, true), i .. ': "
                             "' .. tostring(v) .. ': ' .. tostring(err))\n"
                             "  end\n"
                             "end\n"),
                     0);
}

static void join_reports_errors(void **state)
{
    (void)state;
    assert_int_equal(
        cmt_lua("local t = cm.task.spawn(function() cm.time.sleep(1) error('boom') end)\n"
                "local ok, err = t:join()\n"
                "assert(ok == false)\n"
                "assert(err:find('boom'), err)\n"
                "assert(err:find('stack traceback'), 'no traceback: ' .. err)\n"),
        0);
}

static void main_task_error_exits_1(void **state)
{
    (void)state;
    assert_int_equal(cmt_lua("cm.time.sleep(1) error('fatal')"), 1);
    assert_int_equal(cmt_lua("return 7"), 7);
    assert_int_equal(cmt_lua("return false"), 1);
}

/* A primitive inside Lua's own coroutine cannot park: a clear error, no hang. */
static void plain_coroutine_cannot_wait(void **state)
{
    (void)state;
    assert_int_equal(cmt_lua("local co = coroutine.create(function() cm.time.sleep(10) end)\n"
                             "local ok, err = coroutine.resume(co)\n"
                             "assert(not ok and err:find('must run in a task'), err)\n"),
                     0);
    assert_int_equal(cmt_lua("local t = cm.task.spawn(function() coroutine.yield() end)\n"
                             "local ok, err = t:join()\n"
                             "assert(not ok and err:find('only cm primitives'), err)\n"),
                     0);
}

static void events_wake_waiters(void **state)
{
    (void)state;
    assert_int_equal(
        cmt_lua("local ev = cm.task.event()\n"
                "local got = {}\n"
                "local a = cm.task.spawn(function() local v = ev:wait() got[#got+1] = v end)\n"
                "local b = cm.task.spawn(function() local v = ev:wait(5000) got[#got+1] = v end)\n"
                "cm.time.timer(20, 0, function() ev:set('x') end)\n"
                "a:join() b:join()\n"
                "assert(#got == 2 and got[1] == 'x' and got[2] == 'x')\n"
                "assert(ev:wait() == 'x')\n"
                "local t0 = cm.time.now()\n"
                "local v, why = cm.task.event():wait(50)\n"
                "assert(v == nil and why == 'timeout')\n"
                "assert(cm.time.now() - t0 < 1000)\n"),
        0);
}

/* Repeating timers call back from fresh tasks until stopped. */
static void repeating_timer(void **state)
{
    (void)state;
    assert_int_equal(cmt_lua("local n, done = 0, cm.task.event()\n"
                             "local t\n"
                             "t = cm.time.timer(5, 5, function()\n"
                             "  n = n + 1\n"
                             "  if n == 3 then t:stop() done:set() end\n"
                             "end)\n"
                             "assert(done:wait(2000) ~= nil or n == 3)\n"
                             "cm.time.sleep(30)\n"
                             "assert(n == 3, n)\n"),
                     0);
}

/* A task abandoned mid-wait is torn down without leaks (ASan checks). */
static void abandoned_waits_are_freed(void **state)
{
    (void)state;
    assert_int_equal(cmt_lua("cm.task.spawn(function() cm.time.sleep(60000) end)\n"
                             "cm.task.spawn(function() cm.task.event():wait(60000) end)\n"
                             "cm.time.timer(60000, 1000, function() end)\n"
                             "return 0\n"),
                     0);
}

static void help_lists_every_command(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    cmt_result_t r = cmt_cm(dir, NULL, 10000, "help", NULL);
    assert_cmt_code(r, 0);
    const char *expected[] = {"start [port]",   "stop",           "force-stop", "restart [port]",
                              "status",         "logs",           "run [port]", "backend status",
                              "backend switch", "backend health", "help",       NULL};
    for (int i = 0; expected[i]; i++) {
        if (strstr(r.out, expected[i]) == NULL)
            fail_msg("help does not list '%s':\n%s", expected[i], r.out);
    }
    cmt_result_free(&r);
    r = cmt_cm(dir, NULL, 10000, "--help", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    cmt_rmtree(dir);
    free(dir);
}

static void unknown_command_exits_2(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    cmt_result_t r = cmt_cm(dir, NULL, 10000, "nonsense", NULL);
    assert_cmt_code(r, 2);
    assert_non_null(strstr(r.err, "[ERROR] Unknown command: nonsense"));
    assert_non_null(strstr(r.err, "Usage:"));
    cmt_result_free(&r);
    r = cmt_cm(dir, NULL, 10000, "status", "--root", NULL);
    assert_cmt_code(r, 2);
    cmt_result_free(&r);
    cmt_rmtree(dir);
    free(dir);
}

/* Users add commands by dropping modules in <root>/commands/; a broken one
 * is named and skipped, never fatal. */
static void user_commands_are_registered(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *cmds = cmt_path(dir, "commands");
    mkdir(cmds, 0755);
    char *hello = cmt_path(cmds, "hello.lua");
    cmt_write_file(
        hello, "return { name = 'hello', usage = 'hello', summary = 'say hello',\n"
               "  run = function(ctx, args) print('hello ' .. (args[1] or '')) return 5 end }\n");
    char *broken = cmt_path(cmds, "broken.lua");
    cmt_write_file(broken, "return {{{\n");
    cmt_result_t r = cmt_cm(dir, NULL, 10000, "hello", "world", NULL);
    assert_cmt_code(r, 5);
    assert_non_null(strstr(r.out, "hello world"));
    cmt_result_free(&r);
    /* help loads every command: the broken one is named there. */
    r = cmt_cm(dir, NULL, 10000, "help", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "say hello"));
    assert_non_null(strstr(r.out, "broken.lua"));
    cmt_result_free(&r);
    free(hello);
    free(broken);
    free(cmds);
    cmt_rmtree(dir);
    free(dir);
}

/* CHAT_MANAGER_LUA_DIR overrides embedded scripts file by file, and a Lua
 * error shows file:line and a traceback, exit 1. */
static void lua_dir_overrides_and_errors_show_file_line(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *cmds = cmt_path(dir, "commands");
    mkdir(cmds, 0755);
    char *help = cmt_path(cmds, "help.lua");
    cmt_write_file(help, "return { name = 'help', run = function()\n"
                         "  local x = nil\n"
                         "  return x.field\n"
                         "end }\n");
    char env_dir[512];
    snprintf(env_dir, sizeof env_dir, "CHAT_MANAGER_LUA_DIR=%s", dir);
    const char *env[] = {env_dir, NULL};
    cmt_result_t r = cmt_cm(dir, env, 10000, "help", NULL);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "commands/help.lua:3:"));
    assert_non_null(strstr(r.err, "stack traceback"));
    cmt_result_free(&r);
    free(help);
    free(cmds);
    cmt_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(two_sleeps_overlap),
        cmocka_unit_test(timers_after_busy_work_do_not_fire_early),
        cmocka_unit_test(non_finite_durations_are_refused),
        cmocka_unit_test(join_reports_errors),
        cmocka_unit_test(main_task_error_exits_1),
        cmocka_unit_test(plain_coroutine_cannot_wait),
        cmocka_unit_test(events_wake_waiters),
        cmocka_unit_test(repeating_timer),
        cmocka_unit_test(abandoned_waits_are_freed),
        cmocka_unit_test(help_lists_every_command),
        cmocka_unit_test(unknown_command_exits_2),
        cmocka_unit_test(user_commands_are_registered),
        cmocka_unit_test(lua_dir_overrides_and_errors_show_file_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
