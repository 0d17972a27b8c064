/*
 * Backends through the running app, end to end against the real Chat-O-Llama
 * (a copy of $CM_REAL_APP in a temporary root, run by /usr/bin/python3),
 * the fake Ollama that chats (fixtures/fake-http) on loopback and a fake
 * llama_cpp package on PYTHONPATH:
 *
 *   - a chat goes through the app to the fake Ollama;
 *   - the fake Ollama dies: the supervisor's fallback switches the app to
 *     llama.cpp live (the app's /api/backend/status says so) within
 *     fallback_after x health_check_interval, same PID, config.json byte
 *     for byte the same, the conversation still there;
 *   - the fake Ollama comes back: the app fails back to it, same PID;
 *   - status --json shows configured, serving and the explanation;
 *   - backend switch switches the running app live, and --force is needed
 *     for an unhealthy backend.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "cminst.h"
#include "cmtest.h"

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PYTHON "/usr/bin/python3"
#define INTERVAL_S 1 /* backend.health_check_interval */
#define FALLBACK_AFTER 2
#define CHECK_SLACK_MS 15000 /* a check child, the app's answer, a busy machine */

typedef struct world {
    char *tmp;  /* holds the root, the fake package and the fake Ollama's files */
    char *root; /* the copy of the real app */
    char *pylib;
    char *port_file;
    pid_t ollama; /* the fake Ollama's group */
    int ollama_port;
    int app_port;
    char *env_pythonpath;
    const char *env[3];
} world_t;

static void must_run(const char *const argv[])
{
    cmt_result_t r = cmt_run(argv, NULL, 60000);
    if (r.code != 0) fprintf(stderr, "%s failed: %s%s\n", argv[0], r.out, r.err);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
}

static void start_ollama(world_t *w)
{
    unlink(w->port_file);
    char *bin = cmt_fixture("fake-http");
    char *out = cmt_path(w->tmp, "ollama.log");
    char port[16];
    snprintf(port, sizeof port, "%d", w->ollama_port);
    const char *argv[] = {bin,      "--port",      port,         "--mode",
                          "ollama", "--port-file", w->port_file, NULL};
    w->ollama = cmt_spawn(argv, NULL, out);
    assert_int_equal(cmt_wait_file(w->port_file, 10000), 0);
    char *text = cmt_read_file(w->port_file, NULL);
    w->ollama_port = atoi(text);
    assert_true(w->ollama_port > 0);
    free(text);
    free(out);
    free(bin);
}

static void stop_ollama(world_t *w)
{
    if (w->ollama > 0) cmt_kill_group(w->ollama);
    w->ollama = 0;
}

/* The app's own view: its active_backend ("" when it does not answer). */
static char *app_serving(world_t *w)
{
    char *body = NULL;
    int status = cmi_http(w->app_port, "GET", "/api/backend/status", NULL, 10000, &body);
    char *out = strdup("");
    cJSON *doc = status == 200 && body ? cJSON_Parse(body) : NULL;
    cJSON *active = doc ? cJSON_GetObjectItemCaseSensitive(doc, "active_backend") : NULL;
    if (cJSON_IsString(active)) {
        free(out);
        out = strdup(active->valuestring);
    }
    cJSON_Delete(doc);
    free(body);
    return out;
}

/* Waits (bounded) until the app says it serves with `want`. */
static int wait_serving(world_t *w, const char *want, int timeout_ms)
{
    double t0 = cmt_now_ms();
    do {
        char *now = app_serving(w);
        int ok = strcmp(now, want) == 0;
        free(now);
        if (ok) return (int)(cmt_now_ms() - t0);
        usleep(100 * 1000);
    } while (cmt_now_ms() - t0 < timeout_ms);
    return -1;
}

/* Waits (bounded) until the session logs hold needle: the supervisor logs
 * a switch once its request has returned, which may be just after the app
 * already answers with the new backend. */
static int wait_log(world_t *w, const char *needle, int timeout_ms)
{
    double t0 = cmt_now_ms();
    while (cmi_logs_count(w->root, needle) < 1) {
        if (cmt_now_ms() - t0 > timeout_ms) return -1;
        usleep(50 * 1000);
    }
    return 0;
}

static int app_pid(world_t *w)
{
    cJSON *st = cmi_read_state(w->root);
    int pid = st ? (int)cmi_state_int(st, "pid") : -1;
    cJSON_Delete(st);
    return pid;
}

static world_t *world_new(void)
{
    const char *real = getenv("CM_REAL_APP");
    char *app_py = real ? cmt_path(real, "app.py") : NULL;
    struct stat sb;
    if (!app_py || stat(app_py, &sb) != 0 || stat(PYTHON, &sb) != 0) {
        fprintf(stderr, "the real app (CM_REAL_APP=%s) or %s is missing\n", real ? real : "",
                PYTHON);
        free(app_py);
        return NULL;
    }
    free(app_py);
    world_t *w = calloc(1, sizeof *w);
    w->tmp = cmt_tempdir();
    w->root = cmt_path(w->tmp, "app");
    w->pylib = cmt_path(w->tmp, "pylib");
    w->port_file = cmt_path(w->tmp, "ollama.port");
    /* The real app, copied: the original stays untouched. */
    const char *cp[] = {"/bin/cp", "-R", real, w->root, NULL};
    must_run(cp);
    char *models = cmt_path(w->root, "models");
    mkdir(models, 0755);
    char *gguf_src = cmt_fixture("gguf/valid-v3.gguf");
    char *gguf = cmt_path(models, "tiny.gguf");
    const char *cpg[] = {"/bin/cp", gguf_src, gguf, NULL};
    must_run(cpg);
    /* llama_cpp is not on these machines: a package that imports. */
    char *pkg = cmt_path(w->pylib, "llama_cpp");
    mkdir(w->pylib, 0755);
    mkdir(pkg, 0755);
    char *init = cmt_path(pkg, "__init__.py");
    cmt_write_file(init, "__version__ = '0.0.0-fake'\n\n"
                         "class Llama:\n"
                         "    def __init__(self, *args, **kwargs):\n"
                         "        raise RuntimeError('the fake llama_cpp loads no model')\n");
    start_ollama(w);
    w->app_port = cmt_free_port();
    char config[4096];
    snprintf(config, sizeof config,
             "{\n"
             "  \"backend\": {\n"
             "    \"active\": \"ollama\",\n"
             "    \"auto_fallback\": true,\n"
             "    \"health_check_interval\": %d\n"
             "  },\n"
             "  \"ollama\": {\n"
             "    \"base_url\": \"http://127.0.0.1:%d\",\n"
             "    \"timeout\": 10,\n"
             "    \"connect_timeout\": 2\n"
             "  },\n"
             "  \"llamacpp\": {\n"
             "    \"model_path\": \"./models\",\n"
             "    \"python\": \"" PYTHON "\"\n"
             "  },\n"
             "  \"server\": {\n"
             "    \"port\": %d,\n"
             "    \"host\": \"127.0.0.1\",\n"
             "    \"debug\": false\n"
             "  },\n"
             "  \"manager\": {\n"
             "    \"app\": { \"command\": [\"" PYTHON "\", \"app.py\"], \"venv\": false },\n"
             "    \"start_timeout\": 60,\n"
             "    \"fallback_after\": %d,\n"
             "    \"fallback_cooldown\": 1,\n"
             "    \"failback_after\": 2\n"
             "  }\n"
             "}\n",
             INTERVAL_S, w->ollama_port, w->app_port, FALLBACK_AFTER);
    char *cfg = cmt_path(w->root, "config.json");
    cmt_write_file(cfg, config);
    if (asprintf(&w->env_pythonpath, "PYTHONPATH=%s", w->pylib) < 0) abort();
    w->env[0] = w->env_pythonpath;
    w->env[1] = "CONFIG_FILE=";
    w->env[2] = NULL;
    free(cfg);
    free(init);
    free(pkg);
    free(gguf);
    free(gguf_src);
    free(models);
    return w;
}

static void world_free(world_t *w)
{
    cmt_result_t r = cmt_cm(w->root, w->env, 90000, "stop", NULL);
    cmt_result_free(&r);
    stop_ollama(w);
    cmt_rmtree(w->tmp);
    free(w->env_pythonpath);
    free(w->port_file);
    free(w->pylib);
    free(w->root);
    free(w->tmp);
    free(w);
}

static char *read_config(world_t *w)
{
    char *path = cmt_path(w->root, "config.json");
    char *text = cmt_read_file(path, NULL);
    free(path);
    return text;
}

/* A conversation with one exchange through the app; returns its id. */
static int chat_once(world_t *w)
{
    char *body = NULL;
    int st = cmi_http(w->app_port, "POST", "/api/conversations",
                      "{\"title\":\"kept\",\"model\":\"llama3.2:1b\"}", 30000, &body);
    assert_int_equal(st, 200);
    cJSON *doc = cJSON_Parse(body);
    cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "conversation_id");
    assert_true(cJSON_IsNumber(id));
    int conv = id->valueint;
    cJSON_Delete(doc);
    free(body);
    char msg[256];
    snprintf(msg, sizeof msg, "{\"conversation_id\":%d,\"message\":\"hello there\"}", conv);
    st = cmi_http(w->app_port, "POST", "/api/chat", msg, 60000, &body);
    if (st != 200 || strstr(body, "Hello from the fake Ollama.") == NULL)
        fprintf(stderr, "chat answered %d: %s\n", st, body ? body : "");
    assert_int_equal(st, 200);
    assert_non_null(strstr(body, "Hello from the fake Ollama."));
    free(body);
    return conv;
}

/* The conversation's messages, as the app returns them. */
static char *conversation(world_t *w, int conv)
{
    char path[64], *body = NULL;
    snprintf(path, sizeof path, "/api/conversations/%d", conv);
    assert_int_equal(cmi_http(w->app_port, "GET", path, NULL, 10000, &body), 200);
    return body;
}

static void fallback_live_and_failback(void **state)
{
    (void)state;
    world_t *w = world_new();
    if (w == NULL) skip();
    cmt_result_t r = cmt_cm(w->root, w->env, 90000, "start", NULL);
    if (r.code != 0) fprintf(stderr, "start: %s%s\n", r.out, r.err);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    char *before = read_config(w);
    int pid = app_pid(w);
    assert_true(pid > 1);
    assert_true(wait_serving(w, "ollama", 10000) >= 0);

    int conv = chat_once(w);
    char *kept = conversation(w, conv);
    assert_non_null(strstr(kept, "Hello from the fake Ollama."));

    /* Ollama dies: the manager falls back live. */
    stop_ollama(w);
    int ms = wait_serving(w, "llamacpp", FALLBACK_AFTER * INTERVAL_S * 1000 + CHECK_SLACK_MS);
    if (ms < 0) {
        char *logs = cmi_logs_text(w->root);
        fprintf(stderr, "no fallback; logs:\n%s\n", logs);
        free(logs);
    }
    assert_true(ms >= 0);
    fprintf(stderr, "fell back live %d ms after Ollama died\n", ms);
    assert_int_equal(app_pid(w), pid);
    assert_true(cmi_pid_alive(pid));
    char *after = read_config(w);
    assert_string_equal(after, before);
    free(after);
    char *still = conversation(w, conv);
    assert_string_equal(still, kept);
    free(still);
    assert_int_equal(wait_log(w, "backend switched from 'ollama' to 'llamacpp' live", 10000), 0);

    /* status --json: configured, serving and why. */
    r = cmt_cm(w->root, w->env, 90000, "--json", "status", NULL);
    assert_cmt_code(r, 0);
    cJSON *st = cJSON_Parse(r.out);
    assert_non_null(st);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(st, "configured_backend")->valuestring,
                        "ollama");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(st, "serving_backend")->valuestring,
                        "llamacpp");
    cJSON *why = cJSON_GetObjectItemCaseSensitive(st, "backend_explanation");
    assert_true(cJSON_IsString(why));
    assert_non_null(strstr(why->valuestring, "llamacpp"));
    cJSON_Delete(st);
    cmt_result_free(&r);
    r = cmt_cm(w->root, w->env, 90000, "status", NULL);
    assert_non_null(strstr(r.out, "Serving:        llamacpp (the app says)"));
    cmt_result_free(&r);

    /* Ollama is back: after failback_after healthy checks the app fails back. */
    start_ollama(w);
    ms = wait_serving(w, "ollama", (2 + 2) * INTERVAL_S * 1000 + CHECK_SLACK_MS);
    assert_true(ms >= 0);
    fprintf(stderr, "failed back %d ms after Ollama came back\n", ms);
    assert_int_equal(app_pid(w), pid);
    after = read_config(w);
    assert_string_equal(after, before);
    free(after);
    assert_int_equal(wait_log(w, "failback", 10000), 0);
    chat_once(w);

    free(kept);
    free(before);
    world_free(w);
}

/* backend switch while the app runs: config.json and the app, live. */
static void switch_is_live(void **state)
{
    (void)state;
    world_t *w = world_new();
    if (w == NULL) skip();
    cmt_result_t r = cmt_cm(w->root, w->env, 90000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int pid = app_pid(w);
    assert_true(wait_serving(w, "ollama", 10000) >= 0);

    r = cmt_cm(w->root, w->env, 90000, "backend", "switch", "llamacpp", NULL);
    if (r.code != 0) fprintf(stderr, "%s%s\n", r.out, r.err);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "now serves with 'llamacpp': switched live, no restart"));
    assert_true(wait_serving(w, "llamacpp", 1000) >= 0);
    assert_int_equal(app_pid(w), pid);
    cmt_result_free(&r);
    char *cfg = read_config(w);
    assert_non_null(strstr(cfg, "\"active\": \"llamacpp\""));
    free(cfg);
    /* The supervisor hears of it at once (USR1) and records the user's
     * choice, which its fallback leaves alone within the cooldown. */
    assert_int_equal(wait_log(w, "chosen by the user", 10000), 0);

    /* An unhealthy backend: config.json is written, the app stays. */
    stop_ollama(w);
    r = cmt_cm(w->root, w->env, 90000, "backend", "switch", "ollama", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "not healthy"));
    assert_non_null(strstr(r.out, "stays on its current backend"));
    assert_non_null(strstr(r.out, "--force"));
    cmt_result_free(&r);
    char *now = app_serving(w);
    assert_string_equal(now, "llamacpp");
    free(now);

    /* --force asks the app, which refuses a backend it cannot reach. */
    r = cmt_cm(w->root, w->env, 90000, "backend", "switch", "ollama", "--force", NULL);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "The app refused to switch to 'ollama'"));
    cmt_result_free(&r);
    assert_int_equal(app_pid(w), pid);
    world_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fallback_live_and_failback),
        cmocka_unit_test(switch_is_live),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
