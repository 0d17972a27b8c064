/*
 * The supervisor's own behaviour with real processes: signals (HUP restarts
 * the app, USR1 checks the backends now), the backend health loop and its
 * fallback switch, log retention, and force-stop's reach (marked processes
 * only, never a foreign one).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmtest.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct world {
    char *root;
    int port;
    pid_t ollama; /* the fake Ollama's process group, 0 when not running */
    int ollama_port;
} world_t;

static const char *const env_llama_ok[] = {"FAKE_PYTHON_LLAMA=present", NULL};

static void start_ollama(world_t *w)
{
    char *http = cmt_fixture("fake-http");
    char *pf = cmt_path(w->root, "ollama.port");
    unlink(pf);
    char port[16];
    snprintf(port, sizeof port, "%d", w->ollama_port);
    const char *argv[] = {http, "--port", port, "--mode", "ollama", "--port-file", pf, NULL};
    w->ollama = cmt_spawn(argv, NULL, NULL);
    assert_int_equal(cmt_wait_file(pf, 5000), 0);
    free(pf);
    free(http);
}

/* The world of the running test: freed by its teardown when an assertion
 * ended the test before world_free (else its supervisor and app would
 * outlive the suite). */
static world_t *live_world;

/* A root with the fixture app, a healthy fake Ollama (active) and a healthy
 * llama.cpp (fake interpreter + one valid GGUF model). */
static world_t *world_new(const char *interval, const char *extra_manager)
{
    world_t *w = calloc(1, sizeof *w);
    w->root = cmt_tempdir();
    w->port = cmt_free_port();
    w->ollama_port = cmt_free_port();
    start_ollama(w);
    char *models = cmt_path(w->root, "models");
    mkdir(models, 0755);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp %s/gguf/valid-v3.gguf %s/", cmt_env("CM_FIXTURES"), models);
    assert_int_equal(system(cmd), 0);
    free(models);
    char *app = cmt_fixture("fake-app");
    char *python = cmt_fixture("fake-python");
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "{\n"
             "  \"backend\": {\n"
             "    \"active\": \"ollama\",\n"
             "    \"auto_fallback\": true,\n"
             "    \"health_check_interval\": %s\n"
             "  },\n"
             "  \"ollama\": {\n"
             "    \"base_url\": \"http://127.0.0.1:%d\"\n"
             "  },\n"
             "  \"llamacpp\": {\n"
             "    \"model_path\": \"./models\",\n"
             "    \"python\": \"%s\"\n"
             "  },\n"
             "  \"server\": {\n"
             "    \"port\": %d\n"
             "  },\n"
             "  \"manager\": {\n"
             "    \"app\": {\n"
             "      \"command\": [\n"
             "        \"%s\"\n"
             "      ]\n"
             "    },\n"
             "    \"health_path\": \"/health\",\n"
             "    \"health_timeout\": 1,\n"
             "    \"fallback_after\": 2%s\n"
             "  }\n"
             "}\n",
             interval, w->ollama_port, python, w->port, app, extra_manager ? extra_manager : "");
    char *path = cmt_path(w->root, "config.json");
    cmt_write_file(path, cfg);
    free(path);
    free(app);
    free(python);
    live_world = w;
    return w;
}

static void world_free(world_t *w)
{
    live_world = NULL;
    cmt_result_t r = cmt_cm(w->root, NULL, 30000, "force-stop", NULL);
    cmt_result_free(&r);
    if (w->ollama > 0) cmt_kill_group(w->ollama);
    cmt_rmtree(w->root);
    free(w->root);
    free(w);
}

static int free_live_world(void **state)
{
    (void)state;
    if (live_world != NULL) world_free(live_world);
    return 0;
}

/* GET /health from the app; returns the body (malloc'd) or NULL. */
static char *app_health(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return NULL;
    }
    const char *req = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if (write(fd, req, strlen(req)) < 0) {
        close(fd);
        return NULL;
    }
    char *buf = calloc(1, 8192);
    size_t n = 0;
    ssize_t got;
    while (n < 8191 && (got = read(fd, buf + n, 8191 - n)) > 0)
        n += (size_t)got;
    close(fd);
    return buf;
}

static int app_backend_is(int port, const char *backend)
{
    char *body = app_health(port);
    char want[64];
    snprintf(want, sizeof want, "\"backend\":\"%s\"", backend);
    int ok = body != NULL && strstr(body, want) != NULL;
    free(body);
    return ok;
}

/* Waits for the app to serve with backend; when it does not, prints the
 * end of the root's logs (the supervisor's account of its checks). */
static int wait_backend_in(const char *root, int port, const char *backend, int timeout_ms)
{
    double t0 = cmt_now_ms();
    while (cmt_now_ms() - t0 < timeout_ms) {
        if (app_backend_is(port, backend)) return 0;
        usleep(20000);
    }
    if (root != NULL) {
        char *logs = cmi_logs_text(root);
        size_t n = logs != NULL ? strlen(logs) : 0;
        cmt_print_long("the app does not serve with %s after %d ms; the logs end:\n%s\n", backend,
                       timeout_ms, logs != NULL ? logs + (n > 4000 ? n - 4000 : 0) : "(none)");
        free(logs);
    }
    return -1;
}

static int wait_backend(int port, const char *backend, int timeout_ms)
{
    return wait_backend_in(NULL, port, backend, timeout_ms);
}

static int count_in_logs(const char *root, const char *needle)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cat %s/logs/*.log | grep -c '%s'", root, needle);
    FILE *p = popen(cmd, "r");
    int n = 0;
    if (p) {
        if (fscanf(p, "%d", &n) != 1) n = 0;
        pclose(p);
    }
    return n;
}

static int read_int_file(const char *root, const char *rel)
{
    char *path = cmt_path(root, rel);
    char *text = cmt_read_file(path, NULL);
    free(path);
    int v = text ? atoi(text) : -1;
    free(text);
    return v;
}

/* The number at `key` of the JSON file root/rel, or -1. */
static double json_number_in(const char *root, const char *rel, const char *key)
{
    char *path = cmt_path(root, rel);
    char *text = cmt_read_file(path, NULL);
    free(path);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    cJSON *n = cJSON_GetObjectItemCaseSensitive(j, key);
    double v = cJSON_IsNumber(n) ? n->valuedouble : -1;
    cJSON_Delete(j);
    return v;
}

/* When the last backend check ran (run/backends.json), or -1. */
static double last_check_at(const char *root)
{
    return json_number_in(root, "run/backends.json", "checked_at");
}

/* Waits (bounded) until the supervisor has checked the backends `n` more
 * times; returns 0 then. */
static int wait_more_checks(const char *root, int n, int timeout_ms)
{
    double t0 = cmt_now_ms(), seen = last_check_at(root);
    while (n > 0 && cmt_now_ms() - t0 < timeout_ms) {
        double at = last_check_at(root);
        if (at != seen) {
            seen = at;
            n--;
        }
        usleep(10000);
    }
    return n > 0 ? -1 : 0;
}

static int state_pid(const char *root)
{
    return (int)json_number_in(root, "run/state.json", "pid");
}

/* Acceptance of the backends issue: with the supervisor running, stopping
 * the fake Ollama while a healthy llama.cpp is available switches the active
 * backend and restarts the app, which then reports the new backend; exactly
 * once. */
static void dead_ollama_falls_back_to_llamacpp_once(void **state)
{
    (void)state;
    world_t *w = world_new("0.2", NULL);
    char *cfg_path = cmt_path(w->root, "config.json");
    char *before = cmt_read_file(cfg_path, NULL);
    cmt_result_t r = cmt_cm(w->root, env_llama_ok, 30000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_true(app_backend_is(w->port, "ollama"));
    int pid_before = state_pid(w->root);

    cmt_kill_group(w->ollama);
    w->ollama = 0;
    assert_int_equal(wait_backend(w->port, "llamacpp", 15000), 0);
    /* Several more health checks: no second switch, no flapping. */
    assert_int_equal(wait_more_checks(w->root, 3, 15000), 0);
    /* The fixture app has no switch endpoint: it is restarted once with the
     * serving backend in run/app-config.json. */
    assert_int_equal(count_in_logs(w->root, "the app cannot switch live"), 1);
    assert_int_equal(count_in_logs(w->root, "backend switched from .ollama. to .llamacpp. by a restart"), 1);
    assert_true(app_backend_is(w->port, "llamacpp"));
    assert_int_not_equal(state_pid(w->root), pid_before);

    /* A fallback is runtime state: config.json is byte for byte the same,
     * state.json names the serving backend and why. */
    char *after = cmt_read_file(cfg_path, NULL);
    assert_string_equal(after, before);
    free(after);
    char *state_path = cmt_path(w->root, "run/state.json");
    char *st = cmt_read_file(state_path, NULL);
    assert_non_null(strstr(st, "\"serving\": \"llamacpp\""));
    assert_non_null(strstr(st, "\"serving_reason\": \"active backend 'ollama' failed"));
    assert_non_null(strstr(st, "\"backend\": \"ollama\""));
    free(st);
    free(state_path);
    free(before);
    free(cfg_path);
    world_free(w);
}

/* backend switch with an app that has no switch endpoint (the fixture app
 * answers its path with plain text): config.json is written, the app is
 * left alone and told to restart; with --restart it is restarted. */
static void switch_without_endpoint_needs_a_restart(void **state)
{
    (void)state;
    world_t *w = world_new("3600", NULL);
    cmt_result_t r = cmt_cm(w->root, env_llama_ok, 30000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = state_pid(w->root);
    r = cmt_cm(w->root, env_llama_ok, 30000, "backend", "switch", "llamacpp", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "the app has no switch endpoint"));
    assert_non_null(strstr(r.out, "Restart the application to apply"));
    cmt_result_free(&r);
    assert_int_equal(state_pid(w->root), pid); /* no restart */

    r = cmt_cm(w->root, env_llama_ok, 60000, "backend", "switch", "ollama", "--restart", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "the app has no switch endpoint"));
    assert_non_null(strstr(r.out, "restarting it"));
    cmt_result_free(&r);
    assert_int_equal(wait_backend(w->port, "ollama", 15000), 0);
    assert_int_not_equal(state_pid(w->root), pid);
    world_free(w);
}

/* USR1 checks the backends at once: with an hour-long interval, two USR1
 * (fallback_after = 2) are what makes it switch. */
static void usr1_checks_backends_now(void **state)
{
    (void)state;
    world_t *w = world_new("3600", NULL);
    cmt_result_t r = cmt_cm(w->root, env_llama_ok, 30000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int sup = read_int_file(w->root, "run/supervisor.pid");
    assert_true(sup > 1);
    cmt_kill_group(w->ollama);
    w->ollama = 0;
    assert_int_equal(kill(sup, SIGUSR1), 0);
    double t0 = cmt_now_ms();
    while (count_in_logs(w->root, "unhealthy (1 in a row)") < 1 && cmt_now_ms() - t0 < 5000)
        usleep(10000);
    assert_true(app_backend_is(w->port, "ollama")); /* one failure: hysteresis keeps it */
    assert_int_equal(kill(sup, SIGUSR1), 0);
    assert_int_equal(wait_backend_in(w->root, w->port, "llamacpp", 10000), 0);
    world_free(w);
}

/* HUP restarts the app under the same supervisor. */
static void hup_restarts_the_app(void **state)
{
    (void)state;
    world_t *w = world_new("3600", NULL);
    cmt_result_t r = cmt_cm(w->root, env_llama_ok, 30000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int sup = read_int_file(w->root, "run/supervisor.pid");
    int pid = state_pid(w->root);
    assert_int_equal(kill(sup, SIGHUP), 0);
    double t0 = cmt_now_ms();
    int new_pid = pid;
    while (cmt_now_ms() - t0 < 20000) {
        new_pid = state_pid(w->root);
        if (new_pid > 1 && new_pid != pid && app_backend_is(w->port, "ollama")) break;
        usleep(10000);
    }
    if (new_pid == pid) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "cat %s/logs/*.log %s/run/state.json >&2", w->root, w->root);
        if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
        fail_msg("the app was not restarted by SIGHUP");
    }
    assert_int_equal(read_int_file(w->root, "run/supervisor.pid"), sup);
    assert_true(cmt_wait_dead(pid, 5000));
    world_free(w);
}

/* A relative CONFIG_FILE means the file relative to where the command was
 * given, to the command and to the supervisor it starts (which runs in
 * another directory) alike: the app is the one that file describes. */
static void relative_config_file_is_the_same_file_for_the_supervisor(void **state)
{
    (void)state;
    world_t *w = world_new("3600", NULL);
    char *config = cmt_path(w->root, "config.json");
    char name[64], cwd[4096];
    snprintf(name, sizeof name, "cm-relative-config-%d.json", (int)getpid());
    assert_non_null(getcwd(cwd, sizeof cwd));
    char *moved = cmt_path(cwd, name);
    assert_int_equal(rename(config, moved), 0);
    char env_config[128];
    snprintf(env_config, sizeof env_config, "CONFIG_FILE=%s", name);
    const char *const env[] = {env_config, "FAKE_PYTHON_LLAMA=present", NULL};
    cmt_result_t r = cmt_cm(w->root, env, 30000, "start", NULL);
    int started = r.code;
    if (started != 0) fprintf(stderr, "%s%s", r.out, r.err);
    cmt_result_free(&r);
    char *body = started == 0 ? app_health(w->port) : NULL;
    r = cmt_cm(w->root, env, 30000, "stop", NULL);
    cmt_result_free(&r);
    assert_int_equal(rename(moved, config), 0); /* out of the build tree again */
    free(moved);
    free(config);
    assert_int_equal(started, 0);
    assert_non_null(body);
    free(body);
    world_free(w);
}

/* Only the newest manager.log_keep session logs are kept. */
static void old_session_logs_are_pruned(void **state)
{
    (void)state;
    world_t *w = world_new("3600", ", \"log_keep\": 3");
    char *logs = cmt_path(w->root, "logs");
    mkdir(logs, 0755);
    const char *old[] = {"chat-o-llama_20240101_000000.log", "chat-o-llama_20240102_000000.log",
                         "chat-o-llama_20240103_000000.log", "chat-o-llama_20240104_000000.log",
                         NULL};
    for (int i = 0; old[i]; i++) {
        char *p = cmt_path(logs, old[i]);
        cmt_write_file(p, "old\n");
        free(p);
    }
    char *keep = cmt_path(logs, "notes.txt"); /* not a session log: never touched */
    cmt_write_file(keep, "mine\n");
    cmt_result_t r = cmt_cm(w->root, env_llama_ok, 30000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int count = 0;
    for (int i = 0; old[i]; i++) {
        char *p = cmt_path(logs, old[i]);
        count += access(p, F_OK) == 0;
        free(p);
    }
    assert_int_equal(count, 2); /* the two newest old ones + the new one = 3 */
    assert_int_equal(access(keep, F_OK), 0);
    free(keep);
    free(logs);
    world_free(w);
}

/* force-stop kills what carries this root's marker (even outside the app's
 * group) and names, but never touches, a foreign listener on the port. */
static void force_stop_kills_only_marked_processes(void **state)
{
    (void)state;
    world_t *w = world_new("3600", NULL);
    cmt_result_t r = cmt_cm(w->root, env_llama_ok, 30000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int app = state_pid(w->root);
    char *state_path = cmt_path(w->root, "run/state.json");
    char *text = cmt_read_file(state_path, NULL);
    cJSON *j = cJSON_Parse(text);
    char marker[128];
    snprintf(marker, sizeof marker, "CHAT_MANAGER_INSTANCE=%s",
             cJSON_GetObjectItemCaseSensitive(j, "instance")->valuestring);
    cJSON_Delete(j);
    free(text);
    free(state_path);
    /* A marked process in its own group (as if it escaped the app's group)
     * and an unmarked one: only the first may die. */
    const char *sleep_argv[] = {"/bin/sleep", "60", NULL};
    const char *marked_env[] = {marker, NULL};
    pid_t marked = cmt_spawn(sleep_argv, marked_env, NULL);
    pid_t foreign = cmt_spawn(sleep_argv, NULL, NULL);
    assert_int_equal(cmt_wait_exec(marked, "/bin/sleep", 5000), 0);
    assert_int_equal(cmt_wait_exec(foreign, "/bin/sleep", 5000), 0);
    r = cmt_cm(w->root, NULL, 30000, "force-stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int st = cmt_wait_child(marked, 5000);
    assert_true(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_int_equal(kill(foreign, 0), 0);
    assert_true(cmt_wait_dead(app, 5000));
    cmt_kill_group(foreign);
    world_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(dead_ollama_falls_back_to_llamacpp_once, free_live_world),
        cmocka_unit_test_teardown(usr1_checks_backends_now, free_live_world),
        cmocka_unit_test_teardown(switch_without_endpoint_needs_a_restart, free_live_world),
        cmocka_unit_test_teardown(hup_restarts_the_app, free_live_world),
        cmocka_unit_test_teardown(old_session_logs_are_pruned, free_live_world),
        cmocka_unit_test_teardown(force_stop_kills_only_marked_processes, free_live_world),
        cmocka_unit_test_teardown(relative_config_file_is_the_same_file_for_the_supervisor, free_live_world),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
