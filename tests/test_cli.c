/*
 * The command line as users of pm2, supervisorctl and systemctl expect it:
 * --version, help per command, shell completion (checked by the shells
 * themselves), the man page (man -l, lexgrog), the Debian package (built
 * with cpack, installed into a throwaway root), logs that behave in pipes,
 * --json outcomes checked against docs/json.schema.json, resource use in
 * status, and the size cap of the session log.  Real processes and files;
 * every wait bounded.
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
#include <time.h>
#include <unistd.h>

#define RUN_MS 15000

static char path_env[8192]; /* PATH=<dir of the binary>:$PATH */

static const char *const *shell_env(void)
{
    static const char *env[3];
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", cmt_env("CM_BINARY"));
    char *slash = strrchr(bin, '/');
    if (slash != NULL) *slash = '\0';
    const char *path = getenv("PATH");
    snprintf(path_env, sizeof path_env, "PATH=%s:%s", bin, path ? path : "/usr/bin:/bin");
    env[0] = path_env;
    env[1] = "HOME=/tmp";
    env[2] = NULL;
    return env;
}

/* Runs a shell script with the binary first on PATH. */
static cmt_result_t sh(const char *script, int timeout_ms)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    return cmt_run(argv, shell_env(), timeout_ms);
}

static int have(const char *program)
{
    char script[256];
    snprintf(script, sizeof script, "command -v %s >/dev/null", program);
    cmt_result_t r = sh(script, RUN_MS);
    int ok = r.code == 0;
    cmt_result_free(&r);
    return ok;
}

static void expect_contains(const char *text, const char *needle, const char *what)
{
    if (strstr(text, needle) == NULL) {
        print_error("%s lacks \"%s\":\n%s\n", what, needle, text);
        fail();
    }
}

/* Checks a JSON document against a definition of docs/json.schema.json
 * with Python's jsonschema (Debian's python3-jsonschema). */
static void expect_schema(const char *json, const char *def)
{
    char *dir = cmt_tempdir();
    char *doc = cmt_path(dir, "doc.json");
    cmt_write_file(doc, json);
    char *schema = cmt_source("docs/json.schema.json");
    const char *argv[] = {"/usr/bin/python3",
                          "-c",
                          "import json, sys, jsonschema\n"
                          "schema = json.load(open(sys.argv[1]))\n"
                          "sub = dict(schema['$defs'][sys.argv[2]])\n"
                          "sub['$defs'] = schema['$defs']\n"
                          "doc = json.load(open(sys.argv[3]))\n"
                          "jsonschema.Draft202012Validator(sub).validate(doc)\n",
                          schema,
                          def,
                          doc,
                          NULL};
    cmt_result_t r = cmt_run(argv, NULL, RUN_MS);
    if (r.code != 0) {
        print_error("not a valid '%s' (exit %d):\n%s\n%s\n", def, r.code, json, r.err);
        fail();
    }
    cmt_result_free(&r);
    free(schema);
    free(doc);
    cmt_rmtree(dir);
    free(dir);
}

/* Writes <root>/<sub>/<name> (making <sub>). */
static void put(const char *root, const char *sub, const char *name, const char *text)
{
    char *dir = cmt_path(root, sub);
    mkdir(dir, 0755);
    char *file = cmt_path(dir, name);
    cmt_write_file(file, text);
    free(file);
    free(dir);
}

/* ---- 1. version ----------------------------------------------------------- */

static void version_names_the_libraries(void **state)
{
    (void)state;
    cmt_result_t r = cmt_cm(NULL, NULL, RUN_MS, "--version", NULL);
    assert_cmt_code(r, 0);
    expect_contains(r.out, "chat-manager ", "--version");
    expect_contains(r.out, "Lua 5.4", "--version");
    expect_contains(r.out, "libuv 1.", "--version");
    expect_contains(r.out, "libcurl/", "--version");
    expect_contains(r.out, " build)", "--version");
    cmt_result_t v = cmt_cm(NULL, NULL, RUN_MS, "version", NULL);
    assert_int_equal(v.code, 0);
    assert_string_equal(v.out, r.out);
    cmt_result_t j = cmt_cm(NULL, NULL, RUN_MS, "version", "--json", NULL);
    assert_int_equal(j.code, 0);
    expect_schema(j.out, "version");
    cmt_result_free(&r);
    cmt_result_free(&v);
    cmt_result_free(&j);
    /* Not a git checkout: the project version. */
    char *dir = cmt_tempdir();
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "cmake -DSRC='%s' -DOUT='%s/version.h' -DFALLBACK=9.8.7 -DBUILD_TYPE=Release "
             "-P '%s/cmake/version.cmake' && cat '%s/version.h'",
             dir, dir, cmt_env("CM_SOURCE_DIR"), dir);
    cmt_result_t c = sh(cmd, RUN_MS);
    assert_int_equal(c.code, 0);
    expect_contains(c.out, "#define CM_BUILD_VERSION \"9.8.7\"", "version.h");
    expect_contains(c.out, "#define CM_BUILD_TYPE \"Release\"", "version.h");
    cmt_result_free(&c);
    cmt_rmtree(dir);
    free(dir);
}

/* ---- 2. help per command ------------------------------------------------------ */

static const char *const builtins[] = {"start",  "stop",    "restart",    "force-stop",
                                       "status", "logs",    "run",        "backend",
                                       "help",   "version", "completion", NULL};

static void help_per_command(void **state)
{
    (void)state;
    char *root = cmt_tempdir();
    for (int i = 0; builtins[i] != NULL; i++) {
        const char *name = builtins[i];
        cmt_result_t a = cmt_cm(root, NULL, RUN_MS, "help", name, NULL);
        cmt_result_t b = cmt_cm(root, NULL, RUN_MS, name, "--help", NULL);
        cmt_result_t c = cmt_cm(root, NULL, RUN_MS, name, "-h", NULL);
        assert_int_equal(a.code, 0);
        assert_int_equal(b.code, 0);
        assert_int_equal(c.code, 0);
        char usage[64];
        snprintf(usage, sizeof usage, "Usage: chat-manager %s", name);
        expect_contains(a.out, usage, name);
        expect_contains(a.out, "Example:", name);
        expect_contains(a.out, "--root DIR", name);
        assert_string_equal(a.out, b.out);
        assert_string_equal(a.out, c.out);
        assert_string_equal(b.err, "");
        cmt_result_free(&a);
        cmt_result_free(&b);
        cmt_result_free(&c);
    }
    /* start --help is help, not a port. */
    cmt_result_t s = cmt_cm(root, NULL, RUN_MS, "start", "--help", NULL);
    expect_contains(s.out, "Arguments:", "start --help");
    expect_contains(s.out, "port", "start --help");
    assert_null(strstr(s.out, "Invalid port"));
    assert_null(strstr(s.err, "Invalid port"));
    cmt_result_free(&s);
    /* A user command's own usage, options and example. */
    put(root, "commands", "greet.lua",
        "return { name = 'greet', usage = 'greet [name]', summary = 'say hello',\n"
        "  options = { { '-l, --loud', 'shout it' } },\n"
        "  example = 'chat-manager greet world',\n"
        "  run = function() return 0 end }\n");
    cmt_result_t u = cmt_cm(root, NULL, RUN_MS, "greet", "--help", NULL);
    assert_int_equal(u.code, 0);
    expect_contains(u.out, "Usage: chat-manager greet [name]", "greet --help");
    expect_contains(u.out, "-l, --loud", "greet --help");
    expect_contains(u.out, "chat-manager greet world", "greet --help");
    expect_contains(u.out, "Defined in ", "greet --help");
    cmt_result_free(&u);
    cmt_result_t o = cmt_cm(root, NULL, RUN_MS, "help", NULL);
    expect_contains(o.out, "greet [name]", "help");
    cmt_result_free(&o);
    cmt_rmtree(root);
    free(root);
}

/* ---- 3. completion ---------------------------------------------------------- */

/* A root with its own command and its own backend. */
static char *completion_root(void)
{
    char *root = cmt_tempdir();
    put(root, "commands", "greet.lua",
        "return { name = 'greet', summary = 'hi', run = function() end }\n");
    put(root, "backends", "vllm.lua",
        "return { name = 'vllm', summary = 'vLLM',\n"
        "  check = function() return { healthy = true } end }\n");
    return root;
}

/* What bash completes for the words (the last one is being completed). */
static char *bash_complete(const char *script, const char *root, const char *words)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "source '%s'; COMP_WORDS=(chat-manager --root '%s' %s); "
             "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _chat_manager; echo \"${COMPREPLY[*]}\"",
             script, root, words);
    const char *argv[] = {"/bin/bash", "-c", cmd, NULL};
    cmt_result_t r = cmt_run(argv, shell_env(), RUN_MS);
    assert_cmt_code(r, 0);
    char *out = strdup(r.out);
    cmt_result_free(&r);
    return out;
}

static void completion_scripts(void **state)
{
    (void)state;
    char *root = completion_root();
    const char *shells[][2] = {{"bash", "bash -n"}, {"zsh", "zsh -n"}, {"fish", "fish -n"}};
    for (size_t i = 0; i < 3; i++) {
        cmt_result_t r = cmt_cm(root, NULL, RUN_MS, "completion", shells[i][0], NULL);
        assert_cmt_code(r, 0);
        char *file = cmt_path(root, shells[i][0]);
        cmt_write_file(file, r.out);
        cmt_result_free(&r);
        if (!have(shells[i][0])) {
            print_message("%s is not installed: its syntax check is skipped\n", shells[i][0]);
        } else {
            char cmd[4096];
            snprintf(cmd, sizeof cmd, "%s '%s'", shells[i][1], file);
            cmt_result_t c = sh(cmd, RUN_MS);
            if (c.code != 0) print_error("%s: %s\n", cmd, c.err);
            assert_int_equal(c.code, 0);
            cmt_result_free(&c);
        }
        free(file);
    }
    char *script = cmt_path(root, "bash");
    struct {
        const char *words;
        const char *want[4];
    } cases[] = {
        {"st", {"start", "stop", "status", NULL}},
        {"gr", {"greet", NULL}},
        {"backend s", {"status", "switch", NULL}},
        {"backend switch ''", {"ollama", "llamacpp", "vllm", "--restart"}},
        {"logs --l", {"--lines", "--list", NULL}},
        {"completion ''", {"bash", "zsh", "fish", NULL}},
        {"help gr", {"greet", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = bash_complete(script, root, cases[i].words);
        for (int k = 0; k < 4 && cases[i].want[k] != NULL; k++) {
            char what[256];
            snprintf(what, sizeof what, "bash completion of '%s'", cases[i].words);
            expect_contains(got, cases[i].want[k], what);
        }
        free(got);
    }
    /* A hostile root's command names are never shell code: not at Tab
     * time (compgen -W expands its words) nor in a generated script. */
    char evil[4096];
    snprintf(evil, sizeof evil,
             "return { name = '$(touch %s/pwned)', summary = 'x',\n"
             "  options = { { '--x', 'y' } }, run = function() end }\n",
             root);
    put(root, "commands", "evil.lua", evil);
    char *all = bash_complete(script, root, "''");
    free(all);
    cmt_result_t regen = cmt_cm(root, NULL, RUN_MS, "completion", "bash", NULL);
    assert_null(strstr(regen.out, "pwned"));
    cmt_result_free(&regen);
    char *pwned = cmt_path(root, "pwned");
    struct stat pst;
    assert_int_not_equal(stat(pwned, &pst), 0);
    free(pwned);
    /* Nothing that does not start with the word. */
    char *got = bash_complete(script, root, "sta");
    assert_string_equal(got, "start status\n");
    free(got);
    free(script);
    if (have("fish")) {
        char cmd[8192];
        snprintf(
            cmd, sizeof cmd,
            "fish -c \"source '%s/fish'; complete -C 'chat-manager --root %s backend switch v'\"",
            root, root);
        cmt_result_t f = sh(cmd, RUN_MS);
        assert_int_equal(f.code, 0);
        expect_contains(f.out, "vllm", "fish completion");
        cmt_result_free(&f);
    }
    cmt_rmtree(root);
    free(root);
}

/* ---- 4. man page and the package ------------------------------------------- */

static void man_page(void **state)
{
    (void)state;
    char *page = cmt_path(cmt_env("CM_BUILD_DIR"), "generated/chat-manager.1");
    struct stat st;
    assert_int_equal(stat(page, &st), 0);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "MANWIDTH=100 man -l '%s'", page);
    cmt_result_t r = sh(cmd, RUN_MS);
    assert_cmt_code(r, 0);
    assert_string_equal(r.err, "");
    expect_contains(r.out, "NAME", "man page");
    expect_contains(r.out, "EXIT STATUS", "man page");
    for (int i = 0; builtins[i] != NULL; i++) {
        char want[64];
        snprintf(want, sizeof want, "chat-manager %s", builtins[i]);
        expect_contains(r.out, want, "man page");
    }
    expect_contains(r.out, "process.pid", "man page (FILES from the README)");
    cmt_result_free(&r);
    snprintf(cmd, sizeof cmd, "lexgrog '%s'", page);
    cmt_result_t l = sh(cmd, RUN_MS);
    assert_int_equal(l.code, 0);
    expect_contains(l.out, "\"chat-manager - ", "lexgrog");
    cmt_result_free(&l);
    free(page);
}

static void debian_package(void **state)
{
    (void)state;
    if (!have("cpack") || !have("dpkg-deb")) {
        skip();
    }
    char *dir = cmt_tempdir();
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && cpack -G DEB --config '%s/CPackConfig.cmake' -B '%s' >cpack.log 2>&1 "
             "|| { cat cpack.log; exit 1; }; ls *.deb",
             dir, cmt_env("CM_BUILD_DIR"), dir);
    cmt_result_t r = sh(cmd, 240000);
    assert_cmt_code(r, 0);
    char deb[4096];
    snprintf(deb, sizeof deb, "%s/%.*s", dir, (int)strcspn(r.out, "\n"), r.out);
    cmt_result_free(&r);
    snprintf(cmd, sizeof cmd, "dpkg-deb -I '%s'", deb);
    cmt_result_t info = sh(cmd, RUN_MS);
    assert_int_equal(info.code, 0);
    expect_contains(info.out, "Package: chat-manager", "dpkg-deb -I");
    expect_contains(info.out, "libcjson1", "Depends");
    expect_contains(info.out, "libcurl4", "Depends");
    expect_contains(info.out, "libc6", "Depends");
    cmt_result_free(&info);
    /* Every dependency is a Debian package (installed here, as the build
     * needed it). */
    snprintf(cmd, sizeof cmd,
             "dpkg-deb -f '%s' Depends | tr ',' '\\n' | sed 's/(.*//; s/ //g' | "
             "while read p; do dpkg -s \"$p\" >/dev/null 2>&1 || echo \"missing $p\"; done",
             deb);
    cmt_result_t deps = sh(cmd, RUN_MS);
    assert_string_equal(deps.out, "");
    cmt_result_free(&deps);
    /* cmake --install puts the same files in their places. */
    snprintf(cmd, sizeof cmd,
             "cmake --install '%s' --prefix '%s/prefix' >/dev/null && cd '%s/prefix' && "
             "test -x bin/chat-manager && test -f share/man/man1/chat-manager.1 && "
             "test -f share/bash-completion/completions/chat-manager && "
             "test -f share/zsh/vendor-completions/_chat-manager && "
             "test -f share/fish/vendor_completions.d/chat-manager.fish",
             cmt_env("CM_BUILD_DIR"), dir, dir);
    cmt_result_t inst = sh(cmd, 60000);
    if (inst.code != 0) print_error("%s\n%s\n", inst.out, inst.err);
    assert_int_equal(inst.code, 0);
    cmt_result_free(&inst);
    /* Installed into a throwaway root, never into the system. */
    snprintf(cmd, sizeof cmd,
             "dpkg -x '%s' '%s/root' && cd '%s/root' && "
             "test -x usr/bin/chat-manager && test -f usr/share/man/man1/chat-manager.1 && "
             "test -f usr/share/bash-completion/completions/chat-manager && "
             "test -f usr/share/zsh/vendor-completions/_chat-manager && "
             "test -f usr/share/fish/vendor_completions.d/chat-manager.fish && "
             "./usr/bin/chat-manager --version",
             deb, dir, dir);
    cmt_result_t x = sh(cmd, RUN_MS);
    if (x.code != 0) print_error("%s\n%s\n", x.out, x.err);
    assert_int_equal(x.code, 0);
    expect_contains(x.out, "chat-manager ", "installed --version");
    cmt_result_free(&x);
    cmt_rmtree(dir);
    free(dir);
}

/* ---- 5. logs -------------------------------------------------------------- */

/* A root with two session logs: an older one that ended, and the newest,
 * with a line an hour old and a line from now. */
static char *logs_root(void)
{
    char *root = cmt_tempdir();
    put(root, "logs", "chat-o-llama_20250101_100000.log",
        "old session\n"
        "2025-01-01 10:00:01 [chat-manager] running -> stopped on exited (exit code 3)\n");
    char text[16384] = "";
    char stamp[32];
    time_t now = time(NULL), hour_ago = now - 3600;
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", localtime(&hour_ago));
    size_t n = (size_t)snprintf(text, sizeof text, "%s an hour ago\n", stamp);
    for (int i = 1; i <= 100; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "line %d\n", i);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", localtime(&now));
    snprintf(text + n, sizeof text - n, "%s just now\nafter it\n", stamp);
    put(root, "logs", "chat-o-llama_20250102_100000.log", text);
    return root;
}

static void logs_in_a_pipe_exits_at_once(void **state)
{
    (void)state;
    char *root = logs_root();
    const char *variants[] = {"logs", "logs -f", "logs -n 5 --follow"};
    for (size_t i = 0; i < 3; i++) {
        char cmd[8192];
        snprintf(cmd, sizeof cmd, "chat-manager --root '%s' %s | head -2", root, variants[i]);
        cmt_result_t r = sh(cmd, 10000);
        assert_cmt_code(r, 0);
        if (r.ms >= 1000) print_error("'%s' took %.0f ms\n", cmd, r.ms);
        assert_true(r.ms < 1000);
        assert_int_equal(cmi_count(r.out, "\n"), 2);
        assert_null(strstr(r.out, "[INFO]")); /* the header is on stderr */
        expect_contains(r.err, "[INFO] Showing ", "stderr");
        cmt_result_free(&r);
    }
    cmt_rmtree(root);
    free(root);
}

/* A reader slower than the log: `logs -f` blocks on the full pipe and loses
 * nothing of what the log gains (a non-blocking stdout would fail with
 * EAGAIN and end the follow early). */
static void logs_to_a_slow_reader_loses_nothing(void **state)
{
    (void)state;
    char *root = cmt_tempdir();
    put(root, "logs", "chat-o-llama_20250103_100000.log", "first line\n");
    size_t size = 2u << 20;
    char *text = malloc(size + 1);
    assert_non_null(text);
    for (size_t i = 0; i < size; i += 64)
        snprintf(text + i, 65, "%063zu\n", i / 64);
    put(root, ".", "big.txt", text);
    free(text);
    /* The follower announces itself on stderr; the 2 MiB are appended once
     * it has (a bounded wait on that line), and read 1 MiB of them slowly. */
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && { chat-manager --root . logs -n 1 -f 2>hdr & i=0;"
             " until grep -q Showing hdr || [ $i -ge 1000 ]; do sleep 0.01; i=$((i+1)); done;"
             " cat big.txt >> logs/chat-o-llama_20250103_100000.log; wait; }"
             " | { sleep 0.3; head -c 1048576; } | wc -c",
             root);
    cmt_result_t r = sh(cmd, 20000);
    assert_cmt_code(r, 0);
    assert_int_equal(atol(r.out), 1048576);
    cmt_result_free(&r);
    cmt_rmtree(root);
    free(root);
}

static void logs_list_older_and_since(void **state)
{
    (void)state;
    char *root = logs_root();
    cmt_result_t l = cmt_cm(root, NULL, RUN_MS, "logs", "--list", NULL);
    assert_int_equal(l.code, 0);
    expect_contains(l.out, "chat-o-llama_20250102_100000.log", "--list");
    expect_contains(l.out, "2025-01-01 10:00:00", "--list");
    expect_contains(l.out, "exit code 3", "--list");
    cmt_result_free(&l);
    cmt_result_t j = cmt_cm(root, NULL, RUN_MS, "logs", "--list", "--json", NULL);
    assert_int_equal(j.code, 0);
    expect_schema(j.out, "logs-list");
    cmt_result_free(&j);
    /* logs 2 and logs FILE: the older log, printed, not followed. */
    cmt_result_t o = cmt_cm(root, NULL, RUN_MS, "logs", "2", NULL);
    assert_int_equal(o.code, 0);
    expect_contains(o.out, "old session", "logs 2");
    cmt_result_free(&o);
    cmt_result_t f = cmt_cm(root, NULL, RUN_MS, "logs", "chat-o-llama_20250101_100000.log", NULL);
    assert_int_equal(f.code, 0);
    expect_contains(f.out, "old session", "logs FILE");
    cmt_result_free(&f);
    /* --since 10m: from the first line of the last ten minutes on. */
    cmt_result_t s = cmt_cm(root, NULL, RUN_MS, "logs", "--since", "10m", "--no-follow", NULL);
    assert_int_equal(s.code, 0);
    expect_contains(s.out, "just now", "--since 10m");
    expect_contains(s.out, "after it", "--since 10m");
    assert_null(strstr(s.out, "line 100"));
    assert_null(strstr(s.out, "old session"));
    cmt_result_free(&s);
    cmt_result_t s2 = cmt_cm(root, NULL, RUN_MS, "logs", "--since", "2h", "--no-follow", NULL);
    expect_contains(s2.out, "an hour ago", "--since 2h");
    expect_contains(s2.out, "line 100", "--since 2h");
    cmt_result_free(&s2);
    /* An empty logs directory: [] in --json. */
    char *empty = cmt_tempdir();
    cmt_result_t e = cmt_cm(empty, NULL, RUN_MS, "logs", "--list", "--json", NULL);
    expect_contains(e.out, "\"logs\": []", "empty --list --json");
    expect_schema(e.out, "logs-list");
    cmt_result_free(&e);
    cmt_rmtree(empty);
    free(empty);
    cmt_rmtree(root);
    free(root);
}

/* ---- 6, 7, 5: a running app ------------------------------------------------- */

static char *app_root(int port, const char *extra)
{
    char *root = cmt_tempdir();
    char *app = cmt_fixture("fake-app");
    char *config = cmt_path(root, "config.json");
    char text[4096];
    snprintf(text, sizeof text,
             "{\"backend\": {\"active\": \"ollama\", \"health_check_interval\": 3600},\n"
             " \"ollama\": {\"base_url\": \"http://127.0.0.1:9\"},\n"
             " \"server\": {\"port\": %d},\n"
             " \"manager\": {\"app\": {\"command\": [\"%s\"]}, \"health_timeout\": 1,\n"
             "   \"health_connect_timeout\": 1%s}}\n",
             port, app, extra);
    cmt_write_file(config, text);
    free(config);
    free(app);
    return root;
}

/* Teardown of the tests that start an app: whatever an assertion left
 * running in the root is killed (force-stop acts only on the root's own
 * processes), then the root is removed. */
static int stop_root(void **state)
{
    char *root = *state;
    if (root == NULL) return 0;
    cmt_result_t r = cmt_cm(root, NULL, RUN_MS, "force-stop", NULL);
    cmt_result_free(&r);
    cmt_rmtree(root);
    free(root);
    *state = NULL;
    return 0;
}

static void json_outcomes_and_resource_use(void **state)
{
    int port = cmt_free_port();
    char *root = app_root(port, "");
    *state = root;
    cmt_result_t a = cmt_cm(root, NULL, 60000, "start", "--json", NULL);
    if (a.code != 0) print_error("%s\n%s\n", a.out, a.err);
    assert_int_equal(a.code, 0);
    expect_schema(a.out, "start");
    expect_contains(a.out, "\"ok\": true", "start --json");
    cmt_result_free(&a);

    cmt_result_t s = cmt_cm(root, NULL, RUN_MS, "status", NULL);
    assert_int_equal(s.code, 0);
    expect_contains(s.out, "  CPU:", "status");
    expect_contains(s.out, "  Memory:", "status");
    expect_contains(s.out, " RSS", "status");
    expect_contains(s.out, "  Open files:", "status");
    expect_contains(s.out, "Supervisor memory:", "status");
    cmt_result_free(&s);
    cmt_result_t sj = cmt_cm(root, NULL, RUN_MS, "status", "--json", NULL);
    assert_int_equal(sj.code, 0);
    expect_schema(sj.out, "status");
    expect_contains(sj.out, "\"orphans\": []", "status --json");

    expect_contains(sj.out, "\"cpu_percent\"", "status --json");
    expect_contains(sj.out, "\"rss_kb\"", "status --json");
    cmt_result_free(&sj);

    cmt_result_t rs = cmt_cm(root, NULL, 60000, "restart", "--json", NULL);
    assert_int_equal(rs.code, 0);
    expect_schema(rs.out, "restart");
    cmt_result_free(&rs);

    /* Already running: one object saying so, exit 1. */
    cmt_result_t again = cmt_cm(root, NULL, RUN_MS, "start", "--json", NULL);
    assert_int_equal(again.code, 1);
    expect_schema(again.out, "start");
    expect_contains(again.out, "\"ok\": false", "second start --json");
    cmt_result_free(&again);

    cmt_result_t b = cmt_cm(root, NULL, RUN_MS, "backend", "switch", "ollama", "--json", NULL);
    assert_int_equal(b.code, 0);
    expect_schema(b.out, "backend-switch");
    expect_contains(b.out, "\"switched\": false", "backend switch --json");
    cmt_result_free(&b);

    cmt_result_t o = cmt_cm(root, NULL, 60000, "stop", "--json", NULL);
    assert_int_equal(o.code, 0);
    expect_schema(o.out, "stop");
    expect_contains(o.out, "\"stopped\": true", "stop --json");
    cmt_result_free(&o);

    /* llama.cpp has no models here: an empty list, not an object. */
    cmt_result_t st = cmt_cm(root, NULL, RUN_MS, "backend", "status", "--json", NULL);
    assert_int_equal(st.code, 0);
    expect_schema(st.out, "backend-status");
    expect_contains(st.out, "\"models\": []", "backend status --json");
    assert_null(strstr(st.out, "\"models\": {}"));
    cmt_result_free(&st);

    cmt_result_t f = cmt_cm(root, NULL, RUN_MS, "force-stop", "--json", NULL);
    assert_int_equal(f.code, 0);
    expect_schema(f.out, "force-stop");
    expect_contains(f.out, "\"killed\": 0", "force-stop --json");
    cmt_result_free(&f);

    /* A usage error is an outcome too. */
    cmt_result_t u = cmt_cm(root, NULL, RUN_MS, "backend", "switch", "--json", NULL);
    assert_int_equal(u.code, 2);
    expect_schema(u.out, "backend-switch");
    cmt_result_free(&u);
}

/* With --json, stdout holds the object only: what a command says on the
 * way (here: a broken user backend is ignored) goes to stderr. */
static void json_stdout_is_only_json(void **state)
{
    int port = cmt_free_port();
    char *root = app_root(port, "");
    *state = root;
    put(root, "backends", "broken.lua", "return 5\n");
    const char *defs[][3] = {{"status", NULL, "status"},
                             {"backend", "status", "backend-status"},
                             {"stop", NULL, "stop"}};
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        cmt_result_t r = defs[i][1] != NULL
                             ? cmt_cm(root, NULL, RUN_MS, defs[i][0], defs[i][1], "--json", NULL)
                             : cmt_cm(root, NULL, RUN_MS, defs[i][0], "--json", NULL);
        expect_schema(r.out, defs[i][2]);
        if (strcmp(defs[i][0], "stop") != 0) expect_contains(r.err, "ignoring backend", defs[i][0]);
        cmt_result_free(&r);
    }
}

static void the_session_log_is_capped(void **state)
{
    int port = cmt_free_port();
    char *root = app_root(port, ", \"log_max_bytes\": 2000, \"log_backups\": 2");
    *state = root;
    cmt_result_t a = cmt_cm(root, NULL, 60000, "start", NULL);
    assert_int_equal(a.code, 0);
    cmt_result_free(&a);
    cmt_result_t l = cmt_cm(root, NULL, RUN_MS, "logs", "--list", "--json", NULL);
    const char *p = strstr(l.out, "\"path\": \"");
    assert_non_null(p);
    p += 9;
    char *path = strndup(p, strcspn(p, "\""));
    cmt_result_free(&l);
    /* Each request is a line in the log; the cap must rotate it twice. */
    char first[4096], second[4096], third[4096];
    snprintf(first, sizeof first, "%s.1", path);
    snprintf(second, sizeof second, "%s.2", path);
    snprintf(third, sizeof third, "%s.3", path);
    struct stat st;
    double deadline = cmt_now_ms() + 20000;
    while (cmt_now_ms() < deadline && stat(second, &st) != 0)
        cmi_http_status(port, "/grow-the-log-by-one-line-of-some-length", 2000);
    if (stat(second, &st) != 0) {
        char *text = cmi_logs_text(root);
        print_error("not rotated twice:\n%s\n", text);
        free(text);
        fail();
    }
    /* .1 is renamed into place right after .2. */
    assert_int_equal(cmt_wait_file(first, 5000), 0);
    assert_int_equal(stat(first, &st), 0);
    assert_true(st.st_size >= 2000);
    /* The log says what happened (a line written after the rotation). */
    deadline = cmt_now_ms() + 5000;
    while (cmt_now_ms() < deadline && cmi_logs_count(root, "log rotated at") < 1)
        usleep(2000);
    assert_true(cmi_logs_count(root, "log rotated at") >= 1);
    /* Two more rotations: log_backups 2 keeps .1 and .2 only. */
    deadline = cmt_now_ms() + 20000;
    while (cmt_now_ms() < deadline && cmi_logs_count(root, "removed ") < 1)
        cmi_http_status(port, "/grow-the-log-by-one-line-of-some-length", 2000);
    assert_true(cmi_logs_count(root, "removed ") >= 1);
    assert_int_not_equal(stat(third, &st), 0);
    cmt_result_t o = cmt_cm(root, NULL, 60000, "stop", NULL);
    assert_int_equal(o.code, 0);
    cmt_result_free(&o);
    free(path);
}

/* ---- 8. set-up scripts ------------------------------------------------------ */

static void setup_scripts(void **state)
{
    (void)state;
    char *deps = cmt_source("scripts/deps");
    char *text = cmt_read_file(deps, NULL);
    assert_non_null(text);
    /* Everything the demo and the suites run. */
    const char *needed[] = {"curl", "python3", "python3-flask", "python3-requests",
                            "libcmocka-dev"};
    for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++) {
        char word[64];
        snprintf(word, sizeof word, " %s ", needed[i]);
        expect_contains(text, word, "scripts/deps");
    }
    free(text);
    /* A user who is not root is told that root (sudo) is needed, and
     * nothing is installed. */
    if (getuid() != 0 || !have("setpriv")) {
        print_message("not root or no setpriv: the non-root run is skipped\n");
    } else {
        char cmd[8192];
        snprintf(cmd, sizeof cmd,
                 "setpriv --reuid=65534 --regid=65534 --clear-groups bash '%s' "
                 "chat-manager-no-such-package",
                 deps);
        cmt_result_t r = sh(cmd, 60000);
        assert_cmt_code(r, 1);
        expect_contains(r.out,
                        "[INFO] Installing the missing Debian packages: "
                        "chat-manager-no-such-package",
                        "deps as nobody");
        if (strstr(r.out, "needs root") == NULL) expect_contains(r.err, "needs root", "deps");
        cmt_result_free(&r);
    }
    free(deps);
}

/* ---- 9. the docs stand alone ------------------------------------------------ */

static void docs_stand_alone(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && test -f docs/design.md && for f in README.md docs/*.md; do "
             "  grep -nHE '/work/|DESIGN\\.md|\\.\\./shared|shared/chat-o-llama' \"$f\"; "
             "  grep -oE '\\]\\([^)#]+' \"$f\" | sed 's/^](//' | grep -vE '^(https?|mailto):' | "
             "  while read -r l; do [ -e \"$(dirname \"$f\")/$l\" ] || echo \"$f: broken link "
             "$l\"; done; "
             "done",
             cmt_env("CM_SOURCE_DIR"));
    cmt_result_t r = sh(cmd, RUN_MS);
    if (r.out[0] != '\0') print_error("outside references or broken links:\n%s\n", r.out);
    assert_string_equal(r.out, "");
    cmt_result_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(version_names_the_libraries),
        cmocka_unit_test(help_per_command),
        cmocka_unit_test(completion_scripts),
        cmocka_unit_test(man_page),
        cmocka_unit_test(debian_package),
        cmocka_unit_test(logs_in_a_pipe_exits_at_once),
        cmocka_unit_test(logs_to_a_slow_reader_loses_nothing),
        cmocka_unit_test(logs_list_older_and_since),
        cmocka_unit_test_teardown(json_outcomes_and_resource_use, stop_root),
        cmocka_unit_test_teardown(json_stdout_is_only_json, stop_root),
        cmocka_unit_test_teardown(the_session_log_is_capped, stop_root),
        cmocka_unit_test(setup_scripts),
        cmocka_unit_test(docs_stand_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
