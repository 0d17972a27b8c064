/*
 * `chat-manager backend ...` end to end: the real binary against a fake
 * Ollama on loopback.  Output text, exit codes, --json that parses, and
 * config writes that keep every other byte (or change nothing at all).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RUN_MS 15000 /* a bound on every run of the binary */

typedef struct fixture {
    char *root;
    char *config; /* <root>/config.json */
    pid_t http_pid;
    int http_port;
} fixture_t;

/* The config in the style Chat-O-Llama writes (json.dump, indent=2); %d is
 * the fake Ollama's port, %s the fake Python and %s the active backend. */
static const char config_template[] = "{\n"
                                      "  \"backend\": {\n"
                                      "    \"active\": \"%s\",\n"
                                      "    \"auto_fallback\": true,\n"
                                      "    \"health_check_interval\": 30\n"
                                      "  },\n"
                                      "  \"ollama\": {\n"
                                      "    \"base_url\": \"http://127.0.0.1:%d\",\n"
                                      "    \"timeout\": 600,\n"
                                      "    \"connect_timeout\": 45,\n"
                                      "    \"verify_ssl\": true\n"
                                      "  },\n"
                                      "  \"llamacpp\": {\n"
                                      "    \"model_path\": \"./models\",\n"
                                      "    \"n_ctx\": 8192,\n"
                                      "    \"n_batch\": 512,\n"
                                      "    \"n_threads\": -1,\n"
                                      "    \"python\": \"%s\"\n"
                                      "  },\n"
                                      "  \"model_options\": {\n"
                                      "    \"temperature\": 0.5,\n"
                                      "    \"top_p\": 0.90,\n"
                                      "    \"stop\": [\n"
                                      "      \"</s>\",\n"
                                      "      \"\xc3\x9c"
                                      "n\xc3\xaf"
                                      "c\xc3\xb6"
                                      "d\xc3\xa9 \xe2\x9c\x93\"\n"
                                      "    ],\n"
                                      "    \"empty\": {},\n"
                                      "    \"none\": []\n"
                                      "  },\n"
                                      "  \"server\": {\n"
                                      "    \"port\": 3113,\n"
                                      "    \"host\": \"0.0.0.0\"\n"
                                      "  },\n"
                                      "  \"manager\": {\n"
                                      "    \"health_timeout\": 1,\n"
                                      "    \"health_connect_timeout\": 1\n"
                                      "  },\n"
                                      "  \"zz_last\": null\n"
                                      "}\n";

static char *config_text(fixture_t *f, const char *active)
{
    char *python = cmt_fixture("fake-python");
    size_t n = sizeof config_template + strlen(python) + strlen(active) + 16;
    char *text = malloc(n);
    snprintf(text, n, config_template, active, f->http_port, python);
    free(python);
    return text;
}

static void start_http(fixture_t *f, const char *mode)
{
    char *bin = cmt_fixture("fake-http");
    char *port_file = cmt_path(f->root, "http.port");
    unlink(port_file);
    const char *argv[] = {bin, "--port", "0", "--port-file", port_file, "--mode", mode, NULL};
    f->http_pid = cmt_spawn(argv, NULL, NULL);
    assert_int_equal(cmt_wait_file(port_file, 5000), 0);
    char *text = cmt_read_file(port_file, NULL);
    f->http_port = atoi(text);
    assert_true(f->http_port > 0);
    free(text);
    free(bin);
    free(port_file);
}

static void stop_http(fixture_t *f)
{
    if (f->http_pid > 0) cmt_kill_group(f->http_pid);
    f->http_pid = 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    f->root = cmt_tempdir();
    f->config = cmt_path(f->root, "config.json");
    start_http(f, "ollama");
    char *text = config_text(f, "ollama");
    cmt_write_file(f->config, text);
    free(text);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    stop_http(f);
    cmt_rmtree(f->root);
    free(f->root);
    free(f->config);
    free(f);
    return 0;
}

static void write_in_root(fixture_t *f, const char *rel, const char *text)
{
    char *path = cmt_path(f->root, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
    *slash = '/';
    cmt_write_file(path, text);
    free(path);
}

#define contains(hay, needle)                                                                      \
    do {                                                                                           \
        if (strstr((hay), (needle)) == NULL)                                                       \
            fail_msg("expected to find \"%s\" in:\n%s", (needle), (hay));                          \
    } while (0)

static void test_status_text(void **state)
{
    fixture_t *f = *state;
    static const char *const subs[] = {"status", "list"};
    for (int i = 0; i < 2; i++) {
        cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", subs[i], NULL);
        assert_cmt_code(r, 0);
        contains(r.out,
                 "  ollama     \xe2\x9c\x93 healthy     2 models (llama3.2:1b, qwen2.5:0.5b), "
                 "v0.5.7, ");
        contains(r.out, "  llamacpp   \xe2\x9c\x97 unhealthy   model directory not found: ");
        contains(r.out, "\nActive backend: ollama\n");
        /* Registry order: llamacpp before ollama (by name). */
        assert_true(strstr(r.out, "llamacpp") < strstr(r.out, "  ollama"));
        cmt_result_free(&r);
    }
}

static void test_status_json(void **state)
{
    fixture_t *f = *state;
    write_in_root(f, "backends/mystery.lua",
                  "return { check = function() return { detail = 'cannot tell' } end }\n");
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "status", "--json", NULL);
    assert_cmt_code(r, 0);
    cJSON *doc = cJSON_Parse(r.out);
    if (doc == NULL) fail_msg("not JSON:\n%s", r.out);
    assert_string_equal(cJSON_GetObjectItem(doc, "active")->valuestring, "ollama");
    cJSON *b = cJSON_GetObjectItem(doc, "backends");
    cJSON *ollama = cJSON_GetObjectItem(b, "ollama");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(ollama, "healthy")));
    assert_string_equal(cJSON_GetObjectItem(ollama, "detail")->valuestring,
                        "2 models (llama3.2:1b, qwen2.5:0.5b), v0.5.7");
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(ollama, "ms")));
    cJSON *models = cJSON_GetObjectItem(cJSON_GetObjectItem(ollama, "info"), "models");
    assert_int_equal(cJSON_GetArraySize(models), 2);
    assert_int_equal((long)cJSON_GetObjectItem(cJSON_GetArrayItem(models, 0), "size")->valuedouble,
                     1321098329L);
    cJSON *llamacpp = cJSON_GetObjectItem(b, "llamacpp");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(llamacpp, "healthy")));
    cJSON *mystery = cJSON_GetObjectItem(b, "mystery");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(mystery, "healthy")));
    assert_string_equal(cJSON_GetObjectItem(mystery, "detail")->valuestring, "cannot tell");
    cJSON_Delete(doc);
    cmt_result_free(&r);
}

static void test_health_exit_codes(void **state)
{
    fixture_t *f = *state;
    write_in_root(f, "backends/mystery.lua",
                  "return { check = function() return { detail = 'cannot tell' } end }\n");

    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "health", NULL);
    assert_cmt_code(r, 0); /* the active one: ollama */
    contains(r.out, "  ollama     \xe2\x9c\x93 healthy     2 models");
    contains(r.out, "llama3.2:1b");
    cmt_result_free(&r);

    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "health", "llamacpp", NULL);
    assert_cmt_code(r, 1);
    contains(r.out, "\xe2\x9c\x97 unhealthy");
    contains(r.out, "Troubleshooting:");
    contains(r.out, "Download GGUF models into ");
    cmt_result_free(&r);

    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "health", "mystery", NULL);
    assert_cmt_code(r, 1);
    contains(r.out, "? unknown");
    cmt_result_free(&r);

    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "health", "nope", NULL);
    assert_cmt_code(r, 2);
    contains(r.err, "[ERROR] Unknown backend: nope\n");
    contains(r.err, "Available backends: llamacpp, mystery, ollama\n");
    cmt_result_free(&r);

    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "health", "ollama", "--json", NULL);
    assert_cmt_code(r, 0);
    cJSON *doc = cJSON_Parse(r.out);
    if (doc == NULL) fail_msg("not JSON:\n%s", r.out);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(doc, "healthy")));
    assert_string_equal(cJSON_GetObjectItem(doc, "name")->valuestring, "ollama");
    cJSON_Delete(doc);
    cmt_result_free(&r);

    r = cmt_cm(f->root, NULL, RUN_MS, "--json", "backend", "health", "llamacpp", NULL);
    assert_cmt_code(r, 1);
    doc = cJSON_Parse(r.out);
    if (doc == NULL) fail_msg("not JSON:\n%s", r.out);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(doc, "healthy")));
    assert_non_null(strstr(cJSON_GetObjectItem(doc, "hint")->valuestring, "Download GGUF models"));
    cJSON_Delete(doc);
    cmt_result_free(&r);
}

static void test_health_refused(void **state)
{
    fixture_t *f = *state;
    stop_http(f);
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "health", "ollama", NULL);
    assert_cmt_code(r, 1);
    contains(r.out, "connection refused at http://127.0.0.1:");
    contains(r.out, "ollama serve");
    contains(r.out, "ollama.base_url in config.json");
    cmt_result_free(&r);
}

/* With a libcurl built without TLS (the fixture refuses the TLS options),
 * http:// still works: TLS options are set for https:// only.  An https://
 * URL fails naming the option libcurl refused. */
static void test_http_without_tls(void **state)
{
    fixture_t *f = *state;
    char *dir = cmt_fixture("curl-without-tls");
    char ld[1024];
    snprintf(ld, sizeof ld, "LD_LIBRARY_PATH=%s", dir);
    free(dir);
    const char *env[] = {ld, NULL};
    cmt_result_t r = cmt_cm(f->root, env, RUN_MS, "backend", "health", "ollama", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "2 models (llama3.2:1b, qwen2.5:0.5b)");
    cmt_result_free(&r);

    char *text = config_text(f, "ollama");
    char *at = strstr(text, "\"http://127.0.0.1:");
    assert_non_null(at);
    size_t n = strlen(text) + 2;
    char *https = malloc(n);
    snprintf(https, n, "%.*s\"https%s", (int)(at - text), text, at + 5);
    cmt_write_file(f->config, https);
    free(https);
    free(text);
    r = cmt_cm(f->root, env, RUN_MS, "backend", "health", "ollama", NULL);
    assert_cmt_code(r, 1);
    contains(r.out, "CURLOPT_SSL_VERIFYPEER");
    cmt_result_free(&r);
}

/* The switch rewrites backend.active and nothing else: every other key,
 * their order, the number spellings, the Unicode and the file mode stay. */
static void test_switch_keeps_everything(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(chmod(f->config, 0640), 0);
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "llamacpp", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "[WARNING] Backend 'llamacpp' is not healthy - some features may not work\n");
    contains(r.out, "[INFO] Switched to backend 'llamacpp'\n");
    contains(r.out, "Restart the application to apply: chat-manager restart\n");
    cmt_result_free(&r);
    char *expected = config_text(f, "llamacpp");
    char *actual = cmt_read_file(f->config, NULL);
    assert_string_equal(actual, expected);
    struct stat st;
    assert_int_equal(stat(f->config, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    free(actual);
    free(expected);

    /* And back to a healthy one: no warning. */
    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "ollama", NULL);
    assert_cmt_code(r, 0);
    assert_null(strstr(r.out, "[WARNING]"));
    contains(r.out, "[INFO] Switched to backend 'ollama'\n");
    cmt_result_free(&r);
    expected = config_text(f, "ollama");
    actual = cmt_read_file(f->config, NULL);
    assert_string_equal(actual, expected);
    free(actual);
    free(expected);

    /* Switching to the active one writes nothing. */
    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "ollama", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "[INFO] Backend 'ollama' is already active\n");
    cmt_result_free(&r);
}

static void assert_config_untouched(fixture_t *f, const char *before, const struct stat *st_before)
{
    size_t len;
    char *after = cmt_read_file(f->config, &len);
    assert_non_null(after);
    assert_int_equal(len, strlen(before));
    assert_memory_equal(after, before, len);
    struct stat st;
    assert_int_equal(stat(f->config, &st), 0);
    assert_int_equal(st.st_ino, st_before->st_ino); /* not even rewritten */
    free(after);
}

static void test_switch_unknown_changes_nothing(void **state)
{
    fixture_t *f = *state;
    char *before = cmt_read_file(f->config, NULL);
    struct stat st;
    assert_int_equal(stat(f->config, &st), 0);
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "nonesuch", NULL);
    assert_cmt_code(r, 2);
    contains(r.err, "[ERROR] Unknown backend: nonesuch\n");
    contains(r.err, "Available backends: llamacpp, ollama\n");
    assert_null(strstr(r.out, "Switched"));
    cmt_result_free(&r);
    assert_config_untouched(f, before, &st);
    free(before);
}

static void test_switch_invalid_config(void **state)
{
    fixture_t *f = *state;
    static const char broken[] = "{\n  \"backend\": {\n    \"active\": \"ollama\",,\n  }\n}\n";
    cmt_write_file(f->config, broken);
    struct stat st;
    assert_int_equal(stat(f->config, &st), 0);
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "llamacpp", NULL);
    assert_cmt_code(r, 1);
    contains(r.err, "config.json:3:");
    assert_null(strstr(r.out, "Switched"));
    cmt_result_free(&r);
    assert_config_untouched(f, broken, &st);

    /* A value of the wrong type is named too. */
    static const char wrong[] = "{\"backend\": {\"active\": 42}}\n";
    cmt_write_file(f->config, wrong);
    assert_int_equal(stat(f->config, &st), 0);
    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "llamacpp", NULL);
    assert_cmt_code(r, 1);
    contains(r.err, "'backend.active' must be a backend name");
    cmt_result_free(&r);
    assert_config_untouched(f, wrong, &st);
}

static void test_switch_missing_config(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(unlink(f->config), 0);
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "llamacpp", NULL);
    assert_cmt_code(r, 1);
    contains(r.err, "[ERROR] Failed to switch backend: ");
    contains(r.err, "config.json: No such file or directory");
    cmt_result_free(&r);
    assert_int_not_equal(access(f->config, F_OK), 0);
}

/* CONFIG_FILE names the config elsewhere (as the app reads it). */
static void test_switch_config_file_env(void **state)
{
    fixture_t *f = *state;
    char *other = cmt_path(f->root, "elsewhere.json");
    char *text = config_text(f, "ollama");
    cmt_write_file(other, text);
    free(text);
    char env[4096];
    snprintf(env, sizeof env, "CONFIG_FILE=%s", other);
    const char *const envp[] = {env, NULL};
    cmt_result_t r = cmt_cm(f->root, envp, RUN_MS, "backend", "switch", "llamacpp", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    char *expected = config_text(f, "llamacpp");
    char *actual = cmt_read_file(other, NULL);
    assert_string_equal(actual, expected);
    free(actual);
    free(expected);
    expected = config_text(f, "ollama");
    actual = cmt_read_file(f->config, NULL);
    assert_string_equal(actual, expected); /* root/config.json untouched */
    free(actual);
    free(expected);
    free(other);
}

static void test_switch_user_backend(void **state)
{
    fixture_t *f = *state;
    write_in_root(f, "backends/custom.lua",
                  "return { summary = 'mine', check = function() "
                  "return { healthy = true, detail = 'all good' } end }\n");
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "switch", "custom", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "  custom     \xe2\x9c\x93 healthy     all good, ");
    contains(r.out, "[INFO] Switched to backend 'custom'\n");
    cmt_result_free(&r);
    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "status", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "Active backend: custom\n");
    cmt_result_free(&r);
    r = cmt_cm(f->root, NULL, RUN_MS, "backend", "health", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "all good");
    cmt_result_free(&r);
}

static void test_usage_errors(void **state)
{
    fixture_t *f = *state;
    static const char *const cases[][4] = {
        {"backend", NULL},
        {"backend", "frob", NULL},
        {"backend", "switch", NULL},
        {"backend", "switch", "ollama", "llamacpp"},
        {"backend", "switch", "--force", NULL},
        {"backend", "status", "extra", NULL},
        {"backend", "health", "ollama", "llamacpp"},
    };
    char *before = cmt_read_file(f->config, NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cmt_result_t r =
            cmt_cm(f->root, NULL, RUN_MS, cases[i][0], cases[i][1], cases[i][2], cases[i][3], NULL);
        if (r.code != 2) fail_msg("case %zu: exit %d, stderr:\n%s", i, r.code, r.err);
        contains(r.err, "[ERROR] ");
        contains(r.err, "chat-manager backend switch <name> [--restart]");
        cmt_result_free(&r);
    }
    char *after = cmt_read_file(f->config, NULL);
    assert_string_equal(after, before);
    free(after);
    free(before);
}

static void test_help_lists_subcommands(void **state)
{
    fixture_t *f = *state;
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "help", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "Backend commands:");
    contains(r.out, "  backend status ");
    contains(r.out, "  backend list ");
    contains(r.out, "  backend switch <name> [--restart] ");
    contains(r.out, "  backend health [name] ");
    cmt_result_free(&r);
}

/* backend status shows the facts at a glance: Ollama's version and models
 * with sizes, each GGUF model's architecture, parameters, quantisation and
 * context length. */
static void test_status_facts(void **state)
{
    fixture_t *f = *state;
    char *src = cmt_fixture("gguf/valid-v3.gguf");
    size_t len = 0;
    char *bytes = cmt_read_file(src, &len);
    assert_non_null(bytes);
    write_in_root(f, "models/tiny.gguf", "");
    char *dst = cmt_path(f->root, "models/tiny.gguf");
    FILE *out = fopen(dst, "wb");
    assert_non_null(out);
    assert_int_equal(fwrite(bytes, 1, len, out), len);
    fclose(out);
    cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, "backend", "status", NULL);
    assert_cmt_code(r, 0);
    contains(r.out, "      Version: 0.5.7\n");
    contains(r.out, "llama3.2:1b                    1.3 GB  1.2B Q8_0");
    contains(r.out, "qwen2.5:0.5b                   398 MB  494.03M Q4_K_M");
    contains(r.out, "tiny.gguf  Tiny Test (llama, 1B, 1.24B parameters, Q8_0, ");
    contains(r.out, ", GGUF v3, context 4096");
    cmt_result_free(&r);
    free(dst);
    free(bytes);
    free(src);
}

/* Model names from the network are printed with control characters
 * escaped: no screen clearing, no forged [INFO] line. */
static void test_hostile_names_escaped(void **state)
{
    fixture_t *f = *state;
    stop_http(f);
    start_http(f, "hostile");
    char *text = config_text(f, "ollama");
    cmt_write_file(f->config, text);
    free(text);
    static const char *const cmds[][3] = {{"backend", "status", NULL},
                                          {"backend", "health", "ollama"}};
    for (int i = 0; i < 2; i++) {
        cmt_result_t r = cmt_cm(f->root, NULL, RUN_MS, cmds[i][0], cmds[i][1], cmds[i][2], NULL);
        assert_cmt_code(r, 0);
        if (strchr(r.out, '\x1b') != NULL)
            fail_msg("an escape byte reached the output:\n%s", r.out);
        if (strstr(r.out, "\n[INFO] forged") != NULL) fail_msg("a forged line:\n%s", r.out);
        contains(r.out, "\\x1b[2J\\x1b[Hwiped");
        contains(r.out, "evil\\n[INFO] forged line");
        cmt_result_free(&r);
    }
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_status_text),
        T(test_status_json),
        T(test_health_exit_codes),
        T(test_health_refused),
        T(test_http_without_tls),
        T(test_switch_keeps_everything),
        T(test_switch_unknown_changes_nothing),
        T(test_switch_invalid_config),
        T(test_switch_missing_config),
        T(test_switch_config_file_env),
        T(test_switch_user_backend),
        T(test_usage_errors),
        T(test_help_lists_subcommands),
        T(test_status_facts),
        T(test_hostile_names_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
