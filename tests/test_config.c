/*
 * The config file (src/config.c): byte-exact round trips in Chat-O-Llama's
 * json.dump(indent=2) style, dotted get/set that keeps key order, errors with
 * line and column, and saves that leave the original untouched on failure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmtest.h"
#include "config.h"

/* Exactly what Python writes for this object with json.dump(obj, f,
 * indent=2, ensure_ascii=False) followed by "\n" (generated with python3). */
static const char STYLED[] =
    "{\n"
    "  \"backend\": {\n"
    "    \"active\": \"ollama\",\n"
    "    \"auto_fallback\": true,\n"
    "    \"health_check_interval\": 30\n"
    "  },\n"
    "  \"ollama\": {\n"
    "    \"base_url\": \"http://localhost:11434\",\n"
    "    \"temperature\": 0.7,\n"
    "    \"epsilon\": 1e-05,\n"
    "    \"scale\": 1.0,\n"
    "    \"huge\": 1e+300,\n"
    "    \"big\": 12345678901234567890,\n"
    "    \"negative\": -3,\n"
    "    \"verify_ssl\": false\n"
    "  },\n"
    "  \"llamacpp\": {\n"
    "    \"model_path\": \"./models\",\n"
    "    \"stop\": [\n"
    "      \"</s>\",\n"
    "      \"User:\"\n"
    "    ],\n"
    "    \"extra\": [],\n"
    "    \"opts\": {}\n"
    "  },\n"
    "  \"greeting\": \"Grüß dich, 世界 \\\"quoted\\\" \\\\ tab\\t\\u0001\",\n"
    "  \"nothing\": null,\n"
    "  \"nested\": [\n"
    "    [\n"
    "      1,\n"
    "      2\n"
    "    ],\n"
    "    {\n"
    "      \"x\": 1.5\n"
    "    },\n"
    "    []\n"
    "  ]\n"
    "}\n";

/* The same file with a syntax error (a missing comma) on line 7. */
static const char LINE7[] = "{\n"
                            "  \"backend\": {\n"
                            "    \"active\": \"ollama\",\n"
                            "    \"auto_fallback\": true,\n"
                            "    \"health_check_interval\": 30\n"
                            "  }\n"
                            "  \"server\": {\n"
                            "    \"port\": 3113\n"
                            "  }\n"
                            "}\n";

typedef struct fixture {
    char *dir;
    char *path; /* dir/config.json */
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    f->dir = cmt_tempdir();
    f->path = cmt_path(f->dir, "config.json");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    chmod(f->dir, 0700);
    cmt_rmtree(f->dir);
    free(f->path);
    free(f->dir);
    free(f);
    return 0;
}

/* Writes n bytes (the data may hold NULs). */
static void write_bytes(const char *path, const char *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    assert_int_equal(close(fd), 0);
}

static void assert_file_is(const char *path, const char *expected, size_t len)
{
    size_t got_len = 0;
    char *got = cmt_read_file(path, &got_len);
    assert_non_null(got);
    if (got_len != len || memcmp(got, expected, len) != 0) {
        print_error("%s holds:\n%s\n--- expected:\n%s\n", path, got, expected);
        fail();
    }
    free(got);
}

/* The expected text after one literal replacement in STYLED. */
static char *styled_with(const char *from, const char *to)
{
    const char *at = strstr(STYLED, from);
    assert_non_null(at);
    size_t n = sizeof(STYLED) - strlen(from) + strlen(to);
    char *s = malloc(n);
    snprintf(s, n, "%.*s%s%s", (int)(at - STYLED), STYLED, to, at + strlen(from));
    return s;
}

static cm_config_t *load_ok(const char *path)
{
    cm_config_error_t err = {0};
    cm_config_t *cfg = cm_config_load(path, &err);
    if (cfg == NULL) {
        print_error("load %s: %s\n", path, err.msg);
        fail();
    }
    return cfg;
}

static void test_round_trip_is_byte_identical(void **state)
{
    fixture_t *f = *state;
    cmt_write_file(f->path, STYLED);
    cm_config_t *cfg = load_ok(f->path);
    size_t len;
    char *text = cm_config_text(cfg, &len);
    assert_int_equal(len, strlen(STYLED));
    assert_string_equal(text, STYLED);
    free(text);

    cm_config_error_t err = {0};
    assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), 0);
    assert_file_is(f->path, STYLED, strlen(STYLED));
    cm_config_free(cfg);
}

static void test_set_changes_only_that_value(void **state)
{
    fixture_t *f = *state;
    cmt_write_file(f->path, STYLED);
    cm_config_t *cfg = load_ok(f->path);
    cm_config_error_t err = {0};
    assert_int_equal(
        cm_config_set(cfg, "backend.health_check_interval", cJSON_CreateNumber(60), &err), 0);
    assert_int_equal(cm_config_set(cfg, "ollama.temperature", cJSON_CreateNumber(0.25), &err), 0);
    assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), 0);

    char *step = styled_with("\"health_check_interval\": 30", "\"health_check_interval\": 60");
    const char *at = strstr(step, "0.7");
    char expected[sizeof(STYLED) + 16];
    snprintf(expected, sizeof(expected), "%.*s0.25%s", (int)(at - step), step, at + 3);
    assert_file_is(f->path, expected, strlen(expected));
    free(step);
    cm_config_free(cfg);
}

static void test_set_creates_objects_and_keeps_order(void **state)
{
    fixture_t *f = *state;
    cmt_write_file(f->path, STYLED);
    cm_config_t *cfg = load_ok(f->path);
    cm_config_error_t err = {0};
    assert_int_equal(
        cm_config_set(cfg, "manager.restart.policy", cJSON_CreateString("always"), &err), 0);
    assert_int_equal(cm_config_set(cfg, "backend.active", cJSON_CreateString("llamacpp"), &err), 0);
    assert_int_equal(cm_config_set(cfg, "backend.zzz", cJSON_CreateTrue(), &err), 0);

    char *text = cm_config_text(cfg, NULL);
    char *a = styled_with("\"active\": \"ollama\"", "\"active\": \"llamacpp\"");
    const char *at = strstr(a, "    \"health_check_interval\": 30\n");
    const char *tail = strstr(a, "    []\n  ]\n}\n");
    assert_non_null(at);
    assert_non_null(tail);
    char expected[sizeof(STYLED) + 256];
    snprintf(expected, sizeof(expected),
             "%.*s    \"health_check_interval\": 30,\n    \"zzz\": true\n%.*s"
             "    []\n  ],\n  \"manager\": {\n    \"restart\": {\n"
             "      \"policy\": \"always\"\n    }\n  }\n}\n",
             (int)(at - a), a, (int)(tail - (at + strlen("    \"health_check_interval\": 30\n"))),
             at + strlen("    \"health_check_interval\": 30\n"));
    assert_string_equal(text, expected);
    free(a);
    free(text);

    cJSON *policy = cm_config_get(cfg, "manager.restart.policy");
    assert_true(cJSON_IsString(policy));
    assert_string_equal(policy->valuestring, "always");
    cm_config_free(cfg);
}

static void test_set_through_a_non_object_fails(void **state)
{
    (void)state;
    cm_config_error_t err = {0};
    cm_config_t *cfg = cm_config_parse(STYLED, strlen(STYLED), "mem.json", &err);
    assert_non_null(cfg);
    assert_int_equal(cm_config_set(cfg, "backend.active.name", cJSON_CreateString("x"), &err), -1);
    assert_string_equal(err.code, "key");
    assert_non_null(strstr(err.msg, "'backend.active' is a string, not an object"));
    assert_int_equal(cm_config_set(cfg, "nested.x", cJSON_CreateNull(), &err), -1);
    assert_int_equal(cm_config_set(cfg, "a..b", cJSON_CreateNull(), &err), -1);
    assert_int_equal(cm_config_set(cfg, "", cJSON_CreateNull(), &err), -1);
    assert_int_equal(cm_config_set(cfg, "a.", cJSON_CreateNull(), &err), -1);
    char *text = cm_config_text(cfg, NULL);
    assert_string_equal(text, STYLED);
    free(text);
    cm_config_free(cfg);
}

static void test_get_and_unset(void **state)
{
    (void)state;
    cm_config_error_t err = {0};
    cm_config_t *cfg = cm_config_parse(STYLED, strlen(STYLED), "mem.json", &err);
    assert_non_null(cfg);
    assert_string_equal(cm_config_get(cfg, "backend.active")->valuestring, "ollama");
    assert_true(cJSON_IsArray(cm_config_get(cfg, "llamacpp.stop")));
    assert_true(cJSON_IsNull(cm_config_get(cfg, "nothing")));
    assert_null(cm_config_get(cfg, "backend.missing"));
    assert_null(cm_config_get(cfg, "backend.active.deeper"));
    assert_null(cm_config_get(cfg, "Backend.active"));
    assert_null(cm_config_get(cfg, ".backend"));
    assert_null(cm_config_get(cfg, ""));

    long long v;
    assert_true(cm_json_integer(cm_config_get(cfg, "backend.health_check_interval"), &v));
    assert_int_equal(v, 30);
    assert_true(cm_json_integer(cm_config_get(cfg, "ollama.negative"), &v));
    assert_int_equal(v, -3);
    assert_false(cm_json_integer(cm_config_get(cfg, "ollama.scale"), &v)); /* 1.0 */
    assert_false(cm_json_integer(cm_config_get(cfg, "ollama.big"), &v));   /* > 2^63 */

    assert_int_equal(cm_config_unset(cfg, "ollama.huge"), 1);
    assert_int_equal(cm_config_unset(cfg, "ollama.huge"), 0);
    assert_int_equal(cm_config_unset(cfg, "backend.active.x"), 0);
    char *text = cm_config_text(cfg, NULL);
    char *expected = styled_with("    \"huge\": 1e+300,\n", "");
    assert_string_equal(text, expected);
    free(expected);
    free(text);
    cm_config_free(cfg);
}

/* Saving must fail cleanly and leave the original as it was.  Tests run as
 * root, for whom a read-only (0555) directory is still writable, so the
 * failure is made in a way root cannot get around: the temp file's name
 * (".config.json.tmp.<our pid>") already exists as a directory, so the
 * O_EXCL create fails with EEXIST and unlink cannot clear it.  As an ordinary
 * user, a 0555 directory is tried as well. */
static void test_failed_save_keeps_the_original(void **state)
{
    fixture_t *f = *state;
    cmt_write_file(f->path, STYLED);
    cm_config_t *cfg = load_ok(f->path);
    cm_config_error_t err = {0};
    assert_int_equal(cm_config_set(cfg, "backend.active", cJSON_CreateString("x"), &err), 0);

    char name[64];
    snprintf(name, sizeof(name), ".config.json.tmp.%ld", (long)getpid());
    char *tmp = cmt_path(f->dir, name);
    assert_int_equal(mkdir(tmp, 0700), 0);
    assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), -1);
    assert_string_equal(err.code, "EEXIST");
    assert_non_null(strstr(err.msg, f->path));
    assert_non_null(strstr(err.msg, "File exists"));
    assert_file_is(f->path, STYLED, strlen(STYLED));
    assert_int_equal(rmdir(tmp), 0);

    if (geteuid() != 0) {
        assert_int_equal(chmod(f->dir, 0555), 0);
        assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), -1);
        assert_non_null(strstr(err.msg, "Permission denied"));
        assert_file_is(f->path, STYLED, strlen(STYLED));
        assert_int_equal(chmod(f->dir, 0700), 0);
    }

    /* A stale temp file (a crashed earlier save) does not block the next. */
    cmt_write_file(tmp, "junk");
    assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), 0);
    assert_int_equal(access(tmp, F_OK), -1);
    free(tmp);

    /* A lock in a missing directory fails before anything is written. */
    char *cfg_text = cm_config_text(cfg, NULL);
    char *bad_lock = cmt_path(f->dir, "missing/lock");
    assert_int_equal(cm_config_set(cfg, "backend.active", cJSON_CreateString("y"), &err), 0);
    assert_int_equal(cm_config_save(cfg, NULL, bad_lock, &err), -1);
    assert_string_equal(err.code, "ENOENT");
    assert_non_null(strstr(err.msg, bad_lock));
    assert_file_is(f->path, cfg_text, strlen(cfg_text));
    free(bad_lock);
    free(cfg_text);

    /* Saving over a directory is refused. */
    char *sub = cmt_path(f->dir, "sub");
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(cm_config_save(cfg, sub, NULL, &err), -1);
    assert_string_equal(err.code, "EISDIR");
    free(sub);
    cm_config_free(cfg);
}

static void test_save_keeps_mode_and_symlink(void **state)
{
    fixture_t *f = *state;
    cmt_write_file(f->path, STYLED);
    assert_int_equal(chmod(f->path, 0600), 0);
    cm_config_t *cfg = load_ok(f->path);
    cm_config_error_t err = {0};
    assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), 0);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);

    /* A new file gets 0644; the default lock sits beside it. */
    char *fresh = cmt_path(f->dir, "fresh.json");
    assert_int_equal(cm_config_save(cfg, fresh, NULL, &err), 0);
    assert_int_equal(stat(fresh, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
    assert_file_is(fresh, STYLED, strlen(STYLED));
    char *lock = cmt_path(f->dir, ".fresh.json.lock");
    assert_int_equal(stat(lock, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    free(lock);

    /* Saving through a symlink writes the target and keeps the link. */
    char *link = cmt_path(f->dir, "link.json");
    assert_int_equal(symlink("fresh.json", link), 0);
    assert_int_equal(cm_config_set(cfg, "nothing", cJSON_CreateNumber(1), &err), 0);
    assert_int_equal(cm_config_save(cfg, link, NULL, &err), 0);
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    char *expected = styled_with("\"nothing\": null", "\"nothing\": 1");
    assert_file_is(fresh, expected, strlen(expected));
    free(expected);
    free(link);
    free(fresh);
    cm_config_free(cfg);
}

static void test_save_never_waits_for_the_lock(void **state)
{
    fixture_t *f = *state;
    cmt_write_file(f->path, STYLED);
    cm_config_t *cfg = load_ok(f->path);
    char *lock = cmt_path(f->dir, "held.lock");
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);

    cm_config_error_t err = {0};
    double t0 = cmt_now_ms();
    assert_int_equal(cm_config_save(cfg, NULL, lock, &err), -1);
    double waited = cmt_now_ms() - t0;
    assert_string_equal(err.code, "busy");
    assert_non_null(strstr(err.msg, lock));
    /* The save never waits (it would block the loop): the caller waits
     * with cm.fs.lock, on the loop. */
    assert_true(waited < 1000);
    /* "": the caller holds the writers' lock; no second lock is taken. */
    assert_int_equal(cm_config_save(cfg, NULL, "", &err), 0);

    close(fd);
    assert_int_equal(cm_config_save(cfg, NULL, lock, &err), 0);
    free(lock);
    cm_config_free(cfg);
}

static void assert_load_fails(const char *path, const char *code, const char *msg_part)
{
    cm_config_error_t err = {0};
    cm_config_t *cfg = cm_config_load(path, &err);
    assert_null(cfg);
    assert_string_equal(err.code, code);
    if (strstr(err.msg, msg_part) == NULL) {
        print_error("message '%s' lacks '%s'\n", err.msg, msg_part);
        fail();
    }
}

static void test_syntax_error_names_line_and_column(void **state)
{
    fixture_t *f = *state;
    cmt_write_file(f->path, LINE7);
    char expected[4096];
    snprintf(expected, sizeof(expected),
             "%s:7:3: invalid JSON: missing ',' or '}' near '\"server\": {'", f->path);
    cm_config_error_t err = {0};
    assert_null(cm_config_load(f->path, &err));
    assert_string_equal(err.code, "syntax");
    assert_string_equal(err.msg, expected);
    assert_file_is(f->path, LINE7, strlen(LINE7));

    /* The fixture of the same name gives the same verdict. */
    char *fixture = cmt_fixture("configs/syntax-error-line7.json");
    if (access(fixture, F_OK) == 0) assert_load_fails(fixture, "syntax", ":7:3: invalid JSON");
    free(fixture);
}

static void test_bad_files_give_clean_errors(void **state)
{
    fixture_t *f = *state;
    char *missing = cmt_path(f->dir, "nope.json");
    char expected[4096];
    snprintf(expected, sizeof(expected), "%s: No such file or directory", missing);
    cm_config_error_t err = {0};
    assert_null(cm_config_load(missing, &err));
    assert_string_equal(err.msg, expected);
    assert_string_equal(err.code, "ENOENT");
    assert_int_equal(err.sys_errno, ENOENT);
    free(missing);

    cmt_write_file(f->path, "");
    snprintf(expected, sizeof(expected), "%s:1:1: empty file", f->path);
    assert_load_fails(f->path, "syntax", expected);
    cmt_write_file(f->path, " \n\t\n");
    assert_load_fails(f->path, "syntax", expected);

    cmt_write_file(f->path, "[1, 2]\n");
    snprintf(expected, sizeof(expected), "%s: top level must be a JSON object, not an array",
             f->path);
    assert_load_fails(f->path, "type", expected);

    write_bytes(f->path, "{\"a\": \"b\0c\"}", 12);
    assert_load_fails(f->path, "syntax", ":1:9: invalid JSON: NUL byte");

    cmt_write_file(f->path, "{\n  \"a\": 1,\n");
    assert_load_fails(f->path, "syntax", ":3:1: invalid JSON: unexpected end of file");
    cmt_write_file(f->path, "{\n  \"a\": [1, 2,]\n}\n");
    assert_load_fails(f->path, "syntax", ":2:14: invalid JSON: trailing comma near ']'");
    cmt_write_file(f->path, "{\n  'a': 1\n}\n");
    assert_load_fails(f->path, "syntax", ":2:3: invalid JSON: strings must be in double quotes");
    cmt_write_file(f->path, "{\n  \"é\": \"x\" // note\n}\n");
    assert_load_fails(f->path, "syntax", ":2:12: invalid JSON: comments are not allowed");

    assert_load_fails(f->dir, "EISDIR", "Is a directory");
}

static void test_deep_nesting_is_refused(void **state)
{
    fixture_t *f = *state;
    size_t n = 10000;
    char *deep = malloc(2 * n + 16);
    size_t k = 0;
    k += (size_t)sprintf(deep, "{\"a\": ");
    for (size_t i = 0; i < n; i++)
        deep[k++] = '[';
    for (size_t i = 0; i < n; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = '\0';
    cmt_write_file(f->path, deep);
    assert_load_fails(f->path, "syntax", ":1:1006: invalid JSON: nesting deeper than 1000 levels");

    /* 1000 levels are fine: 999 arrays inside the top object. */
    k = (size_t)sprintf(deep, "{\"a\": ");
    for (size_t i = 0; i < 999; i++)
        deep[k++] = '[';
    for (size_t i = 0; i < 999; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = '\0';
    cmt_write_file(f->path, deep);
    cm_config_t *cfg = load_ok(f->path);
    char *text = cm_config_text(cfg, NULL);
    assert_non_null(text);
    free(text);
    cm_config_free(cfg);
    free(deep);
}

static void test_too_large_file_is_refused(void **state)
{
    fixture_t *f = *state;
    int fd = open(f->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)CM_CONFIG_MAX_BYTES + 1), 0);
    close(fd);
    assert_load_fails(f->path, "too_large", "file too large");
}

static void test_bom_is_kept(void **state)
{
    fixture_t *f = *state;
    char text[sizeof(STYLED) + 3];
    snprintf(text, sizeof(text), "\xEF\xBB\xBF%s", STYLED);
    cmt_write_file(f->path, text);
    cm_config_t *cfg = load_ok(f->path);
    assert_true(cfg->has_bom);
    cm_config_error_t err = {0};
    assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), 0);
    assert_file_is(f->path, text, strlen(text));
    cm_config_free(cfg);

    cmt_write_file(f->path, "\xEF\xBB\xBF{\n  x\n}\n");
    assert_load_fails(f->path, "syntax", ":2:3: invalid JSON: expected a key");
}

/* A file without a final newline (Chat-O-Llama's own config.json) is saved
 * without one: only the value set changes. */
static void test_missing_final_newline_is_kept(void **state)
{
    fixture_t *f = *state;
    size_t n = strlen(STYLED);
    assert_true(n > 1 && STYLED[n - 1] == '\n');
    char *text = strndup(STYLED, n - 1);
    cmt_write_file(f->path, text);
    cm_config_t *cfg = load_ok(f->path);
    cm_config_error_t err = {0};
    assert_int_equal(cm_config_save(cfg, NULL, NULL, &err), 0);
    assert_file_is(f->path, text, n - 1);
    cm_config_free(cfg);
    free(text);
}

static void assert_prints(cJSON *node, const char *expected)
{
    char *s = cm_json_print(node, 0, NULL);
    assert_non_null(s);
    assert_string_equal(s, expected);
    free(s);
    cJSON_Delete(node);
}

static void test_numbers_print_shortest(void **state)
{
    (void)state;
    assert_prints(cJSON_CreateNumber(0.7), "0.7");
    assert_prints(cJSON_CreateNumber(1e-05), "1e-05");
    assert_prints(cJSON_CreateNumber(3), "3");
    assert_prints(cJSON_CreateNumber(-42), "-42");
    assert_prints(cJSON_CreateNumber(0.1 + 0.2), "0.30000000000000004");
    assert_prints(cJSON_CreateNumber(1e300), "1e+300");
    assert_prints(cJSON_CreateNumber(9007199254740992.0), "9007199254740992");
    assert_prints(cJSON_CreateNumber(123456.789), "123456.789");

    cJSON *big = cJSON_CreateNumber(9007199254740993.0);
    assert_int_equal(cm_json_set_literal(big, "9007199254740993"), 0);
    long long v = 0;
    assert_true(cm_json_integer(big, &v));
    assert_int_equal(v, 9007199254740993LL);
    assert_prints(big, "9007199254740993");

    /* A kept spelling that no longer matches the value is ignored. */
    cJSON *changed = cJSON_CreateNumber(1);
    assert_int_equal(cm_json_set_literal(changed, "1.0"), 0);
    cJSON_SetNumberValue(changed, 2);
    assert_prints(changed, "2");

    cJSON *nan = cJSON_CreateNumber(NAN);
    assert_null(cm_json_print(nan, 0, NULL));
    cJSON_Delete(nan);
}

static void test_json_parse_and_print(void **state)
{
    (void)state;
    const char *text = "{\"b\":[1.0,1E5,-0,\"\\u00e9\\n\"],\"a\":{},\"c\":[]}";
    char err[256];
    cJSON *node = cm_json_parse(text, strlen(text), err, sizeof(err));
    assert_non_null(node);
    char *compact = cm_json_print(node, 0, NULL);
    assert_string_equal(compact, "{\"b\":[1.0,1E5,-0,\"\xC3\xA9\\n\"],\"a\":{},\"c\":[]}");
    free(compact);
    char *pretty = cm_json_print(node, 1, NULL);
    assert_string_equal(pretty, "{\n  \"b\": [\n    1.0,\n    1E5,\n    -0,\n    \"\xC3\xA9\\n\"\n"
                                "  ],\n  \"a\": {},\n  \"c\": []\n}");
    free(pretty);
    cJSON_Delete(node);

    /* Not NUL-terminated: only len bytes count. */
    node = cm_json_parse("[1]xyz", 3, err, sizeof(err));
    assert_non_null(node);
    cJSON_Delete(node);

    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"", "1:1: invalid JSON: unexpected end of input"},
        {"[1 2]", "1:4: invalid JSON: missing ',' or ']' near '2]'"},
        {"{\"a\" 1}", "1:6: invalid JSON: missing ':' after the key near '1}'"},
        {"{\"a\": tru}", "1:7: invalid JSON: expected a value near 'tru}'"},
        {"[\"\\ud800\"]", "1:3: invalid JSON: lone UTF-16 surrogate in string near '\\ud800\"]'"},
        {"[\"\\x\"]", "1:3: invalid JSON: invalid escape in string near '\\x\"]'"},
        {"{\"a\": \"abc", "1:7: invalid JSON: unterminated string (the input ends inside it)"},
        {"{} {}", "1:4: invalid JSON: unexpected text after the JSON value near '{}'"},
        {"[-]", "1:2: invalid JSON: invalid number near '-]'"},
        {"[\"abc\\", "1:2: invalid JSON: unterminated string (the input ends inside it)"},
        {"\n\n  [1,\n   ,2]", "4:4: invalid JSON: expected a value near ',2]'"},
        {"[\"ééééééééééééééééééééé\" x]", "1:26: invalid JSON: missing ',' or ']' near 'x]'"},
        {"[0123456789012345678901234567890]", NULL}, /* cJSON accepts leading zeros: no error */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        node = cm_json_parse(bad[i].text, strlen(bad[i].text), err, sizeof(err));
        if (bad[i].msg == NULL) {
            assert_non_null(node);
            cJSON_Delete(node);
            continue;
        }
        assert_null(node);
        if (strncmp(err, bad[i].msg, strlen(bad[i].msg)) != 0) {
            print_error("%s\n  gave '%s'\n  want '%s'\n", bad[i].text, err, bad[i].msg);
            fail();
        }
    }
}

static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Mangled texts never crash the parser or the error finder; whatever parses
 * prints, and the print parses back to the same print. */
static void test_mangled_json_never_crashes(void **state)
{
    (void)state;
    static const char alphabet[] = "{}[]\",:\\ \n0123456789.eE+-tfnul'/#\x01\xC3\xA9";
    size_t len = strlen(STYLED);
    char *buf = malloc(len + 1);
    uint64_t seed = 0x2545F4914F6CDD1Du;
    int parsed = 0;
    for (int round = 0; round < 3000; round++) {
        memcpy(buf, STYLED, len + 1);
        size_t n = len;
        int edits = 1 + (int)(next_random(&seed) % 3);
        for (int e = 0; e < edits && n > 0; e++) {
            size_t at = (size_t)(next_random(&seed) % n);
            if (next_random(&seed) % 5 == 0)
                n = at; /* cut */
            else
                buf[at] = alphabet[next_random(&seed) % (sizeof(alphabet) - 1)];
        }
        char err[256] = "";
        cJSON *node = cm_json_parse(buf, n, err, sizeof(err));
        if (node == NULL) {
            assert_true(strstr(err, "invalid JSON") != NULL);
            continue;
        }
        parsed++;
        char *once = cm_json_print(node, 1, NULL);
        assert_non_null(once);
        cJSON *again = cm_json_parse(once, strlen(once), err, sizeof(err));
        assert_non_null(again);
        char *twice = cm_json_print(again, 1, NULL);
        assert_string_equal(once, twice);
        free(once);
        free(twice);
        cJSON_Delete(again);
        cJSON_Delete(node);
    }
    print_message("%d of 3000 mangled texts still parsed\n", parsed);
    free(buf);
}

/* The repository's default config.json is in the printer's exact style and
 * carries the documented defaults. */
static void test_default_config_round_trips(void **state)
{
    (void)state;
    char *path = cmt_source("config.json");
    size_t len;
    char *original = cmt_read_file(path, &len);
    assert_non_null(original);
    cm_config_t *cfg = load_ok(path);
    size_t text_len;
    char *text = cm_config_text(cfg, &text_len);
    assert_int_equal(text_len, len);
    assert_memory_equal(text, original, len);

    static const struct {
        const char *key;
        double value;
    } numbers[] = {
        {"backend.health_check_interval", 30},
        {"ollama.timeout", 600},
        {"ollama.connect_timeout", 45},
        {"llamacpp.n_ctx", 8192},
        {"llamacpp.n_threads", -1},
        {"llamacpp.n_gpu_layers", 0},
        {"server.port", 3113},
        {"manager.start_timeout", 30},
        {"manager.stop_timeout", 10},
        {"manager.health_connect_timeout", 5},
        {"manager.health_timeout", 10},
        {"manager.restart.max_restarts", 5},
        {"manager.restart.backoff_initial", 1},
        {"manager.restart.backoff_max", 60},
        {"manager.restart.reset_after", 30},
        {"manager.fallback_after", 2},
        {"manager.fallback_cooldown", 300},
        {"manager.log_keep", 20},
    };
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
        cJSON *node = cm_config_get(cfg, numbers[i].key);
        if (!cJSON_IsNumber(node) || node->valuedouble != numbers[i].value) {
            print_error("%s is not %g\n", numbers[i].key, numbers[i].value);
            fail();
        }
    }
    assert_string_equal(cm_config_get(cfg, "backend.active")->valuestring, "ollama");
    assert_string_equal(cm_config_get(cfg, "manager.restart.policy")->valuestring, "on-failure");
    assert_string_equal(cm_config_get(cfg, "manager.app.venv")->valuestring, "auto");
    assert_true(cJSON_IsNull(cm_config_get(cfg, "manager.health_path")));
    assert_true(cJSON_IsNull(cm_config_get(cfg, "manager.policy")));
    assert_int_equal(cJSON_GetArraySize(cm_config_get(cfg, "manager.app.command")), 2);
    free(text);
    free(original);
    free(path);
    cm_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_is_byte_identical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_changes_only_that_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_creates_objects_and_keeps_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_through_a_non_object_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_and_unset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_save_keeps_the_original, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_keeps_mode_and_symlink, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_never_waits_for_the_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_error_names_line_and_column, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_files_give_clean_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deep_nesting_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_large_file_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bom_is_kept, setup, teardown),

        cmocka_unit_test_setup_teardown(test_missing_final_newline_is_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_numbers_print_shortest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_parse_and_print, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_config_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mangled_json_never_crashes, setup, teardown),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
