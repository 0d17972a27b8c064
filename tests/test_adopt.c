/*
 * The app started by the old chat-manager.sh, still running after an
 * upgrade: process.pid holds its PID and no marker.  It is adopted when
 * provably this checkout's (working directory, command line): status shows
 * it, stop / restart / force-stop act on it.  Anything less proven is left
 * alone with the pid file.  The old script's way of starting is copied
 * exactly: a background `nohup bash -c "cd ROOT; PORT=N python3 app.py"`
 * from a script, so the PID is a shell that does not lead its group and the
 * app is its child.  Runs against the fixture app and the real Chat-O-Llama
 * (CM_REAL_APP, see cmreal.h).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmreal.h"
#include "cmtest.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct legacy {
    char *root;
    int port;
    pid_t group; /* the process group the old-style start ran in (ours to kill) */
    pid_t pid;   /* what process.pid says: the `bash -c` wrapper */
    pid_t app;   /* its child, the app itself */
} legacy_t;

/* Starts `command` the way chat-manager.sh does, from directory `dir`
 * (the script cd's to its own directory: the root), and waits for the port. */
static void legacy_start(legacy_t *l, const char *dir, const char *command, const char *const env[])
{
    char script[2048];
    snprintf(script, sizeof script,
             "nohup bash -c \"\n"
             "        cd '%s'\n"
             "        PORT=%d %s\n"
             "    \" > '%s/legacy.log' 2>&1 &\n"
             "echo $! > '%s/process.pid'\n",
             dir, l->port, command, l->root, l->root);
    const char *argv[] = {"/bin/bash", "-c", script, NULL};
    l->group = cmt_spawn(argv, env, NULL);
    int st = cmt_wait_child(l->group, 5000); /* the script returns at once */
    assert_true(st != -1);
    char *pidfile = cmt_path(l->root, "process.pid");
    assert_int_equal(cmt_wait_file(pidfile, 5000), 0);
    char *text = cmt_read_file(pidfile, NULL);
    l->pid = atoi(text);
    free(text);
    free(pidfile);
    assert_int_equal(cmt_wait_port(l->port, 20000), 0);
    /* The app: the wrapper's child. */
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)l->pid, (int)l->pid);
    char *children = cmt_read_file(path, NULL);
    assert_non_null(children);
    l->app = atoi(children);
    free(children);
    assert_true(l->app > 0);
}

static legacy_t *legacy_new(void)
{
    legacy_t *l = calloc(1, sizeof *l);
    l->root = cmt_tempdir();
    l->port = cmt_free_port();
    cmi_write_config(l->root, l->port, "\"start_timeout\": 20, \"stop_timeout\": 5");
    return l;
}

static char *fake_app_command(void)
{
    return cmt_fixture("fake-app");
}

static const char *const quiet_env[] = {"FAKE_PYTHON_LLAMA=missing", NULL};

static cmt_result_t cm(legacy_t *l, const char *a, const char *b)
{
    return cmt_cm(l->root, quiet_env, 60000, a, b, NULL);
}

static void legacy_free(legacy_t *l)
{
    cmt_result_t r = cm(l, "force-stop", NULL);
    cmt_result_free(&r);
    if (l->group > 0) kill(-l->group, SIGKILL); /* whatever is left of what we started */
    cmt_rmtree(l->root);
    free(l->root);
    free(l);
}

/* status shows the old script's app as running, not supervised; stop
 * stops the wrapper and the app (they do not lead a group of their own). */
static void old_app_is_shown_and_stopped(void **state)
{
    (void)state;
    legacy_t *l = legacy_new();
    char *app = fake_app_command();
    legacy_start(l, l->root, app, NULL);
    free(app);
    assert_true(getpgid(l->pid) != l->pid);

    cmt_result_t r = cm(l, "status", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "started outside chat-manager, not supervised"));
    char want[64];
    snprintf(want, sizeof want, "PID:        %d", (int)l->pid);
    assert_non_null(strstr(r.out, want));
    cmt_result_free(&r);

    r = cm(l, "stop", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "Chat-O-Llama stopped"));
    cmt_result_free(&r);
    assert_true(cmi_wait_dead(l->pid, 2000));
    assert_true(cmi_wait_dead(l->app, 2000));
    char *pidfile = cmt_path(l->root, "process.pid");
    assert_false(access(pidfile, F_OK) == 0);
    free(pidfile);
    r = cm(l, "status", NULL);
    assert_cmt_code(r, 3);
    cmt_result_free(&r);
    legacy_free(l);
}

/* restart stops the old app and starts it supervised; force-stop kills an
 * adopted app at once. */
static void old_app_is_restarted_supervised_or_force_stopped(void **state)
{
    (void)state;
    legacy_t *l = legacy_new();
    char *app = fake_app_command();
    legacy_start(l, l->root, app, NULL);
    cmt_result_t r = cm(l, "restart", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "started successfully"));
    cmt_result_free(&r);
    assert_false(cmt_pid_alive(l->pid));
    assert_false(cmt_pid_alive(l->app));
    assert_true(cmi_lock_held(l->root));
    r = cm(l, "status", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "Supervisor:"));
    cmt_result_free(&r);
    r = cm(l, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);

    legacy_start(l, l->root, app, NULL);
    free(app);
    r = cm(l, "force-stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_true(cmi_wait_dead(l->pid, 2000));
    assert_true(cmi_wait_dead(l->app, 2000));
    legacy_free(l);
}

/* force-stop with a broken config.json still finds the old script's app
 * (proven by the default command, `python3 app.py` in the root) and kills
 * it, instead of forgetting it and removing its pid file. */
static void old_app_force_stopped_with_a_broken_config(void **state)
{
    (void)state;
    legacy_t *l = legacy_new();
    char *script = cmt_path(l->root, "app.py");
    cmt_write_file(script,
                   "import os, socket, time\n"
                   "s = socket.socket()\n"
                   "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                   "s.bind(('127.0.0.1', int(os.environ['PORT'])))\n"
                   "s.listen(8)\n"
                   "time.sleep(3600)\n");
    free(script);
    legacy_start(l, l->root, "python3 app.py", NULL);
    char *config = cmt_path(l->root, "config.json");
    cmt_write_file(config, "{ \"server\": ");
    free(config);
    cmt_result_t r = cm(l, "force-stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_true(cmi_wait_dead(l->pid, 2000));
    assert_true(cmi_wait_dead(l->app, 2000));
    legacy_free(l);
}

/* A live PID that is not provably the app is never signalled, never
 * reported as "not running", and its pid file is kept: another working
 * directory, or the root's directory with another command line. */
static void unproven_processes_are_left_alone(void **state)
{
    (void)state;
    legacy_t *l = legacy_new();
    char *other = cmt_tempdir();
    char *app = fake_app_command();
    legacy_start(l, other, app, NULL); /* the app, but run in another directory */
    free(app);

    cmt_result_t r = cm(l, "status", NULL);
    assert_cmt_code(r, 4);
    assert_non_null(strstr(r.out, "not provably this checkout's app"));
    assert_non_null(strstr(r.out, "working directory is"));
    assert_null(strstr(r.out, "not running"));
    cmt_result_free(&r);
    const char *cmds[] = {"stop", "restart", "start", "force-stop"};
    for (size_t i = 0; i < 4; i++) {
        r = cm(l, cmds[i], NULL);
        if (strcmp(cmds[i], "force-stop") != 0) assert_cmt_code(r, 1);
        assert_non_null(strstr(r.err, "left alone"));
        cmt_result_free(&r);
        assert_true(cmt_pid_alive(l->pid));
        assert_true(cmt_pid_alive(l->app));
    }
    char *pidfile = cmt_path(l->root, "process.pid");
    assert_true(access(pidfile, F_OK) == 0);
    kill(-l->group, SIGKILL);
    cmi_wait_dead(l->pid, 2000);

    /* The root as working directory, but not the app's command line. */
    char server[128];
    snprintf(server, sizeof server, "/usr/bin/python3 -m http.server --bind 127.0.0.1 %d", l->port);
    legacy_start(l, l->root, server, NULL);
    r = cm(l, "stop", NULL);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "does not run"));
    cmt_result_free(&r);
    assert_true(cmt_pid_alive(l->app));
    assert_true(access(pidfile, F_OK) == 0);
    free(pidfile);
    cmt_rmtree(other);
    free(other);
    legacy_free(l);
}

/* The real Chat-O-Llama started by the old script's command line (with its
 * packages on the system's python3), adopted, then restarted under
 * supervision; the binary is called by its path from /, as a drop-in. */
static void real_app_started_by_the_old_script(void **state)
{
    (void)state;
    legacy_t *l = calloc(1, sizeof *l);
    l->port = cmt_free_port();
    l->root = cmr_copy_app(l->port);
    /* Debian's python3 on PATH (cmr_env also clears CONFIG_FILE for the
     * manager, which the app would take for a config file named ""). */
    const char *const env[] = {"PATH=/usr/bin:/bin", NULL};
    legacy_start(l, l->root, "python3 app.py", env);

    cmt_result_t r = cmr_cm(l->root, "/", 60000, "status", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "started outside chat-manager"));
    cmt_result_free(&r);
    r = cmr_cm(l->root, "/", 60000, "restart", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_false(cmt_pid_alive(l->pid));
    assert_false(cmt_pid_alive(l->app));
    assert_int_equal(cmi_http_status(l->port, "/api/backend/status", 5000), 200);
    r = cmr_cm(l->root, "/", 60000, "status", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "Supervisor:"));
    cmt_result_free(&r);
    r = cmr_cm(l->root, "/", 60000, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    if (l->group > 0) kill(-l->group, SIGKILL);
    cmr_remove(l->root);
    free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(old_app_is_shown_and_stopped),
        cmocka_unit_test(old_app_is_restarted_supervised_or_force_stopped),
        cmocka_unit_test(old_app_force_stopped_with_a_broken_config),
        cmocka_unit_test(unproven_processes_are_left_alone),
        cmocka_unit_test(real_app_started_by_the_old_script),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
