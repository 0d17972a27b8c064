/*
 * The first start prepares the app like the old script: no venv/ or .venv/,
 * no VIRTUAL_ENV, manager.app.venv "auto" and a Python project in the root
 * make `start` create venv/ and install the app, showing the tools' output
 * as progress.  Fake `uv`, `python3` and `pip` programs on PATH stand in for
 * the real ones (nothing reaches the network); they record how they were
 * called.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct venv_fixture {
    char *root;
    char *bin; /* the fake tools */
    int port;
    char path_env[512];
    char calls_env[512];
} venv_fixture_t;

static void write_program(const char *dir, const char *name, const char *text)
{
    char *path = cmt_path(dir, name);
    cmt_write_file(path, text);
    assert_int_equal(chmod(path, 0755), 0);
    free(path);
}

/* `uv venv DIR` makes DIR/bin; `uv sync` and `uv pip` print progress and
 * succeed.  Every call is appended to $CALLS with the variables it saw. */
static const char fake_uv[] =
    "#!/bin/sh\n"
    "echo \"uv $* cwd=$(pwd) VIRTUAL_ENV=$VIRTUAL_ENV"
    " UV_PROJECT_ENVIRONMENT=$UV_PROJECT_ENVIRONMENT\" >> \"$CALLS\"\n"
    "case \"$1\" in\n"
    "venv) mkdir -p \"$2/bin\" && echo \"Creating virtual environment at: $2\" >&2 ;;\n"
    "sync) echo 'Resolved 3 packages in 1ms' >&2; echo 'Installed 3 packages in 2ms' ;;\n"
    "*) exit 2 ;;\n"
    "esac\n";

/* `python3 -m venv DIR` makes DIR/bin with a pip that does what
 * $PIP_RESULT says (fail: exit 1 with pip's error). */
static const char fake_python3[] =
    "#!/bin/sh\n"
    "echo \"python3 $*\" >> \"$CALLS\"\n"
    "if [ \"$1 $2\" = '-m venv' ]; then\n"
    "  mkdir -p \"$3/bin\" || exit 1\n"
    "  cat > \"$3/bin/pip\" <<'EOF'\n"
    "#!/bin/sh\n"
    "echo \"pip $* cwd=$(pwd) VIRTUAL_ENV=$VIRTUAL_ENV\" >> \"$CALLS\"\n"
    "echo 'Processing /app'\n"
    "if [ \"$PIP_RESULT\" = fail ]; then\n"
    "  echo 'ERROR: Could not find a version that satisfies the requirement flask' >&2\n"
    "  exit 1\n"
    "fi\n"
    "echo 'Successfully installed chat-o-llama-0.1'\n"
    "EOF\n"
    "  chmod 755 \"$3/bin/pip\"\n"
    "  exit 0\n"
    "fi\n"
    "exit 1\n";

/* A root whose app is the fixture app and which is a Python project. */
static venv_fixture_t *fixture_new(int with_uv, const char *venv_setting)
{
    venv_fixture_t *f = calloc(1, sizeof *f);
    f->root = cmt_tempdir();
    f->bin = cmt_tempdir();
    f->port = cmt_free_port();
    cmi_write_config(f->root, f->port, "\"start_timeout\": 10, \"stop_timeout\": 5");
    if (venv_setting != NULL) {
        /* manager.app.venv, beside the command. */
        char *path = cmt_path(f->root, "config.json");
        char *text = cmt_read_file(path, NULL);
        char *at = strstr(text, "\"command\"");
        assert_non_null(at);
        char cfg[4096];
        snprintf(cfg, sizeof cfg, "%.*s\"venv\": \"%s\", %s", (int)(at - text), text, venv_setting,
                 at);
        cmt_write_file(path, cfg);
        free(text);
        free(path);
    }
    char *project = cmt_path(f->root, "pyproject.toml");
    cmt_write_file(project, "[project]\nname = \"chat-o-llama\"\nversion = \"0.1\"\n");
    free(project);
    if (with_uv) write_program(f->bin, "uv", fake_uv);
    write_program(f->bin, "python3", fake_python3);
    snprintf(f->path_env, sizeof f->path_env, "PATH=%s:/usr/bin:/bin", f->bin);
    snprintf(f->calls_env, sizeof f->calls_env, "CALLS=%s/calls", f->bin);
    return f;
}

static cmt_result_t cm(venv_fixture_t *f, const char *cmd, const char *extra_env)
{
    const char *env[] = {f->path_env, f->calls_env, "VIRTUAL_ENV=", extra_env, NULL};
    return cmt_cm(f->root, env, 60000, cmd, NULL);
}

static char *calls(venv_fixture_t *f)
{
    char *path = cmt_path(f->bin, "calls");
    char *text = cmt_read_file(path, NULL);
    free(path);
    return text ? text : strdup("");
}

static int exists(const char *dir, const char *name)
{
    char *path = cmt_path(dir, name);
    int yes = access(path, F_OK) == 0;
    free(path);
    return yes;
}

static void fixture_free(venv_fixture_t *f)
{
    cmt_result_t r = cm(f, "force-stop", NULL);
    cmt_result_free(&r);
    cmt_rmtree(f->root);
    cmt_rmtree(f->bin);
    free(f->root);
    free(f->bin);
    free(f);
}

/* With uv: `uv venv venv`, then `uv sync` into venv/ (not uv's default
 * .venv), their output as progress lines; the app runs in the venv; the
 * next start finds it and creates nothing. */
static void first_start_creates_the_venv_with_uv(void **state)
{
    (void)state;
    venv_fixture_t *f = fixture_new(1, NULL);
    cmt_result_t r = cm(f, "start", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "[INFO]   Creating virtual environment at: "));
    assert_non_null(strstr(r.out, "[INFO]   Resolved 3 packages"));
    assert_non_null(strstr(r.out, "[INFO]   Installed 3 packages"));
    cmt_result_free(&r);
    assert_true(exists(f->root, "venv/bin"));
    assert_false(exists(f->root, "run/venv-incomplete"));
    char *text = calls(f);
    char want[1024];
    snprintf(want, sizeof want, "uv venv %s/venv cwd=%s", f->root, f->root);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof want, "uv sync cwd=%s VIRTUAL_ENV=%s/venv UV_PROJECT_ENVIRONMENT=%s/venv",
             f->root, f->root, f->root);
    assert_non_null(strstr(text, want));
    free(text);

    /* The app was started with the venv activated. */
    int app = cmi_wait_state(f->root, "running", 2000);
    assert_true(app > 0);
    char entry[600];
    snprintf(entry, sizeof entry, "VIRTUAL_ENV=%s/venv", f->root);
    assert_true(cmi_environ_has(app, entry));

    r = cm(f, "restart", NULL);
    assert_cmt_code(r, 0);
    assert_null(strstr(r.out, "creating"));
    cmt_result_free(&r);
    text = calls(f);
    assert_int_equal(cmi_count(text, "uv venv"), 1);
    free(text);
    fixture_free(f);
}

/* Without uv: `python3 -m venv`, then the venv's `pip install .`.  A failed
 * install says what failed and leaves no venv/ behind; the next start
 * tries again. */
static void failed_install_leaves_no_half_venv(void **state)
{
    (void)state;
    venv_fixture_t *f = fixture_new(0, NULL);
    cmt_result_t r = cm(f, "start", "PIP_RESULT=fail");
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.out, "[INFO]   ERROR: Could not find a version"));
    char want[1024];
    snprintf(want, sizeof want,
             "could not install the app: '%s/venv/bin/pip install .' exited with code 1", f->root);
    assert_non_null(strstr(r.err, want));
    cmt_result_free(&r);
    assert_false(exists(f->root, "venv"));
    assert_false(exists(f->root, "run/venv-incomplete"));
    assert_false(cmi_lock_held(f->root));

    r = cm(f, "start", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "[INFO]   Successfully installed chat-o-llama-0.1"));
    cmt_result_free(&r);
    char *text = calls(f);
    assert_int_equal(cmi_count(text, "python3 -m venv"), 2);
    snprintf(want, sizeof want, "pip install . cwd=%s VIRTUAL_ENV=%s/venv", f->root, f->root);
    assert_non_null(strstr(text, want));
    free(text);
    fixture_free(f);
}

/* An earlier preparation that was interrupted (run/venv-incomplete still
 * there) is not trusted: its venv/ is removed and made again. */
static void interrupted_preparation_is_redone(void **state)
{
    (void)state;
    venv_fixture_t *f = fixture_new(1, NULL);
    char *dir = cmt_path(f->root, "run");
    mkdir(dir, 0700);
    free(dir);
    dir = cmt_path(f->root, "venv");
    mkdir(dir, 0755);
    char *bin = cmt_path(dir, "bin");
    mkdir(bin, 0755);
    char *half = cmt_path(bin, "half-installed");
    cmt_write_file(half, "x");
    char *pending = cmt_path(f->root, "run/venv-incomplete");
    cmt_write_file(pending, "venv\n");
    cmt_result_t r = cm(f, "start", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "left incomplete by an earlier start"));
    cmt_result_free(&r);
    assert_false(access(half, F_OK) == 0);
    assert_true(access(bin, F_OK) == 0);
    assert_false(access(pending, F_OK) == 0);
    free(half);
    free(pending);
    free(bin);
    free(dir);
    fixture_free(f);
}

/* "system" uses the interpreter as it is, and so does an activated
 * VIRTUAL_ENV: nothing is created. */
static void system_or_active_venv_creates_nothing(void **state)
{
    (void)state;
    venv_fixture_t *f = fixture_new(1, "system");
    cmt_result_t r = cm(f, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_false(exists(f->root, "venv"));
    char *text = calls(f);
    assert_null(strstr(text, "uv "));
    free(text);
    fixture_free(f);

    f = fixture_new(1, NULL);
    char active[600];
    snprintf(active, sizeof active, "VIRTUAL_ENV=%s", f->bin);
    const char *env[] = {f->path_env, f->calls_env, active, NULL};
    r = cmt_cm(f->root, env, 60000, "start", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    assert_false(exists(f->root, "venv"));
    text = calls(f);
    assert_null(strstr(text, "uv "));
    assert_null(strstr(text, "-m venv"));
    free(text);
    fixture_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(first_start_creates_the_venv_with_uv),
        cmocka_unit_test(failed_install_leaves_no_half_venv),
        cmocka_unit_test(interrupted_preparation_is_redone),
        cmocka_unit_test(system_or_active_venv_creates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
