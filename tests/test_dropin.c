/*
 * The drop-in rules with the fixture app: which directory is the root (the
 * executable's when it holds the app), read-only commands creating nothing
 * where there is no app, identity that a copy of a running checkout or a
 * forged process.pid / state.json cannot steal, and start's progress lines.
 * Every test works in its own temporary directories and stops what it
 * started (force-stop on its own root: only that root's marked processes).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmtest.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CMD_MS 60000

static const char *const quiet_env[] = {"FAKE_PYTHON_LLAMA=missing",
                                        "CHAT_MANAGER_ROOT=", "CONFIG_FILE=", NULL};

/* Writes a config.json into root that runs the fixture app on `port`;
 * `app_env` is the inside of manager.app.env. */
static void write_fixture_config(const char *root, int port, const char *app_env, int start_timeout)
{
    char *app = cmt_fixture("fake-app");
    char *python = cmt_fixture("fake-python");
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "{\"backend\": {\"active\": \"ollama\", \"auto_fallback\": false,"
             " \"health_check_interval\": 3600},\n"
             " \"ollama\": {\"base_url\": \"http://127.0.0.1:1\"},\n"
             " \"llamacpp\": {\"python\": \"%s\", \"model_path\": \"./models\"},\n"
             " \"server\": {\"port\": %d},\n"
             " \"manager\": {\"app\": {\"command\": [\"%s\"], \"env\": {%s}},"
             " \"start_timeout\": %d, \"stop_timeout\": 5, \"health_path\": \"/health\"}}\n",
             python, port, app, app_env, start_timeout);
    char *path = cmt_path(root, "config.json");
    cmt_write_file(path, cfg);
    free(path);
    free(app);
    free(python);
}

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

static void copy_binary(const char *dir)
{
    char *exe = cmt_path(dir, "chat-manager");
    const char *argv[] = {"/bin/cp", cmt_env("CM_BINARY"), exe, NULL};
    cmt_result_t r = cmt_run(argv, NULL, 30000);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    free(exe);
}

/* <dir>/chat-manager run from cwd, without --root. */
static cmt_result_t run_by_path(const char *dir, const char *cwd, const char *cmd)
{
    char *exe = cmt_path(dir, "chat-manager");
    const char *argv[] = {exe, cmd, NULL};
    cmt_result_t r = cmt_run_in(cwd, argv, quiet_env, CMD_MS);
    free(exe);
    return r;
}

static void assert_status_root(const cmt_result_t *r, const char *root)
{
    char want[4200];
    snprintf(want, sizeof want, "  Root:       %s\n", root);
    if (strstr(r->out, want) == NULL) print_error("status said:\n%s\n", r->out);
    assert_non_null(strstr(r->out, want));
}

/* The executable's directory is the root when it holds the app, from any
 * working directory; otherwise the working directory is. */
static void test_root_is_the_executables_directory(void **state)
{
    (void)state;
    char *checkout = cmt_tempdir(), *elsewhere = cmt_tempdir(), *bare = cmt_tempdir();
    write_fixture_config(checkout, cmt_free_port(), "", 10);
    copy_binary(checkout);
    copy_binary(bare);

    cmt_result_t r = run_by_path(checkout, elsewhere, "status");
    assert_cmt_code(r, 3);
    assert_status_root(&r, checkout);
    cmt_result_free(&r);
    assert_int_equal(dir_entries(elsewhere), 0);

    /* app.py alone is enough too (the old script's checkout). */
    char *cfg = cmt_path(checkout, "config.json");
    unlink(cfg);
    char *script = cmt_path(checkout, "app.py");
    cmt_write_file(script, "print('app')\n");
    r = run_by_path(checkout, elsewhere, "status");
    assert_status_root(&r, checkout);
    cmt_result_free(&r);

    /* A binary in a directory without an app: the working directory. */
    r = run_by_path(bare, elsewhere, "status");
    assert_cmt_code(r, 3);
    assert_status_root(&r, elsewhere);
    cmt_result_free(&r);
    assert_int_equal(dir_entries(elsewhere), 0);
    assert_int_equal(dir_entries(bare), 1); /* only the binary */

    free(cfg);
    free(script);
    cmt_rmtree(checkout);
    cmt_rmtree(elsewhere);
    cmt_rmtree(bare);
    free(checkout);
    free(elsewhere);
    free(bare);
}

/* status, stop, force-stop, logs and the backend commands create nothing in
 * a directory that holds no app; start fails there, before creating
 * anything, and says why. */
static void test_no_app_nothing_created(void **state)
{
    (void)state;
    char *empty = cmt_tempdir();
    const char *cmds[][3] = {
        {"status", NULL, NULL},      {"stop", NULL, NULL},
        {"force-stop", NULL, NULL},  {"logs", "--no-follow", NULL},
        {"backend", "status", NULL}, {"backend", "list", NULL},
        {"backend", "health", NULL}, {"backend", "health", "llamacpp"},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        cmt_result_t r = cmt_cm(empty, quiet_env, CMD_MS, cmds[i][0], cmds[i][1], cmds[i][2], NULL);
        if (dir_entries(empty) != 0)
            print_error("'%s %s' created something\n", cmds[i][0], cmds[i][1] ? cmds[i][1] : "");
        assert_int_equal(dir_entries(empty), 0);
        cmt_result_free(&r);
    }
    cmt_result_t r = cmt_cm(empty, quiet_env, CMD_MS, "start", NULL);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "[ERROR] no Chat-O-Llama app in "));
    assert_int_equal(dir_entries(empty), 0);
    cmt_result_free(&r);
    r = cmt_cm(empty, quiet_env, CMD_MS, "restart", NULL);
    assert_cmt_code(r, 1);
    assert_int_equal(dir_entries(empty), 0);
    cmt_result_free(&r);
    cmt_rmtree(empty);
    free(empty);
}

typedef struct running {
    char *root;
    int port;
    pid_t app;
    pid_t supervisor;
    unsigned long long app_start;
} running_t;

static void start_fixture(running_t *in)
{
    in->root = cmt_tempdir();
    in->port = cmt_free_port();
    write_fixture_config(in->root, in->port, "\"FAKE_APP_MODE\": \"instant\"", 10);
    cmt_result_t r = cmt_cm(in->root, quiet_env, CMD_MS, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    cJSON *st = cmi_read_state(in->root);
    assert_non_null(st);
    in->app = (pid_t)cmi_state_int(st, "pid");
    cJSON_Delete(st);
    in->supervisor = cmi_supervisor_pid(in->root);
    assert_true(in->app > 0 && in->supervisor > 0);
    in->app_start = cmi_start_time(in->app);
}

static void assert_still_running(const running_t *in)
{
    assert_true(cmi_pid_alive(in->app));
    assert_int_equal(cmi_start_time(in->app), in->app_start);
    assert_true(cmi_pid_alive(in->supervisor));
    assert_int_equal(cmi_http_status(in->port, "/health", 5000), 200);
}

static void stop_fixture(running_t *in)
{
    cmt_result_t r = cmt_cm(in->root, quiet_env, CMD_MS, "force-stop", NULL);
    cmt_result_free(&r);
    cmt_rmtree(in->root);
    free(in->root);
}

/* `cp -a` of a running checkout: stop, restart and force-stop in the copy
 * (whose process.pid and state.json name the original's app, start time
 * included) leave the original's processes alone. */
static void test_a_copy_cannot_touch_the_original(void **state)
{
    (void)state;
    running_t in;
    start_fixture(&in);
    char *copy = cmt_tempdir();
    char src[4200];
    snprintf(src, sizeof src, "%s/.", in.root);
    const char *cp[] = {"/bin/cp", "-a", src, copy, NULL};
    cmt_result_t r = cmt_run(cp, NULL, 30000);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    char id[17], copy_id[17];
    cmi_instance_id(in.root, id);
    cmi_instance_id(copy, copy_id);
    assert_string_not_equal(id, copy_id);

    const char *cmds[] = {"stop", "restart", "force-stop"};
    for (size_t i = 0; i < 3; i++) {
        r = cmt_cm(copy, quiet_env, CMD_MS, cmds[i], NULL);
        cmt_result_free(&r);
        assert_still_running(&in);
    }
    r = cmt_cm(in.root, quiet_env, CMD_MS, "status", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    r = cmt_cm(copy, quiet_env, CMD_MS, "force-stop", NULL);
    cmt_result_free(&r);
    cmt_rmtree(copy);
    free(copy);
    stop_fixture(&in);
}

static pid_t spawn_foreign(void)
{
    const char *argv[] = {"/bin/sleep", "60", NULL};
    pid_t pid = cmt_spawn(argv, NULL, NULL);
    assert_true(pid > 0);
    /* It must have exec'd, so that its start time and name are final. */
    double end = cmt_now_ms() + 5000;
    char comm[32] = "";
    while (cmt_now_ms() < end) {
        cmi_comm(pid, comm, sizeof comm);
        if (strcmp(comm, "sleep") == 0) break;
        usleep(5000);
    }
    assert_string_equal(comm, "sleep");
    return pid;
}

/* A process.pid naming a foreign process with its true start time and this
 * root's id is not this root's app: stop and force-stop leave it alone and
 * status does not call it running. */
static void test_forged_pid_file(void **state)
{
    (void)state;
    char *root = cmt_tempdir();
    write_fixture_config(root, cmt_free_port(), "", 10);
    pid_t foreign = spawn_foreign();
    char id[17];
    cmi_instance_id(root, id);
    char text[128];
    snprintf(text, sizeof text, "%d\n# start_time=%llu instance=%s\n", (int)foreign,
             cmi_start_time(foreign), id);
    char *pid_file = cmt_path(root, "process.pid");
    const char *cmds[] = {"status", "stop", "force-stop"};
    for (size_t i = 0; i < 3; i++) {
        cmt_write_file(pid_file, text);
        cmt_result_t r = cmt_cm(root, quiet_env, CMD_MS, cmds[i], NULL);
        if (i == 0) assert_int_not_equal(r.code, 0);
        cmt_result_free(&r);
        assert_true(cmi_pid_alive(foreign));
    }
    cmt_kill_group(foreign);
    free(pid_file);
    cmt_rmtree(root);
    free(root);
}

/* With the supervisor gone (killed), a state.json whose pgid names a
 * foreign group: stop stops the app (the verified process, in its own
 * group) and never signals that group. */
static void test_forged_state_group(void **state)
{
    (void)state;
    running_t in;
    start_fixture(&in);
    pid_t foreign = spawn_foreign();
    kill(in.supervisor, SIGKILL);
    assert_true(cmi_wait_dead(in.supervisor, 10000));
    assert_true(cmi_wait_lock_released(in.root, 10000));
    char *state_path = cmt_path(in.root, "run/state.json");
    cJSON *st = cmi_read_state(in.root);
    assert_non_null(st);
    cJSON_ReplaceItemInObject(st, "pgid", cJSON_CreateNumber(foreign));
    char *text = cJSON_Print(st);
    cmt_write_file(state_path, text);
    free(text);
    cJSON_Delete(st);

    cmt_result_t r = cmt_cm(in.root, quiet_env, CMD_MS, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_true(cmi_wait_dead(in.app, 10000));
    assert_true(cmi_pid_alive(foreign));
    cmt_kill_group(foreign);
    free(state_path);
    stop_fixture(&in);
}

/* Not on a terminal, a start that waits says so every 5 s: what it waits
 * for, and how long of start_timeout. */
static void test_start_progress_lines(void **state)
{
    (void)state;
    char *root = cmt_tempdir();
    int port = cmt_free_port();
    write_fixture_config(root, port, "\"FAKE_APP_MODE\": \"slow\", \"FAKE_APP_DELAY_MS\": \"5600\"",
                         30);
    cmt_result_t r = cmt_cm(root, quiet_env, CMD_MS, "start", NULL);
    assert_cmt_code(r, 0);
    /* The line's count of seconds depends on how late the timer fires on a
     * loaded machine; there is at least one line, each complete. */
    char want[256];
    snprintf(want, sizeof want,
             "[INFO] Still waiting for http://127.0.0.1:%d/health to answer 2xx (", port);
    if (strstr(r.out, want) == NULL) print_error("start said:\n%s\n", r.out);
    assert_non_null(strstr(r.out, want));
    assert_true(cmi_count(r.out, "Still waiting") >= 1);
    assert_int_equal(cmi_count(r.out, "Still waiting"), cmi_count(r.out, " s of 30 s)\n"));
    cmt_result_free(&r);
    r = cmt_cm(root, quiet_env, CMD_MS, "force-stop", NULL);
    cmt_result_free(&r);
    cmt_rmtree(root);
    free(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root_is_the_executables_directory),
        cmocka_unit_test(test_no_app_nothing_created),
        cmocka_unit_test(test_a_copy_cannot_touch_the_original),
        cmocka_unit_test(test_forged_pid_file),
        cmocka_unit_test(test_forged_state_group),
        cmocka_unit_test(test_start_progress_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
