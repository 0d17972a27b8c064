/*
 * The supervised lifecycle end to end: the real binary, the fixture app in
 * each of its modes, real ports on loopback.  Every test works in its own
 * temporary root and stops what it started (force-stop on the root, which
 * only ever kills processes carrying that root's marker).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmtest.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct inst {
    char *root;
    int port;
} inst_t;

/* A root whose app is the fixture app in `mode`; `env_json` adds entries to
 * manager.app.env and `manager_json` to the manager section. */
static inst_t *inst_new(const char *mode, const char *env_json, const char *manager_json)
{
    inst_t *in = calloc(1, sizeof *in);
    in->root = cmt_tempdir();
    in->port = cmt_free_port();
    char *app = cmt_fixture("fake-app");
    char *python = cmt_fixture("fake-python");
    /* Defaults for the keys a test does not set itself (JSON objects may not
     * repeat a key: the first one would win). */
    const char *m = manager_json ? manager_json : "";
    char defaults[512] = "";
    if (strstr(m, "\"start_timeout\"") == NULL) strcat(defaults, "\"start_timeout\": 10, ");
    if (strstr(m, "\"stop_timeout\"") == NULL) strcat(defaults, "\"stop_timeout\": 5, ");
    if (strstr(m, "\"restart\"") == NULL)
        strcat(defaults,
               "\"restart\": {\"policy\": \"on-failure\", \"max_restarts\": 5,"
               " \"backoff_initial\": 0.05, \"backoff_max\": 0.2, \"reset_after\": 30}, ");
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "{\n"
             "  \"backend\": {\"active\": \"ollama\", \"auto_fallback\": false,"
             " \"health_check_interval\": 3600},\n"
             "  \"ollama\": {\"base_url\": \"http://127.0.0.1:1\"},\n"
             "  \"llamacpp\": {\"python\": \"%s\", \"model_path\": \"./models\"},\n"
             "  \"server\": {\"port\": %d},\n"
             "  \"manager\": {\n"
             "    \"app\": {\"command\": [\"%s\"], \"env\": {\"FAKE_APP_MODE\": \"%s\"%s%s}},\n"
             "    %s\"health_path\": \"/health\"%s%s\n"
             "  }\n"
             "}\n",
             python, in->port, app, mode, env_json ? ", " : "", env_json ? env_json : "", defaults,
             manager_json ? ", " : "", m);
    char *path = cmt_path(in->root, "config.json");
    cmt_write_file(path, cfg);
    free(path);
    free(app);
    free(python);
    return in;
}

static const char *const quiet_env[] = {"FAKE_PYTHON_LLAMA=missing", NULL};

static cmt_result_t cm_cmd(inst_t *in, const char *a, const char *b)
{
    return cmt_cm(in->root, quiet_env, 60000, a, b, NULL);
}

static cJSON *read_state(inst_t *in)
{
    char *path = cmt_path(in->root, "run/state.json");
    char *text = cmt_read_file(path, NULL);
    free(path);
    if (text == NULL) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

static const char *state_str(cJSON *st, const char *key)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(st, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static int state_int(cJSON *st, const char *key)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(st, key);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* Waits (bounded) until state.json says `want`; returns its app pid. */
static int wait_state(inst_t *in, const char *want, int timeout_ms)
{
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        cJSON *st = read_state(in);
        if (st != NULL && strcmp(state_str(st, "state"), want) == 0) {
            int pid = state_int(st, "pid");
            cJSON_Delete(st);
            return pid;
        }
        cJSON_Delete(st);
        usleep(10000);
    }
    fail_msg("state never became %s", want);
    return -1;
}

static int supervisor_lock_held(inst_t *in)
{
    char *path = cmt_path(in->root, "run/lock");
    int fd = open(path, O_RDONLY);
    free(path);
    if (fd < 0) return 0;
    int held = flock(fd, LOCK_SH | LOCK_NB) != 0;
    close(fd);
    return held;
}

/* The pid the log says the app was started with (the first start). */
static int logged_app_pid(inst_t *in)
{
    char *logs = cmt_path(in->root, "logs");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cat %s/*.log", logs);
    free(logs);
    FILE *p = popen(cmd, "r");
    char line[1024];
    int pid = -1;
    while (p && fgets(line, sizeof line, p)) {
        char *s = strstr(line, "[chat-manager] started ");
        char *q = s ? strstr(s, "(pid ") : NULL;
        if (q && pid < 0) pid = atoi(q + 5);
    }
    if (p) pclose(p);
    return pid;
}

static void inst_free(inst_t *in)
{
    cmt_result_t r = cm_cmd(in, "force-stop", NULL);
    cmt_result_free(&r);
    cmt_rmtree(in->root);
    free(in->root);
    free(in);
}

/* ---- the tests ----------------------------------------------------------- */

static void instant_app_runs_and_stops(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "started successfully"));
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 1000);
    assert_true(cmt_pid_alive(pid));
    assert_int_equal(cmt_wait_port(in->port, 100), 0);

    r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "is running"));
    cmt_result_free(&r);

    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "stopped"));
    cmt_result_free(&r);
    assert_false(cmt_pid_alive(pid));
    assert_false(supervisor_lock_held(in));
    char *pidfile = cmt_path(in->root, "process.pid");
    assert_int_equal(access(pidfile, F_OK), -1);
    free(pidfile);

    r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 3);
    cmt_result_free(&r);
    r = cm_cmd(in, "stop", NULL); /* not running: says so, exit 0 */
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "not running"));
    cmt_result_free(&r);
    inst_free(in);
}

static void slow_start_is_running_only_once_the_port_answers(void **state)
{
    (void)state;
    inst_t *in = inst_new("slow", "\"FAKE_APP_DELAY_MS\": \"700\"", NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    assert_true(r.ms >= 700);
    cmt_result_free(&r);
    cJSON *st = read_state(in);
    assert_string_equal(state_str(st, "state"), "running");
    assert_true(state_int(st, "ready_ms") >= 700);
    cJSON_Delete(st);
    inst_free(in);
}

static void crash_at_start_fails_with_the_log(void **state)
{
    (void)state;
    inst_t *in = inst_new("crash-start", "\"FAKE_APP_EXIT_CODE\": \"3\"", NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "failed to start: exit code 3"));
    assert_non_null(strstr(r.out, "simulated crash"));
    cmt_result_free(&r);
    wait_state(in, "failed", 2000);
    double t0 = cmt_now_ms();
    while (supervisor_lock_held(in) && cmt_now_ms() - t0 < 3000)
        usleep(5000);
    assert_false(supervisor_lock_held(in));
    r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 3);
    cmt_result_free(&r);
    inst_free(in);
}

static void start_timeout_fails_and_kills_the_group(void **state)
{
    (void)state;
    inst_t *in = inst_new("slow", "\"FAKE_APP_DELAY_MS\": \"60000\"", "\"start_timeout\": 1");
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "not ready within"));
    cmt_result_free(&r);
    int pid = logged_app_pid(in);
    assert_true(pid > 1);
    assert_true(cmt_wait_dead(pid, 3000));
    wait_state(in, "failed", 3000);
    /* The supervisor gave up and ends; it leaves no process.pid behind. */
    double t0 = cmt_now_ms();
    while (supervisor_lock_held(in) && cmt_now_ms() - t0 < 5000)
        usleep(5000);
    assert_false(supervisor_lock_held(in));
    char *pidfile = cmt_path(in->root, "process.pid");
    assert_int_not_equal(access(pidfile, F_OK), 0);
    free(pidfile);
    inst_free(in);
}

/* Waits (bounded) until state.json says running with an app other than
 * `old`; returns its pid, or -1 (with the state in the message). */
static int wait_new_running(inst_t *in, int old, int timeout_ms)
{
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        cJSON *st = read_state(in);
        int pid = st ? state_int(st, "pid") : -1;
        int running = st && strcmp(state_str(st, "state"), "running") == 0;
        cJSON_Delete(st);
        if (running && pid > 1 && pid != old) return pid;
        usleep(10000);
    }
    cJSON *st = read_state(in);
    print_error("state.json: %s, pid %d\n", st ? state_str(st, "state") : "(none)",
                st ? state_int(st, "pid") : -1);
    cJSON_Delete(st);
    return -1;
}

/* reset_after: crashes further apart than reset_after are each restarted,
 * even with max_restarts 1; two crashes closer than that are given up on. */
static void crashes_far_apart_are_never_given_up_on(void **state)
{
    (void)state;
    inst_t *in =
        inst_new("instant", NULL,
                 "\"restart\": {\"policy\": \"on-failure\", \"max_restarts\": 1,"
                 " \"backoff_initial\": 0.05, \"backoff_max\": 0.05, \"reset_after\": 0.3}");
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 2000);
    for (int crash = 1; crash <= 3; crash++) {
        /* What is under test is elapsed time: a run longer than reset_after. */
        usleep(450 * 1000);
        assert_int_equal(kill(pid, SIGKILL), 0);
        int next = wait_new_running(in, pid, 10000);
        if (next < 0) fail_msg("crash %d after a stable run was not restarted", crash);
        pid = next;
    }
    cJSON *st = read_state(in);
    assert_int_equal(state_int(st, "restarts"), 1); /* each counted anew */
    cJSON_Delete(st);
    /* A crash right after that restart, well within reset_after, would be
     * one restart more than max_restarts: the supervisor gives up. */
    assert_int_equal(kill(pid, SIGKILL), 0);
    wait_state(in, "failed", 10000);
    st = read_state(in);
    assert_int_equal(state_int(st, "restarts"), 1);
    cJSON_Delete(st);
    inst_free(in);
}

/* While a crashed app waits for its retry, process.pid names no app. */
static void crashed_app_leaves_no_pid_file_while_the_retry_waits(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL,
                          "\"restart\": {\"policy\": \"on-failure\", \"max_restarts\": 5,"
                          " \"backoff_initial\": 30, \"backoff_max\": 30, \"reset_after\": 30}");
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 2000);
    char *pidfile = cmt_path(in->root, "process.pid");
    assert_int_equal(access(pidfile, F_OK), 0);
    /* The first crash restarts at once; the second, in a row, waits. */
    assert_int_equal(kill(pid, SIGKILL), 0);
    pid = wait_new_running(in, pid, 10000);
    assert_true(pid > 1);
    assert_int_equal(kill(pid, SIGKILL), 0);
    wait_state(in, "failed", 5000);
    assert_int_not_equal(access(pidfile, F_OK), 0);
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    free(pidfile);
    inst_free(in);
}

static void sigterm_ignorer_is_killed_after_stop_timeout(void **state)
{
    (void)state;
    inst_t *in = inst_new("ignore-term", NULL, "\"stop_timeout\": 1");
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 1000);
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    assert_true(r.ms >= 1000);
    assert_true(r.ms < 1000 + cmt_bound_ms(4000)); /* KILL at stop_timeout, not later */
    cmt_result_free(&r);
    assert_false(cmt_pid_alive(pid));
    inst_free(in);
}

static void grandchild_dies_with_the_app(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *gc_file = cmt_path(dir, "grandchild.pid");
    char env[1024];
    snprintf(env, sizeof env, "\"FAKE_APP_GRANDCHILD_PIDFILE\": \"%s\"", gc_file);
    inst_t *in = inst_new("grandchild", env, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_int_equal(cmt_wait_file(gc_file, 2000), 0);
    char *text = cmt_read_file(gc_file, NULL);
    int gc = atoi(text);
    free(text);
    assert_true(cmt_pid_alive(gc));
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_false(cmt_pid_alive(gc));
    inst_free(in);
    cmt_rmtree(dir);
    free(dir);
    free(gc_file);
}

/* A crash (the leader killed) takes the rest of its group at once, not
 * after a grace period: leftovers would keep the port and the resources. */
static void crashed_app_leftovers_die_at_once(void **state)
{
    (void)state;
    char *dir = cmt_tempdir();
    char *gc_file = cmt_path(dir, "grandchild.pid");
    char env[1024];
    snprintf(env, sizeof env, "\"FAKE_APP_GRANDCHILD_PIDFILE\": \"%s\"", gc_file);
    inst_t *in = inst_new("grandchild", env, "\"stop_timeout\": 30");
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 2000);
    assert_int_equal(cmt_wait_file(gc_file, 2000), 0);
    char *text = cmt_read_file(gc_file, NULL);
    int gc = atoi(text);
    free(text);
    assert_true(cmt_pid_alive(gc));
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* Well within stop_timeout (30 s), which a stop would grant. */
    assert_true(cmt_wait_dead(gc, (int)cmt_bound_ms(3000)));
    inst_free(in);
    cmt_rmtree(dir);
    free(dir);
    free(gc_file);
}

static void busy_port_names_its_owner_and_leaves_it_alone(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    char *http = cmt_fixture("fake-http");
    char port[16];
    snprintf(port, sizeof port, "%d", in->port);
    char *pf = cmt_path(in->root, "owner.port");
    const char *argv[] = {http, "--port", port, "--port-file", pf, NULL};
    /* The fake server binds 127.0.0.1; the app binds 0.0.0.0: a conflict. */
    pid_t owner = cmt_spawn(argv, NULL, NULL);
    assert_int_equal(cmt_wait_file(pf, 5000), 0);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 1);
    char expect[128];
    snprintf(expect, sizeof expect, "Port %d is already in use by PID %d", in->port, owner);
    if (strstr(r.err, expect) == NULL) fail_msg("expected '%s' in:\n%s", expect, r.err);
    cmt_result_free(&r);
    assert_int_equal(kill(owner, 0), 0);
    r = cm_cmd(in, "force-stop", NULL); /* names it, never kills it */
    assert_cmt_code(r, 0);
    snprintf(expect, sizeof expect, "Port %d is used by PID %d", in->port, owner);
    if (strstr(r.out, expect) == NULL) fail_msg("expected '%s' in:\n%s", expect, r.out);
    cmt_result_free(&r);
    assert_int_equal(kill(owner, 0), 0);
    cmt_kill_group(owner);
    free(pf);
    free(http);
    inst_free(in);
}

static void two_starts_at_once_give_one_app(void **state)
{
    (void)state;
    inst_t *in = inst_new("slow", "\"FAKE_APP_DELAY_MS\": \"300\"", NULL);
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) {
            cmt_result_t r = cm_cmd(in, "start", NULL);
            _exit(r.code < 0 ? 99 : r.code);
        }
    }
    int codes[2];
    for (int i = 0; i < 2; i++) {
        int st;
        assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
        codes[i] = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    assert_int_equal(codes[0] + codes[1], 1); /* one 0, one 1 */
    int pid = wait_state(in, "running", 1000);
    assert_true(cmt_pid_alive(pid));
    inst_free(in);
}

static void supervisor_killed_app_keeps_serving_and_stop_works(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 1000);
    char *spf = cmt_path(in->root, "run/supervisor.pid");
    char *text = cmt_read_file(spf, NULL);
    int sup = atoi(text);
    free(text);
    free(spf);
    assert_true(sup > 1);
    assert_int_equal(kill(sup, SIGKILL), 0);
    assert_true(cmt_wait_dead(sup, 2000));
    assert_true(cmt_pid_alive(pid));
    assert_int_equal(cmt_wait_port(in->port, 500), 0);
    r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "supervisor is gone"));
    cmt_result_free(&r);
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_false(cmt_pid_alive(pid));
    inst_free(in);
}

static void crash_while_running_comes_back_with_a_new_pid(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 1000);
    assert_int_equal(kill(pid, SIGKILL), 0);
    double t0 = cmt_now_ms();
    int new_pid = -1;
    while (cmt_now_ms() - t0 < 5000) {
        cJSON *st = read_state(in);
        if (st && strcmp(state_str(st, "state"), "running") == 0 && state_int(st, "pid") != pid)
            new_pid = state_int(st, "pid");
        int restarts = st ? state_int(st, "restarts") : 0;
        cJSON_Delete(st);
        if (new_pid > 0) {
            assert_int_equal(restarts, 1);
            break;
        }
        usleep(10000);
    }
    assert_true(new_pid > 1);
    assert_true(cmt_pid_alive(new_pid));
    inst_free(in);
}

static void crash_loop_ends_in_failed_after_max_restarts(void **state)
{
    (void)state;
    inst_t *in = inst_new("crash-later", "\"FAKE_APP_DELAY_MS\": \"150\"",
                          "\"restart\": {\"max_restarts\": 2, \"backoff_initial\": 0.05,"
                          " \"backoff_max\": 0.1}");
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    wait_state(in, "failed", 10000);
    double t0 = cmt_now_ms();
    while (supervisor_lock_held(in) && cmt_now_ms() - t0 < 5000)
        usleep(5000);
    assert_false(supervisor_lock_held(in));
    cJSON *st = read_state(in);
    assert_int_equal(state_int(st, "restarts"), 2);
    cJSON_Delete(st);
    r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 3);
    assert_non_null(strstr(r.err, "has failed"));
    cmt_result_free(&r);
    inst_free(in);
}

/* Waits (bounded) until state.json says running with a pid other than
 * `old`; returns it and stores the restart count. */
static int wait_new_running_pid(inst_t *in, int old, int timeout_ms, int *restarts)
{
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        cJSON *st = read_state(in);
        int pid = -1;
        if (st && strcmp(state_str(st, "state"), "running") == 0) pid = state_int(st, "pid");
        if (restarts && st) *restarts = state_int(st, "restarts");
        cJSON_Delete(st);
        if (pid > 1 && pid != old) return pid;
        usleep(5000);
    }
    fail_msg("no new running app within %d ms", timeout_ms);
    return -1;
}

/* The first crash after a stable run restarts at once; a crash in a row waits
 * backoff_initial (60 s here: long enough to tell the two apart without
 * timing anything). */
static void first_crash_restarts_at_once_crashes_in_a_row_back_off(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL,
                          "\"restart\": {\"max_restarts\": 5, \"backoff_initial\": 60,"
                          " \"backoff_max\": 60, \"reset_after\": 3}");
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 1000);
    int restarts = -1;

    /* The first crash since the user's start: at once. */
    assert_int_equal(kill(pid, SIGKILL), 0);
    pid = wait_new_running_pid(in, pid, 10000, &restarts);
    assert_int_equal(restarts, 1);

    /* A run longer than reset_after (3 s) resets the count: at once again. */
    double ran_from = cmt_now_ms();
    while (cmt_now_ms() - ran_from < 3500)
        usleep(50000);
    assert_int_equal(kill(pid, SIGKILL), 0);
    pid = wait_new_running_pid(in, pid, 10000, &restarts);
    assert_int_equal(restarts, 1);

    /* At once again, with no stable run in between: a crash in a row. */
    assert_int_equal(kill(pid, SIGKILL), 0);
    wait_state(in, "failed", 5000);
    cJSON *st = read_state(in);
    assert_non_null(st);
    assert_int_equal(state_int(st, "restarts"), 2);
    cJSON *retry_at = cJSON_GetObjectItemCaseSensitive(st, "retry_at");
    assert_true(cJSON_IsNumber(retry_at));
    assert_true(retry_at->valuedouble > (double)time(NULL) + 30);
    cJSON_Delete(st);
    r = cm_cmd(in, "status", NULL);
    assert_non_null(strstr(r.out, "Next retry: in "));
    cmt_result_free(&r);
    inst_free(in);
}

/* A process of this root from before the supervisor (the marker in its
 * environment, outside the app's group) is reported by status from the
 * supervisor's one look at the machine, and no longer once it is gone. */
static void status_names_a_leftover_from_before_the_supervisor(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    cJSON *st = read_state(in);
    assert_non_null(st);
    char marker[256];
    snprintf(marker, sizeof marker, "CHAT_MANAGER_INSTANCE=%s", state_str(st, "instance"));
    cJSON_Delete(st);
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);

    const char *argv[] = {"/bin/sleep", "60", NULL};
    const char *env[] = {marker, NULL};
    pid_t left = cmt_spawn(argv, env, NULL);
    assert_true(left > 1);
    r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    /* The supervisor looks once, right after ready. */
    double t0 = cmt_now_ms();
    int recorded = 0;
    while (!recorded && cmt_now_ms() - t0 < 5000) {
        st = read_state(in);
        recorded = st != NULL && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(st, "leftovers"));
        if (recorded) {
            cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(st, "leftovers"), 0);
            assert_int_equal(state_int(l, "pid"), left);
        }
        cJSON_Delete(st);
        if (!recorded) usleep(5000);
    }
    assert_true(recorded);
    char want[64];
    snprintf(want, sizeof want, "Orphaned process of this instance: PID %d", (int)left);
    r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, want));
    cmt_result_free(&r);

    cmt_kill_group(left);
    r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 0);
    assert_null(strstr(r.out, "Orphaned process"));
    cmt_result_free(&r);
    inst_free(in);
}

/* Stop is event-driven: with an app that exits at once on SIGTERM it is
 * over long before stop_timeout (5 s here), which a stop that did not see
 * the exit would wait for; bench/ measures the real gap. */
static void stop_returns_promptly(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    assert_true(r.ms < 5000);
    cmt_result_free(&r);
    inst_free(in);
}

static void restart_gives_a_new_pid_on_the_same_port(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    char port[16];
    snprintf(port, sizeof port, "%d", in->port);
    cmt_result_t r = cm_cmd(in, "start", port);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = wait_state(in, "running", 1000);
    r = cm_cmd(in, "restart", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    cJSON *st = read_state(in);
    assert_string_equal(state_str(st, "state"), "running");
    assert_int_not_equal(state_int(st, "pid"), pid);
    assert_int_equal(state_int(st, "port"), in->port);
    cJSON_Delete(st);
    inst_free(in);
}

static void status_json_and_logs(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    r = cmt_cm(in->root, quiet_env, 30000, "status", "--json", NULL);
    assert_cmt_code(r, 0);
    cJSON *j = cJSON_Parse(r.out);
    assert_non_null(j);
    assert_string_equal(state_str(j, "state"), "running");
    assert_int_equal(state_int(j, "port"), in->port);
    cJSON_Delete(j);
    cmt_result_free(&r);
    r = cmt_cm(in->root, quiet_env, 30000, "logs", "-n", "20", "--no-follow", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "starting -> running"));
    cmt_result_free(&r);
    r = cmt_cm(in->root, quiet_env, 30000, "logs", "-n", "x", NULL);
    assert_cmt_code(r, 2);
    cmt_result_free(&r);
    inst_free(in);
}

static void bad_ports_are_usage_errors(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    const char *bad[] = {"0", "-1", "65536", "1e9", "abc", "", NULL};
    for (int i = 0; bad[i]; i++) {
        cmt_result_t r = cm_cmd(in, "start", bad[i]);
        if (r.code != 2) fail_msg("start '%s' exited %d:\n%s", bad[i], r.code, r.err);
        cmt_result_free(&r);
    }
    inst_free(in);
}

/* A pid file naming a dead process is removed with a warning; one naming a
 * live process that is not ours (PID reuse) is never signalled. */
static void stale_and_foreign_pid_files(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    char *pidfile = cmt_path(in->root, "process.pid");
    const char *sleep_argv[] = {"/bin/sleep", "30", NULL};
    pid_t dead = cmt_spawn(sleep_argv, NULL, NULL);
    cmt_kill_group(dead);
    char text[64];
    snprintf(text, sizeof text, "%d\n", dead);
    cmt_write_file(pidfile, text);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "Removing stale PID file"));
    cmt_result_free(&r);
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);

    /* The old script's format (no start time) naming a foreign process:
     * left alone, and said so (stop could not stop the app it names). */
    pid_t foreign = cmt_spawn(sleep_argv, NULL, NULL);
    snprintf(text, sizeof text, "%d\n", foreign);
    cmt_write_file(pidfile, text);
    r = cm_cmd(in, "stop", NULL);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "left alone"));
    cmt_result_free(&r);
    r = cm_cmd(in, "force-stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_true(cmt_pid_alive(foreign));
    cmt_kill_group(foreign);
    free(pidfile);
    inst_free(in);
}

/* process.pid naming a zombie (exited, not yet reaped by its parent) with
 * its real start time: it is not running, and nothing waits on it. */
static void zombie_in_pid_file_is_not_running(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    pid_t zombie = fork();
    assert_true(zombie >= 0);
    if (zombie == 0) _exit(0);
    double t0 = cmt_now_ms();
    while (cmi_proc_state(zombie) != 'Z' && cmt_now_ms() - t0 < 5000)
        usleep(1000);
    assert_int_equal(cmi_proc_state(zombie), 'Z');
    char *pidfile = cmt_path(in->root, "process.pid");
    char text[128];
    snprintf(text, sizeof text, "%d\n# start_time=%llu\n", (int)zombie, cmi_start_time(zombie));
    cmt_write_file(pidfile, text);
    cmt_result_t r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 1); /* dead, but the pid file exists */
    assert_null(strstr(r.out, "is running"));
    cmt_result_free(&r);
    assert_int_equal(cmt_wait_child(zombie, 5000), 0); /* reaped: exit 0 */
    free(pidfile);
    inst_free(in);
}

/* process.pid naming one of this root's own (marked) processes, but with
 * another start time: the PID was reused, it is not the app. */
static void reused_pid_of_a_marked_process_is_not_the_app(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    char id[17], marker[64];
    cmi_instance_id(in->root, id);
    snprintf(marker, sizeof marker, "CHAT_MANAGER_INSTANCE=%s", id);
    const char *sleep_argv[] = {"/bin/sleep", "60", NULL};
    const char *marked_env[] = {marker, NULL};
    pid_t marked = cmt_spawn(sleep_argv, marked_env, NULL);
    assert_int_equal(cmt_wait_exec(marked, "/bin/sleep", 5000), 0);
    assert_true(cmi_has_marker(marked, id));
    char *pidfile = cmt_path(in->root, "process.pid");
    char text[128];
    snprintf(text, sizeof text, "%d\n# start_time=%llu\n", (int)marked, cmi_start_time(marked) + 1);
    cmt_write_file(pidfile, text);
    cmt_result_t r = cm_cmd(in, "status", NULL);
    assert_cmt_code(r, 1); /* dead, but the pid file exists */
    assert_null(strstr(r.out, "is running"));
    cmt_result_free(&r);
    cmt_kill_group(marked);
    free(pidfile);
    inst_free(in);
}

/* logs follows until Ctrl+C, which ends it with exit 0. */
static void logs_follow_ends_on_ctrl_c(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    cmt_result_t r = cm_cmd(in, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    char *out = cmt_path(in->root, "logs.out");
    const char *argv[] = {cmt_env("CM_BINARY"), "--root", in->root, "logs", NULL};
    pid_t pid = cmt_spawn(argv, quiet_env, out);
    assert_int_equal(cmt_wait_file(out, 5000), 0);
    /* It follows once it watches the log (after reading where it ends). */
    assert_int_equal(cmt_wait_fd_to(pid, "anon_inode:inotify", 5000), 0);
    r = cm_cmd(in, "stop", NULL); /* new lines arrive while following */
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    double t0 = cmt_now_ms();
    char *text = NULL;
    while (cmt_now_ms() - t0 < 5000) {
        free(text);
        text = cmt_read_file(out, NULL);
        if (text && strstr(text, "stopping -> stopped")) break;
        usleep(10000);
    }
    assert_non_null(strstr(text, "stopping -> stopped"));
    free(text);
    kill(pid, SIGINT);
    int st = cmt_wait_child(pid, 5000);
    assert_true(st != -1 && WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    free(out);
    inst_free(in);
}

static void run_in_the_foreground(void **state)
{
    (void)state;
    inst_t *in = inst_new("instant", NULL, NULL);
    char *out = cmt_path(in->root, "run.out");
    const char *argv[] = {cmt_env("CM_BINARY"), "--root", in->root, "run", NULL};
    pid_t pid = cmt_spawn(argv, quiet_env, out);
    assert_int_equal(cmt_wait_port(in->port, 10000), 0);
    int app = wait_state(in, "running", 2000);
    kill(pid, SIGTERM);
    int st = cmt_wait_child(pid, 10000);
    assert_true(st != -1 && WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_false(cmt_pid_alive(app));
    char *text = cmt_read_file(out, NULL);
    assert_non_null(strstr(text, "fake-app listening"));
    free(text);
    free(out);
    inst_free(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(instant_app_runs_and_stops),
        cmocka_unit_test(slow_start_is_running_only_once_the_port_answers),
        cmocka_unit_test(crash_at_start_fails_with_the_log),
        cmocka_unit_test(start_timeout_fails_and_kills_the_group),
        cmocka_unit_test(sigterm_ignorer_is_killed_after_stop_timeout),
        cmocka_unit_test(grandchild_dies_with_the_app),
        cmocka_unit_test(crashed_app_leftovers_die_at_once),
        cmocka_unit_test(crashes_far_apart_are_never_given_up_on),
        cmocka_unit_test(crashed_app_leaves_no_pid_file_while_the_retry_waits),
        cmocka_unit_test(busy_port_names_its_owner_and_leaves_it_alone),
        cmocka_unit_test(two_starts_at_once_give_one_app),
        cmocka_unit_test(supervisor_killed_app_keeps_serving_and_stop_works),
        cmocka_unit_test(crash_while_running_comes_back_with_a_new_pid),
        cmocka_unit_test(crash_loop_ends_in_failed_after_max_restarts),
        cmocka_unit_test(first_crash_restarts_at_once_crashes_in_a_row_back_off),
        cmocka_unit_test(status_names_a_leftover_from_before_the_supervisor),
        cmocka_unit_test(stop_returns_promptly),
        cmocka_unit_test(restart_gives_a_new_pid_on_the_same_port),
        cmocka_unit_test(status_json_and_logs),
        cmocka_unit_test(bad_ports_are_usage_errors),
        cmocka_unit_test(stale_and_foreign_pid_files),
        cmocka_unit_test(zombie_in_pid_file_is_not_running),
        cmocka_unit_test(reused_pid_of_a_marked_process_is_not_the_app),
        cmocka_unit_test(logs_follow_ends_on_ctrl_c),
        cmocka_unit_test(run_in_the_foreground),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
