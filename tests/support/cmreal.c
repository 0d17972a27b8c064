/* See cmreal.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cmtest.h"
#include "cmreal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const cmr_env[] = {"PATH=/usr/bin:/bin", "VIRTUAL_ENV=/usr",
                               "CHAT_MANAGER_ROOT=", "CONFIG_FILE=", NULL};

void cmr_require(void)
{
    const char *app = cmt_env("CM_REAL_APP");
    char *script = cmt_path(app, "app.py");
    int found = access(script, R_OK) == 0;
    free(script);
    if (!found) fail_msg("the real Chat-O-Llama app is not at %s (CM_REAL_APP)", app);
    const char *argv[] = {"/usr/bin/python3", "-c", "import flask, requests", NULL};
    cmt_result_t r = cmt_run(argv, NULL, 30000);
    if (r.code != 0)
        fail_msg("/usr/bin/python3 cannot import flask and requests (install python3-flask "
                 "python3-requests: scripts/deps does): %s",
                 r.err);
    cmt_result_free(&r);
}

void cmr_edit_config(const char *root, const char *from, const char *text)
{
    char *path = cmt_path(root, "config.json");
    size_t len = 0;
    char *cfg = cmt_read_file(path, &len);
    assert_non_null(cfg);
    char *at = strstr(cfg, from);
    if (at == NULL) fail_msg("%s has no %s", path, from);
    size_t head = (size_t)(at - cfg), flen = strlen(from), tlen = strlen(text);
    char *out = malloc(len - flen + tlen + 1);
    memcpy(out, cfg, head);
    memcpy(out + head, text, tlen);
    memcpy(out + head + tlen, at + flen, len - head - flen + 1);
    cmt_write_file(path, out);
    free(out);
    free(cfg);
    free(path);
}

char *cmr_copy_app(int port)
{
    cmr_require();
    char *root = cmt_tempdir();
    char src[4096];
    snprintf(src, sizeof src, "%s/.", cmt_env("CM_REAL_APP"));
    const char *cp_app[] = {"/bin/cp", "-a", src, root, NULL};
    cmt_result_t r = cmt_run(cp_app, NULL, 60000);
    assert_int_equal(r.code, 0);
    cmt_result_free(&r);
    char *exe = cmt_path(root, "chat-manager");
    const char *cp_exe[] = {"/bin/cp", cmt_env("CM_BINARY"), exe, NULL};
    r = cmt_run(cp_exe, NULL, 60000);
    assert_int_equal(r.code, 0);
    cmt_result_free(&r);
    free(exe);
    char port_text[32];
    snprintf(port_text, sizeof port_text, "\"port\": %d", port);
    cmr_edit_config(root, "\"port\": 3113", port_text);
    cmr_edit_config(root, "\"host\": \"0.0.0.0\"", "\"host\": \"127.0.0.1\"");
    return root;
}

cmt_result_t cmr_cm(const char *root, const char *cwd, int timeout_ms, ...)
{
    const char *argv[64];
    int n = 0;
    char *exe = cmt_path(root, "chat-manager");
    argv[n++] = exe;
    va_list ap;
    va_start(ap, timeout_ms);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 63)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    cmt_result_t r = cmt_run_in(cwd, argv, cmr_env, timeout_ms);
    free(exe);
    return r;
}

void cmr_remove(char *root)
{
    if (root == NULL) return;
    cmt_result_t r = cmr_cm(root, root, 60000, "force-stop", NULL);
    cmt_result_free(&r);
    cmt_rmtree(root);
    free(root);
}
