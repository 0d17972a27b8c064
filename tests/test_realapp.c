/*
 * End to end against the real Chat-O-Llama app (tests/support/cmreal.h): a
 * copy of the checkout with the binary dropped in, called by its path from
 * another directory, the app run by Debian's python3.  The app reads its
 * port from server.port of the file named by CONFIG_FILE and ignores PORT,
 * which the fixture app does not: these tests are what shows that a port
 * override really reaches it.  Each test stops what it started (force-stop
 * on its own copy) and removes the copy.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmreal.h"
#include "cmtest.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CMD_MS 90000
#define HTTP_MS 5000

static char *config_bytes(const char *root, size_t *len)
{
    char *path = cmt_path(root, "config.json");
    char *text = cmt_read_file(path, len);
    free(path);
    assert_non_null(text);
    return text;
}

static void assert_config_unchanged(const char *root, const char *before, size_t before_len)
{
    size_t len = 0;
    char *now = config_bytes(root, &len);
    assert_int_equal(len, before_len);
    assert_memory_equal(now, before, len);
    free(now);
}

static int marked_count(const char *root)
{
    char id[17];
    cmi_instance_id(root, id);
    pid_t pids[16];
    return cmi_marked_pids(id, pids, 16);
}

/* Waits (bounded) until no process carries the root's marker. */
static int wait_unmarked(const char *root, int timeout_ms)
{
    double end = cmt_now_ms() + timeout_ms;
    while (marked_count(root) > 0) {
        if (cmt_now_ms() > end) return 0;
        usleep(20000);
    }
    return 1;
}

static void print_failure(const char *what, const cmt_result_t *r)
{
    print_error("%s exited %d\nstdout:\n%s\nstderr:\n%s\n", what, r->code, r->out, r->err);
}

/* The drop-in: `cd / && <copy>/chat-manager start PORT` on another port than
 * server.port serves the app there, config.json stays byte-identical, and
 * status, a plain restart (same port), restart PORT and stop work the same
 * way by path. */
static void test_dropin_start_on_another_port(void **state)
{
    (void)state;
    int config_port = cmt_free_port(), port = cmt_free_port();
    char *root = cmr_copy_app(config_port);
    size_t before_len = 0;
    char *before = config_bytes(root, &before_len);
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);

    cmt_result_t r = cmr_cm(root, "/", CMD_MS, "start", port_text, NULL);
    if (r.code != 0) print_failure("start", &r);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_int_equal(cmi_http_status(port, "/api/backend/status", HTTP_MS), 200);
    assert_int_equal(cmi_http_status(config_port, "/", 500), -1);
    assert_config_unchanged(root, before, before_len);
    /* The app was given a copy of the config with only the port replaced. */
    char *app_cfg_path = cmt_path(root, "run/app-config.json");
    char *app_cfg = cmt_read_file(app_cfg_path, NULL);
    assert_non_null(app_cfg);
    char want[32];
    snprintf(want, sizeof want, "\"port\": %d", port);
    assert_non_null(strstr(app_cfg, want));
    free(app_cfg);
    free(app_cfg_path);

    r = cmr_cm(root, "/", CMD_MS, "status", NULL);
    assert_cmt_code(r, 0);
    char root_line[4200];
    snprintf(root_line, sizeof root_line, "Root:       %s\n", root);
    assert_non_null(strstr(r.out, root_line));
    char port_line[64];
    snprintf(port_line, sizeof port_line, "Port:       %d\n", port);
    assert_non_null(strstr(r.out, port_line));
    cmt_result_free(&r);
    cJSON *st = cmi_read_state(root);
    assert_non_null(st);
    long long first_pid = cmi_state_int(st, "pid");
    cJSON_Delete(st);

    /* A plain restart keeps the port that worked. */
    r = cmr_cm(root, "/", CMD_MS, "restart", NULL);
    if (r.code != 0) print_failure("restart", &r);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_int_equal(cmi_http_status(port, "/api/backend/status", HTTP_MS), 200);
    st = cmi_read_state(root);
    assert_non_null(st);
    assert_true(cmi_state_int(st, "pid") > 0);
    assert_true(cmi_state_int(st, "pid") != first_pid);
    cJSON_Delete(st);
    assert_config_unchanged(root, before, before_len);

    /* restart PORT moves it. */
    int moved = cmt_free_port();
    char moved_text[16];
    snprintf(moved_text, sizeof moved_text, "%d", moved);
    r = cmr_cm(root, "/", CMD_MS, "restart", moved_text, NULL);
    if (r.code != 0) print_failure("restart PORT", &r);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_int_equal(cmi_http_status(moved, "/api/backend/status", HTTP_MS), 200);
    assert_int_equal(cmi_http_status(port, "/", 500), -1);
    assert_config_unchanged(root, before, before_len);

    r = cmr_cm(root, "/", CMD_MS, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_int_equal(cmi_http_status(moved, "/", 500), -1);
    assert_true(wait_unmarked(root, 10000));
    assert_config_unchanged(root, before, before_len);
    free(before);
    cmr_remove(root);
}

/* `start` with no port: the app serves server.port and reads config.json
 * itself (no run/app-config.json). */
static void test_start_on_the_configured_port(void **state)
{
    (void)state;
    int port = cmt_free_port();
    char *root = cmr_copy_app(port);
    cmt_result_t r = cmr_cm(root, root, CMD_MS, "start", NULL);
    if (r.code != 0) print_failure("start", &r);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_int_equal(cmi_http_status(port, "/", HTTP_MS), 200);
    char *app_cfg = cmt_path(root, "run/app-config.json");
    assert_null(cmt_read_file(app_cfg, NULL));
    free(app_cfg);
    r = cmr_cm(root, root, CMD_MS, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_true(wait_unmarked(root, 10000));
    cmr_remove(root);
}

/* An app that listens on another port than the one it was started for (here
 * manager.app.env points CONFIG_FILE at another config) ends the start at
 * once with the port it uses, not after start_timeout (60 s here); then a
 * plain restart does not reuse the port of that failed start. */
static void test_wrong_port_fails_fast_and_is_not_reused(void **state)
{
    (void)state;
    int config_port = cmt_free_port(), other_port = cmt_free_port(), port = cmt_free_port();
    char *root = cmr_copy_app(config_port);
    size_t orig_len = 0;
    char *orig = config_bytes(root, &orig_len);
    /* other.json: the same config on other_port. */
    char *other = cmt_path(root, "other.json");
    char from[32], to[32];
    snprintf(from, sizeof from, "\"port\": %d", config_port);
    snprintf(to, sizeof to, "\"port\": %d", other_port);
    cmr_edit_config(root, from, to);
    char *other_text = config_bytes(root, NULL);
    cmt_write_file(other, other_text);
    free(other_text);
    char *cfg_path = cmt_path(root, "config.json");
    cmt_write_file(cfg_path, orig);
    char manager[4400];
    snprintf(
        manager, sizeof manager,
        "\"manager\": {\"app\": {\"env\": {\"CONFIG_FILE\": \"%s\"}}, \"start_timeout\": 60},\n"
        "  \"server\": {",
        other);
    cmr_edit_config(root, "\"server\": {", manager);

    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    cmt_result_t r = cmr_cm(root, "/", CMD_MS, "start", port_text, NULL);
    if (r.code != 1) print_failure("start", &r);
    assert_cmt_code(r, 1);
    char want[4400];
    snprintf(want, sizeof want,
             "[ERROR] the app listens on %d, not on %d (it reads server.port from %s)\n",
             other_port, port, other);
    if (strstr(r.err, want) == NULL) print_failure("start", &r);
    assert_non_null(strstr(r.err, want));
    assert_true(r.ms < 30000); /* well before start_timeout */
    cmt_result_free(&r);
    assert_true(wait_unmarked(root, 10000));

    /* Back to a config the app follows: a plain restart uses server.port,
     * not the port whose start failed. */
    cmt_write_file(cfg_path, orig);
    r = cmr_cm(root, "/", CMD_MS, "restart", NULL);
    if (r.code != 0) print_failure("restart", &r);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_int_equal(cmi_http_status(config_port, "/", HTTP_MS), 200);
    assert_int_equal(cmi_http_status(port, "/", 500), -1);
    r = cmr_cm(root, "/", CMD_MS, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    free(cfg_path);
    free(other);
    free(orig);
    cmr_remove(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropin_start_on_another_port),
        cmocka_unit_test(test_start_on_the_configured_port),
        cmocka_unit_test(test_wrong_port_fails_fast_and_is_not_reused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
