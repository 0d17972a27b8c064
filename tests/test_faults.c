/*
 * The fault matrix runner: spec/faults.lua is data (its header documents a
 * row, the steps and the expectations); this file turns every row into one
 * cmocka test named after it, built at run time, and runs it against the
 * real binary, the fixture app and fake-http, in a fresh temporary root.
 *
 * A row's steps and checks never assert: they note what differs and go on
 * (a failed step ends the steps), so a failure lists everything at once and
 * the teardown always runs.  The teardown force-stops the row's own root
 * (which kills only processes carrying that root's marker), kills by pgid
 * what the row itself started, unmounts its tmpfs mounts, removes the root.
 *
 * Mounts: main() moves this process into a private mount namespace when the
 * kernel allows it, so a crashed run leaves no mount behind; rows that need
 * a mount are skipped where mounting is refused.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmtest.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CMD_TIMEOUT_MS 90000 /* one CLI command */
#define WAIT_MS 30000        /* default bound of every wait step */
#define SETTLE_MS 15000      /* processes leaving after the last command */

/* ---- the spec ------------------------------------------------------------ */

static lua_State *S;       /* the spec and the helpers below, for the whole run */
static char *spec_path;    /* $CM_SOURCE_DIR/spec/faults.lua */
static char *spec_problem; /* why the spec is unusable or invalid, or NULL */
static int mount_ok;       /* may this process mount a tmpfs? */
static int strict;         /* CM_FAULTS_STRICT: expect_fail rows run as normal */
static int verbose;        /* CM_FAULTS_VERBOSE: time every step */

/* Lua helpers on the spec: building a row's config.json and environment,
 * and checking the spec's shape. */
static const char helpers[] =
    "local spec = ...\n"
    "local H = {}\n"
    "local function copy(v)\n"
    "  if type(v) ~= 'table' then return v end\n"
    "  local c = {}\n"
    "  for k, x in pairs(v) do c[k] = copy(x) end\n"
    "  return c\n"
    "end\n"
    "local function merge(into, over)\n"
    "  for k, v in pairs(over) do\n"
    "    if type(v) == 'table' and not (#v > 0) and type(into[k]) == 'table' and not (#into[k] > "
    "0) then\n"
    "      merge(into[k], v)\n"
    "    else into[k] = copy(v) end\n"
    "  end\n"
    "  return into\n"
    "end\n"
    "local function subst(v, s)\n"
    "  if type(v) == 'table' then\n"
    "    for k, x in pairs(v) do v[k] = subst(x, s) end\n"
    "    return v\n"
    "  end\n"
    "  if type(v) ~= 'string' then return v end\n"
    "  if v == '$PORT' then return s.port end\n"
    "  if v == '$APP' then return s.app end\n"
    "  if v == '$PYTHON' then return s.python end\n"
    "  local id = v:match('^%$URL:(.+)$')\n"
    "  if id then return assert(s.urls[id], 'no server ' .. id) end\n"
    "  return v\n"
    "end\n"
    "local function esc(s)\n"
    "  return '\"' .. s:gsub('[%c\"\\\\]', function(c)\n"
    "    local m = { ['\"'] = '\\\\\"', ['\\\\'] = '\\\\\\\\', ['\\n'] = '\\\\n', ['\\t'] = "
    "'\\\\t' }\n"
    "    return m[c] or ('\\\\u%04x'):format(c:byte())\n"
    "  end) .. '\"'\n"
    "end\n"
    "local function encode(v, ind)\n"
    "  local t = type(v)\n"
    "  if t == 'string' then return esc(v) end\n"
    "  if t == 'boolean' then return tostring(v) end\n"
    "  if t == 'number' then\n"
    "    if math.type(v) == 'integer' then return ('%d'):format(v) end\n"
    "    return ('%.14g'):format(v)\n"
    "  end\n"
    "  local pad, inner = ('  '):rep(ind), ('  '):rep(ind + 1)\n"
    "  local parts = {}\n"
    "  if #v > 0 then\n"
    "    for _, x in ipairs(v) do parts[#parts + 1] = inner .. encode(x, ind + 1) end\n"
    "    return '[\\n' .. table.concat(parts, ',\\n') .. '\\n' .. pad .. ']'\n"
    "  end\n"
    "  local keys = {}\n"
    "  for k in pairs(v) do keys[#keys + 1] = k end\n"
    "  table.sort(keys)\n"
    "  if #keys == 0 then return '{}' end\n"
    "  for _, k in ipairs(keys) do parts[#parts + 1] = inner .. esc(k) .. ': ' .. encode(v[k], ind "
    "+ 1) end\n"
    "  return '{\\n' .. table.concat(parts, ',\\n') .. '\\n' .. pad .. '}'\n"
    "end\n"
    "function H.config(i, s)\n"
    "  local row = spec.rows[i]\n"
    "  local cfg = merge(copy(spec.base_config), row.config or {})\n"
    "  local env = cfg.manager.app.env\n"
    "  env.FAKE_APP_MODE = row.app or 'instant'\n"
    "  for k, v in pairs(row.app_env or {}) do env[k] = v end\n"
    "  return encode(subst(cfg, s), 0) .. '\\n'\n"
    "end\n"
    "function H.env(i)\n"
    "  local e = merge(copy(spec.cm_env or {}), spec.rows[i].cm_env or {})\n"
    "  local keys, out = {}, {}\n"
    "  for k in pairs(e) do keys[#keys + 1] = k end\n"
    "  table.sort(keys)\n"
    "  for _, k in ipairs(keys) do out[#out + 1] = k .. '=' .. e[k] end\n"
    "  return out\n"
    "end\n"
    "local VERBS = { cm = 1, cm_bg = 1, wait_bg = 1, concurrent = 1, start_and_stop_at_once = 1,\n"
    "  wait_state = 1, state_is = 1, remember_app = 1, wait_new_app = 1, app_alive = 1,\n"
    "  supervisor_alive = 1, wait_supervisor_gone = 1, kill_supervisor = 1,\n"
    "  signal_supervisor = 1, signal_app = 1, delete_config = 1, corrupt_config = 1,\n"
    "  mount_tmpfs = 1, read_only = 1, replace_with_file = 1, fill_disk = 1,\n"
    "  limit_log_size = 1, take_port = 1, sentinel = 1, write_pid_file = 1,\n"
    "  write_supervisor_pid = 1, write_state = 1, write_file = 1, kill_server = 1,\n"
    "  start_server = 1,\n"
    "  wait_log = 1, log_has = 1, log_count = 1, log_order = 1, wait_served = 1 }\n"
    "local STATES = { stopped = 1, starting = 1, running = 1, stopping = 1, failed = 1,\n"
    "  unknown = 1, ['running|stopped'] = 1 }\n"
    "function H.check()\n"
    "  local bad = {}\n"
    "  local function no(fmt, ...) bad[#bad + 1] = fmt:format(...) end\n"
    "  if type(spec) ~= 'table' or type(spec.rows) ~= 'table' or #spec.rows == 0 then\n"
    "    return 'the spec must return { base_config = {...}, rows = {...} }'\n"
    "  end\n"
    "  if type(spec.base_config) ~= 'table' then no('base_config must be a table') end\n"
    "  local seen = {}\n"
    "  for i, row in ipairs(spec.rows) do\n"
    "    local name = type(row) == 'table' and row.name\n"
    "    if type(name) ~= 'string' or not name:match('^[%w_]+$') then no('row %d: bad name', i)\n"
    "    else\n"
    "      if seen[name] then no('row %d: name %s is used twice', i, name) end\n"
    "      seen[name] = true\n"
    "      local says = false\n"
    "      if type(row.steps) ~= 'table' or #row.steps == 0 then no('%s: no steps', name) end\n"
    "      for j, st in ipairs(row.steps or {}) do\n"
    "        if type(st) ~= 'table' or not VERBS[st[1]] then\n"
    "          no('%s: step %d: unknown verb %s', name, j, tostring(type(st) == 'table' and "
    "st[1]))\n"
    "        else\n"
    "          if st.says or st.loser_says or st[1] == 'start_and_stop_at_once' then says = true "
    "end\n"
    "        end\n"
    "      end\n"
    "      if not says then no('%s: checks no message (no step has says)', name) end\n"
    "      local e = row.expect\n"
    "      if type(e) ~= 'table' or not STATES[e.state] then no('%s: expect.state missing or "
    "unknown', name)\n"
    "      elseif e.app_running and e.state ~= 'running' then\n"
    "        no('%s: app_running needs state running', name) end\n"
    "      if row.expect_fail ~= nil and type(row.expect_fail) ~= 'string' then\n"
    "        no('%s: expect_fail must be the diagnosis, a string', name) end\n"
    "      if row.expect_fail and type(row.symptom) ~= 'string' then\n"
    "        no('%s: expect_fail needs the symptom (text of the known failure)', name) end\n"
    "      for id, mode in pairs(row.servers or {}) do\n"
    "        if type(id) ~= 'string' or type(mode) ~= 'string' then no('%s: bad servers', name) "
    "end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if #bad > 0 then return table.concat(bad, '\\n') end\n"
    "  return nil\n"
    "end\n"
    "return H\n";

/* Field access on the table at the top of S; NULL/def when absent. */
static const char *top_str(const char *key)
{
    lua_getfield(S, -1, key);
    const char *s = lua_type(S, -1) == LUA_TSTRING ? lua_tostring(S, -1) : NULL;
    lua_pop(S, 1); /* the string stays alive: it is a field of the table */
    return s;
}

static long long top_int(const char *key, long long def)
{
    lua_getfield(S, -1, key);
    long long v = lua_isnumber(S, -1) ? (long long)lua_tonumber(S, -1) : def;
    lua_pop(S, 1);
    return v;
}

static int top_has(const char *key)
{
    lua_getfield(S, -1, key);
    int has = !lua_isnil(S, -1);
    lua_pop(S, 1);
    return has;
}

static int top_bool(const char *key, int def)
{
    lua_getfield(S, -1, key);
    int v = lua_isnil(S, -1) ? def : lua_toboolean(S, -1);
    lua_pop(S, 1);
    return v;
}

/* The i-th positional string of the table at the top. */
static const char *top_arg(int i)
{
    lua_rawgeti(S, -1, i);
    const char *s = lua_type(S, -1) == LUA_TSTRING ? lua_tostring(S, -1) : NULL;
    lua_pop(S, 1);
    return s;
}

/* Pushes spec.rows[index]. */
static void push_row(int index)
{
    lua_getglobal(S, "SPEC");
    lua_getfield(S, -1, "rows");
    lua_rawgeti(S, -1, index);
    lua_replace(S, -3);
    lua_pop(S, 1);
}

/* ---- a row's world ------------------------------------------------------- */

typedef struct bg {
    char id[32];
    pid_t pid; /* 0 once waited for */
    char *out; /* its stdout+stderr file */
} bg_t;

typedef struct server {
    char id[32];
    char mode[32];
    int port;
    pid_t pid;   /* 0 while stopped */
    int foreign; /* take_port: must never be touched */
    char *out;
    char *port_file;
} server_t;

typedef struct sentinel {
    char id[32];
    pid_t pid;
    char *sigfile; /* one byte per signal received */
} sentinel_t;

typedef struct row_ctx {
    int index;
    const char *name;
    const char *expect_fail;
    char *root;
    char *scratch; /* files of the test itself: outputs, port files */
    int port;
    char id[17];
    const char **env; /* "K=V" for every command, NULL-terminated */
    int nenv;
    char *config; /* what config.json must hold, NULL: must be absent */
    size_t config_len;
    char *config_orig; /* what the row wrote first */
    bg_t bg[6];
    int nbg;
    server_t srv[6];
    int nsrv;
    sentinel_t sent[4];
    int nsent;
    char *mounts[4];
    int nmounts;
    int remembered_pid;
    char decided_state[16]; /* by start_and_stop_at_once */
    int failed_step;        /* a step failed: only the safety checks follow */
    int unsafe;             /* a foreign process or config.json was harmed */
    int setup_failed;       /* the row's world could not be built: findings say why */
    const char *symptom;    /* expect_fail: text the known failure shows */
    char findings[16384];
    size_t flen;
} row_ctx_t;

static void note(row_ctx_t *c, const char *fmt, ...)
{
    if (c->flen >= sizeof c->findings - 2) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->findings + c->flen, sizeof c->findings - c->flen - 1, fmt, ap);
    va_end(ap);
    if (n > 0) c->flen += (size_t)n;
    if (c->flen > sizeof c->findings - 2) c->flen = sizeof c->findings - 2;
    c->findings[c->flen++] = '\n';
    c->findings[c->flen] = '\0';
}

/* A finding about safety (docs/design.md §9): never excused by expect_fail. */
#define unsafe(c, ...) ((c)->unsafe = 1, note((c), "UNSAFE: " __VA_ARGS__))

static char *scratch_file(row_ctx_t *c, const char *fmt, ...)
{
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return cmt_path(c->scratch, name);
}

static char *root_file(row_ctx_t *c, const char *rel)
{
    return cmt_path(c->root, rel);
}

static char *read_all(const char *path, size_t *len)
{
    return cmt_read_file(path, len);
}

static int write_bytes(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    ssize_t n = write(fd, data, len);
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

/* ---- running commands ---------------------------------------------------- */

/* argv for `chat-manager --root ROOT <args of the table at the top>` from
 * position `first`; returns argc. */
static int cm_argv(row_ctx_t *c, const char **argv, int max, int first)
{
    int n = 0;
    argv[n++] = cmt_env("CM_BINARY");
    argv[n++] = "--root";
    argv[n++] = c->root;
    for (int i = first; n < max - 1; i++) {
        const char *a = top_arg(i);
        if (a == NULL) break;
        argv[n++] = a;
    }
    argv[n] = NULL;
    return n;
}

static void describe_args(const char *const *argv, char *buf, size_t size)
{
    buf[0] = '\0';
    for (int i = 3; argv[i]; i++) {
        strncat(buf, i > 3 ? " " : "", size - strlen(buf) - 1);
        strncat(buf, argv[i], size - strlen(buf) - 1);
    }
}

/* Checks `says` / `not_says` (string or list) of the step at the top against
 * text; returns 1 when all hold, else notes (when `report`) and returns 0. */
static int check_says(row_ctx_t *c, const char *what, const char *key, const char *text, int want,
                      int report)
{
    int ok = 1;
    lua_getfield(S, -1, key);
    int t = lua_gettop(S);
    int n = lua_type(S, t) == LUA_TTABLE ? (int)lua_rawlen(S, t) : lua_isstring(S, t) ? 1 : 0;
    for (int i = 1; i <= n; i++) {
        const char *needle;
        if (lua_type(S, t) == LUA_TTABLE) {
            lua_rawgeti(S, t, i);
            needle = lua_tostring(S, -1);
            lua_pop(S, 1);
        } else {
            needle = lua_tostring(S, t);
        }
        if (needle == NULL) continue;
        int has = strstr(text, needle) != NULL;
        if (has != want) {
            ok = 0;
            if (report) note(c, "%s: %s \"%s\"", what, want ? "does not say" : "says", needle);
        }
    }
    lua_settop(S, t - 1);
    return ok;
}

/* Checks code/says/not_says of the step at the top against an outcome. */
static int check_outcome(row_ctx_t *c, const char *what, int code, const char *out, int report)
{
    int ok = 1;
    if (top_has("code") && code != (int)top_int("code", 0)) {
        ok = 0;
        if (report) note(c, "%s: exit code %d, expected %lld", what, code, top_int("code", 0));
    }
    if (!check_says(c, what, "says", out, 1, report)) ok = 0;
    if (!check_says(c, what, "not_says", out, 0, report)) ok = 0;
    if (!ok && report) note(c, "--- its output:\n%s---", out);
    return ok;
}

static char *joined_output(const cmt_result_t *r)
{
    size_t n = strlen(r->out) + strlen(r->err) + 2;
    char *s = malloc(n);
    snprintf(s, n, "%s%s%s", r->out, *r->out && r->out[strlen(r->out) - 1] != '\n' ? "\n" : "",
             r->err);
    return s;
}

static int step_cm(row_ctx_t *c)
{
    const char *argv[32];
    cm_argv(c, argv, 32, 2);
    char what[256] = "chat-manager ";
    describe_args(argv, what + strlen(what), sizeof what - strlen(what));
    int retry_ms = (int)top_int("retry_ms", 0);
    double t0 = cmt_now_ms();
    for (;;) {
        cmt_result_t r = cmt_run(argv, c->env, CMD_TIMEOUT_MS);
        char *out = joined_output(&r);
        int last = retry_ms <= 0 || cmt_now_ms() - t0 >= retry_ms;
        int ok = r.code >= 0 && check_outcome(c, what, r.code, out, 0);
        if (r.code < 0)
            note(c, "%s: no answer within %d ms", what, CMD_TIMEOUT_MS);
        else if (!ok && last)
            check_outcome(c, what, r.code, out, 1);
        free(out);
        cmt_result_free(&r);
        if (ok) return 0;
        if (last || r.code < 0) return -1;
        usleep(200000);
    }
}

static pid_t spawn_bg(row_ctx_t *c, const char *const *argv, const char *id)
{
    if (c->nbg >= (int)(sizeof c->bg / sizeof c->bg[0])) {
        note(c, "too many background commands");
        return -1;
    }
    bg_t *b = &c->bg[c->nbg++];
    snprintf(b->id, sizeof b->id, "%s", id ? id : "");
    b->out = scratch_file(c, "bg-%d.out", c->nbg);
    b->pid = cmt_spawn(argv, c->env, b->out);
    return b->pid;
}

static bg_t *find_bg(row_ctx_t *c, const char *id)
{
    for (int i = 0; i < c->nbg; i++)
        if (strcmp(c->bg[i].id, id) == 0) return &c->bg[i];
    return NULL;
}

/* Waits (bounded) for a background command; returns its exit code (-1 on
 * timeout, then it is killed) and its output in *out. */
static int wait_bg(bg_t *b, int timeout_ms, char **out)
{
    int status = 0, code = -1;
    double t0 = cmt_now_ms();
    for (;;) {
        pid_t w = waitpid(b->pid, &status, WNOHANG);
        if (w == b->pid) {
            code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        if (w < 0 || cmt_now_ms() - t0 > timeout_ms) {
            cmt_kill_group(b->pid);
            break;
        }
        usleep(5000);
    }
    b->pid = 0;
    *out = read_all(b->out, NULL);
    if (*out == NULL) *out = strdup("");
    return code;
}

static int step_cm_bg(row_ctx_t *c)
{
    const char *argv[32];
    cm_argv(c, argv, 32, 2);
    return spawn_bg(c, argv, top_str("id")) > 0 ? 0 : -1;
}

static int step_wait_bg(row_ctx_t *c)
{
    const char *id = top_arg(2);
    bg_t *b = id ? find_bg(c, id) : NULL;
    if (b == NULL || b->pid <= 0) {
        note(c, "wait_bg: no running background command '%s'", id ? id : "?");
        return -1;
    }
    char *out;
    int code = wait_bg(b, (int)top_int("timeout", CMD_TIMEOUT_MS), &out);
    char what[96];
    snprintf(what, sizeof what, "background '%s'", id);
    int ok = code >= 0 ? check_outcome(c, what, code, out, 1) : 0;
    if (code < 0) note(c, "%s: no answer within the bound; output:\n%s", what, out);
    free(out);
    return ok ? 0 : -1;
}

/* Two commands at the same moment: codes (sorted) must be `codes`, the one
 * that failed says `loser_says`. */
static int step_concurrent(row_ctx_t *c)
{
    pid_t pids[2];
    int idx[2];
    for (int k = 0; k < 2; k++) {
        lua_rawgeti(S, -1, k + 2);
        const char *argv[32];
        cm_argv(c, argv, 32, 1);
        lua_pop(S, 1);
        idx[k] = c->nbg;
        pids[k] = spawn_bg(c, argv, NULL);
        if (pids[k] <= 0) return -1;
    }
    int codes[2];
    char *outs[2];
    for (int k = 0; k < 2; k++)
        codes[k] = wait_bg(&c->bg[idx[k]], CMD_TIMEOUT_MS, &outs[k]);
    int ok = 1;
    lua_getfield(S, -1, "codes");
    int want[2] = {-2, -2};
    for (int k = 0; k < 2 && lua_istable(S, -1); k++) {
        lua_rawgeti(S, -1, k + 1);
        want[k] = (int)lua_tointeger(S, -1);
        lua_pop(S, 1);
    }
    lua_pop(S, 1);
    int lo = codes[0] < codes[1] ? codes[0] : codes[1];
    int hi = codes[0] < codes[1] ? codes[1] : codes[0];
    if (lo != want[0] || hi != want[1]) {
        note(c, "concurrent: exit codes %d and %d, expected %d and %d", codes[0], codes[1], want[0],
             want[1]);
        ok = 0;
    }
    const char *loser = top_str("loser_says");
    for (int k = 0; k < 2 && loser; k++)
        if (codes[k] != 0 && strstr(outs[k], loser) == NULL) {
            note(c, "concurrent: the failing command does not say \"%s\"", loser);
            ok = 0;
        }
    if (!ok) note(c, "--- first:\n%s--- second:\n%s---", outs[0], outs[1]);
    free(outs[0]);
    free(outs[1]);
    return ok ? 0 : -1;
}

static int step_start_and_stop(row_ctx_t *c)
{
    const char *a1[] = {cmt_env("CM_BINARY"), "--root", c->root, "start", NULL};
    const char *a2[] = {cmt_env("CM_BINARY"), "--root", c->root, "stop", NULL};
    int i1 = c->nbg;
    if (spawn_bg(c, a1, NULL) <= 0) return -1;
    int i2 = c->nbg;
    if (spawn_bg(c, a2, NULL) <= 0) return -1;
    char *o1, *o2;
    int k1 = wait_bg(&c->bg[i1], CMD_TIMEOUT_MS, &o1);
    int k2 = wait_bg(&c->bg[i2], CMD_TIMEOUT_MS, &o2);
    int ok = 1;
    /* start either finishes first, or stop reaches the supervisor while it
     * is starting (start lets other commands in once the supervisor holds
     * run/lock) and start reports that it was stopped. */
    int started = k1 == 0 && strstr(o1, "started successfully") != NULL;
    int stopped_early = k1 == 1 && strstr(o1, "stopped before it was ready") != NULL;
    if (!started && !stopped_early) {
        note(c,
             "start (at once with stop): exit %d, expected 0 \"started successfully\" or 1 "
             "\"stopped before it was ready\"",
             k1);
        ok = 0;
    }
    if (k2 != 0) {
        note(c, "stop (at once with start): exit %d, expected 0", k2);
        ok = 0;
    }
    if (strstr(o2, "is not running")) {
        snprintf(c->decided_state, sizeof c->decided_state, "running");
    } else if (strstr(o2, "Chat-O-Llama stopped")) {
        snprintf(c->decided_state, sizeof c->decided_state, "stopped");
    } else {
        note(c, "stop (at once with start) says neither \"is not running\" nor \"stopped\"");
        ok = 0;
    }
    if (!ok) note(c, "--- start:\n%s--- stop:\n%s---", o1, o2);
    free(o1);
    free(o2);
    return ok ? 0 : -1;
}

/* ---- state, processes, logs ---------------------------------------------- */

static int app_pid(row_ctx_t *c)
{
    cJSON *st = cmi_read_state(c->root);
    long long pid = st ? cmi_state_int(st, "pid") : -1;
    cJSON_Delete(st);
    return pid > 1 ? (int)pid : -1;
}

static int step_wait_state(row_ctx_t *c)
{
    const char *want = top_arg(2);
    int timeout = (int)top_int("timeout", WAIT_MS);
    if (cmi_wait_state(c->root, want, timeout) < 0) {
        cJSON *st = cmi_read_state(c->root);
        note(c, "state.json never said %s within %d ms (it says %s)", want, timeout,
             st ? cmi_state_str(st, "state") : "nothing");
        cJSON_Delete(st);
        return -1;
    }
    return 0;
}

static int step_state_is(row_ctx_t *c)
{
    cJSON *st = cmi_read_state(c->root);
    if (st == NULL) {
        note(c, "state_is: no run/state.json");
        return -1;
    }
    int ok = 1;
    lua_pushnil(S);
    while (lua_next(S, -2) != 0) {
        if (lua_type(S, -2) == LUA_TSTRING) {
            const char *key = lua_tostring(S, -2);
            if (lua_type(S, -1) == LUA_TNUMBER) {
                long long want = (long long)lua_tonumber(S, -1);
                long long got = cmi_state_int(st, key);
                if (got != want) {
                    note(c, "state.json %s = %lld, expected %lld", key, got, want);
                    ok = 0;
                }
            } else if (lua_type(S, -1) == LUA_TSTRING) {
                const char *want = lua_tostring(S, -1);
                const char *got = cmi_state_str(st, key);
                if (strcmp(got, want) != 0) {
                    note(c, "state.json %s = \"%s\", expected \"%s\"", key, got, want);
                    ok = 0;
                }
            }
        }
        lua_pop(S, 1);
    }
    cJSON_Delete(st);
    return ok ? 0 : -1;
}

static int step_wait_new_app(row_ctx_t *c)
{
    int timeout = (int)top_int("timeout", WAIT_MS);
    double t0 = cmt_now_ms();
    do {
        cJSON *st = cmi_read_state(c->root);
        int ok = st && strcmp(cmi_state_str(st, "state"), "running") == 0 &&
                 cmi_state_int(st, "pid") > 1 && cmi_state_int(st, "pid") != c->remembered_pid;
        cJSON_Delete(st);
        if (ok) return 0;
        usleep(10000);
    } while (cmt_now_ms() - t0 < timeout);
    cJSON *st = cmi_read_state(c->root);
    note(c, "no new app running within %d ms (state %s, pid %lld; the old pid was %d)", timeout,
         st ? cmi_state_str(st, "state") : "?", st ? cmi_state_int(st, "pid") : -1,
         c->remembered_pid);
    cJSON_Delete(st);
    return -1;
}

static int step_app_alive(row_ctx_t *c)
{
    double t0 = cmt_now_ms();
    int pid = -1, code = -1;
    do {
        pid = app_pid(c);
        if (pid > 1 && cmi_pid_alive(pid) && cmi_has_marker(pid, c->id)) {
            code = cmi_http_status(c->port, "/health", 5000);
            if (code == 200) return 0;
        }
        usleep(50000);
    } while (cmt_now_ms() - t0 < 10000);
    note(c, "app_alive: the app (pid %d from state.json) is %s; GET /health on port %d: %d", pid,
         cmi_pid_alive(pid) ? "alive" : "gone", c->port, code);
    return -1;
}

static int step_supervisor_alive(row_ctx_t *c)
{
    pid_t sup = cmi_supervisor_pid(c->root);
    if (!cmi_lock_held(c->root) || !cmi_pid_alive(sup)) {
        note(c, "the supervisor is gone (run/lock %s, run/supervisor.pid %d %s)",
             cmi_lock_held(c->root) ? "held" : "free", (int)sup,
             cmi_pid_alive(sup) ? "alive" : "dead");
        return -1;
    }
    return 0;
}

static int step_wait_supervisor_gone(row_ctx_t *c)
{
    if (!cmi_wait_lock_released(c->root, (int)top_int("timeout", WAIT_MS))) {
        note(c, "the supervisor still holds run/lock");
        return -1;
    }
    return 0;
}

/* The supervisor's pid, only when it is provably this row's. */
static pid_t our_supervisor(row_ctx_t *c)
{
    pid_t sup = cmi_supervisor_pid(c->root);
    if (sup <= 1 || !cmi_pid_alive(sup) || !cmi_has_marker(sup, c->id)) {
        note(c, "no live supervisor of this root (run/supervisor.pid: %d)", (int)sup);
        return -1;
    }
    return sup;
}

static int signal_number(const char *name)
{
    static const struct {
        const char *n;
        int s;
    } names[] = {{"HUP", SIGHUP},   {"INT", SIGINT},   {"TERM", SIGTERM}, {"KILL", SIGKILL},
                 {"STOP", SIGSTOP}, {"CONT", SIGCONT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].n) == 0) return names[i].s;
    return -1;
}

static int step_kill_supervisor(row_ctx_t *c)
{
    pid_t sup = our_supervisor(c);
    if (sup < 0) return -1;
    kill(sup, SIGKILL);
    if (!cmi_wait_dead(sup, 10000)) {
        note(c, "the supervisor %d survived SIGKILL", (int)sup);
        return -1;
    }
    return 0;
}

static int step_signal_supervisor(row_ctx_t *c)
{
    int sig = signal_number(top_arg(2));
    pid_t sup = our_supervisor(c);
    if (sig < 0 || sup < 0) return -1;
    kill(sup, sig);
    return 0;
}

static int step_signal_app(row_ctx_t *c)
{
    const char *name = top_arg(2);
    int sig = signal_number(name);
    int pid = app_pid(c);
    if (sig < 0 || pid <= 1 || !cmi_pid_alive(pid) || !cmi_has_marker(pid, c->id)) {
        note(c, "signal_app %s: no live app of this root (pid %d)", name ? name : "?", pid);
        return -1;
    }
    kill(pid, sig);
    double t0 = cmt_now_ms();
    if (sig == SIGSTOP) {
        while (cmi_proc_state(pid) != 'T' && cmt_now_ms() - t0 < 10000)
            usleep(2000);
        if (cmi_proc_state(pid) != 'T') {
            note(c, "the app %d is not stopped after SIGSTOP", pid);
            return -1;
        }
    } else if (sig == SIGKILL && !cmi_wait_dead(pid, 10000)) {
        note(c, "the app %d survived SIGKILL", pid);
        return -1;
    }
    return 0;
}

static int step_wait_log(row_ctx_t *c)
{
    const char *text = top_arg(2);
    int want = (int)top_int("count", 1);
    int timeout = (int)top_int("timeout", WAIT_MS);
    double t0 = cmt_now_ms();
    int got = 0;
    do {
        got = cmi_logs_count(c->root, text);
        if (got >= want) return 0;
        usleep(20000);
    } while (cmt_now_ms() - t0 < timeout);
    char *logs = cmi_logs_text(c->root);
    size_t n = strlen(logs);
    note(c, "the logs said \"%s\" %d times within %d ms, expected %d; their end:\n%s", text, got,
         timeout, want, logs + (n > 3000 ? n - 3000 : 0));
    free(logs);
    return -1;
}

static int step_log_has(row_ctx_t *c)
{
    char *logs = cmi_logs_text(c->root);
    int ok = 1;
    for (int i = 2;; i++) {
        const char *text = top_arg(i);
        if (text == NULL) break;
        if (strstr(logs, text) == NULL) {
            note(c, "the logs do not say \"%s\"", text);
            ok = 0;
        }
    }
    if (!ok) {
        size_t n = strlen(logs);
        note(c, "--- the logs' end:\n%s---", logs + (n > 3000 ? n - 3000 : 0));
    }
    free(logs);
    return ok ? 0 : -1;
}

/* The first occurrence of each text comes after that of the one before. */
static int step_log_order(row_ctx_t *c)
{
    char *logs = cmi_logs_text(c->root);
    const char *prev_at = NULL, *prev = NULL;
    int ok = 1;
    for (int i = 2; ok; i++) {
        const char *text = top_arg(i);
        if (text == NULL) break;
        const char *at = strstr(logs, text);
        if (at == NULL) {
            note(c, "the logs do not say \"%s\"", text);
            ok = 0;
        } else if (prev_at != NULL && at < prev_at) {
            note(c, "the logs say \"%s\" before \"%s\"", text, prev);
            ok = 0;
        }
        prev_at = at;
        prev = text;
    }
    if (!ok) {
        size_t n = strlen(logs);
        note(c, "their end:\n%s", logs + (n > 3000 ? n - 3000 : 0));
    }
    free(logs);
    return ok ? 0 : -1;
}

static int step_log_count(row_ctx_t *c)
{
    const char *text = top_arg(2);
    int got = cmi_logs_count(c->root, text);
    if (top_has("n") && got != (int)top_int("n", 0)) {
        note(c, "the logs say \"%s\" %d times, expected %lld", text, got, top_int("n", 0));
        return -1;
    }
    if (top_has("max") && got > (int)top_int("max", 0)) {
        note(c, "the logs say \"%s\" %d times, at most %lld expected", text, got,
             top_int("max", 0));
        return -1;
    }
    return 0;
}

/* ---- config -------------------------------------------------------------- */

static int step_delete_config(row_ctx_t *c)
{
    char *path = root_file(c, "config.json");
    int rc = unlink(path);
    free(path);
    free(c->config);
    c->config = NULL;
    if (rc != 0) note(c, "cannot delete config.json: %s", strerror(errno));
    return rc == 0 ? 0 : -1;
}

static int step_corrupt_config(row_ctx_t *c)
{
    const char *fixture = top_str("fixture");
    const char *text = top_str("text");
    char *data = NULL;
    size_t len = 0;
    if (fixture) {
        char *src = cmt_source("fixtures");
        char *path = cmt_path(src, fixture);
        data = read_all(path, &len);
        free(src);
        free(path);
    } else if (text) {
        data = strdup(text);
        len = strlen(text);
    }
    if (data == NULL) {
        note(c, "corrupt_config: nothing to write (fixture %s)", fixture ? fixture : "-");
        return -1;
    }
    /* Replaced in place, as an editor saving a broken file would. */
    char *path = root_file(c, "config.json");
    int rc = write_bytes(path, data, len);
    free(path);
    free(c->config);
    c->config = data;
    c->config_len = len;
    return rc;
}

/* ---- the file system ----------------------------------------------------- */

static int step_mount_tmpfs(row_ctx_t *c)
{
    const char *dir = top_arg(2);
    const char *size = top_str("size");
    char *path = root_file(c, dir);
    mkdir(path, 0700);
    char opts[64];
    snprintf(opts, sizeof opts, "size=%s,mode=0700", size ? size : "1m");
    int rc = mount("tmpfs", path, "tmpfs", 0, opts);
    if (rc != 0) {
        note(c, "mount tmpfs on %s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    c->mounts[c->nmounts++] = path;
    return 0;
}

/* <root>/<dir> read-only for every new open, even root's: a read-only bind
 * mount of the directory on itself.  Files already open for writing (the
 * supervisor's lock, its output) stay writable, as after a remount. */
static int step_read_only(row_ctx_t *c)
{
    char *path = root_file(c, top_arg(2));
    mkdir(path, 0700);
    if (mount(path, path, NULL, MS_BIND, NULL) != 0) {
        note(c, "bind mount %s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    c->mounts[c->nmounts++] = path;
    if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) {
        note(c, "remount %s read-only: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int step_replace_with_file(row_ctx_t *c)
{
    char *path = root_file(c, top_arg(2));
    cmt_rmtree(path);
    int rc = write_bytes(path, "not a directory\n", 16);
    if (rc != 0) note(c, "cannot make %s a file", path);
    free(path);
    return rc;
}

/* Fills the file system of root/dir to the last byte: a filler file, then
 * the newest session log padded (tmpfs pages have room at a file's end). */
static int step_fill_disk(row_ctx_t *c)
{
    char *dir = root_file(c, top_arg(2));
    char *filler = cmt_path(dir, "filler");
    int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    char block[4096];
    memset(block, 'f', sizeof block);
    int full = 0;
    while (fd >= 0 && !full) {
        if (write(fd, block, sizeof block) < (ssize_t)sizeof block) full = 1;
    }
    while (fd >= 0 && write(fd, block, 1) == 1) {
    }
    if (fd >= 0) close(fd);
    /* log = false: the tmpfs alone (the log may live elsewhere) */
    int with_log = top_bool("log", 1);
    cJSON *st = with_log ? cmi_read_state(c->root) : NULL;
    const char *log = st ? cmi_state_str(st, "log") : "";
    int lfd = *log ? open(log, O_WRONLY | O_APPEND | O_CLOEXEC) : -1;
    int pad = 0;
    while (lfd >= 0 && write(lfd, "#", 1) == 1)
        pad++;
    if (lfd >= 0) close(lfd);
    cJSON_Delete(st);
    int ok = full && (lfd != -1 || !with_log);
    if (!ok) note(c, "fill_disk: %s could not be filled (log '%s')", dir, log);
    free(filler);
    free(dir);
    return ok ? 0 : -1;
}

static int step_limit_log_size(row_ctx_t *c)
{
    pid_t sup = our_supervisor(c);
    cJSON *st = cmi_read_state(c->root);
    const char *log = st ? cmi_state_str(st, "log") : "";
    /* The log is padded to 64 KiB first: the limit applies to every file
     * the supervisor writes, and run/state.json (half a KiB and growing with
     * its fields) must still fit under it; only the log is at the limit. */
    int pad = *log ? open(log, O_WRONLY | O_APPEND | O_CLOEXEC) : -1;
    struct stat sb;
    while (pad >= 0 && fstat(pad, &sb) == 0 && sb.st_size < 65536 &&
           write(pad, "# padding written by the fault test\n", 36) == 36) {
    }
    if (pad >= 0) close(pad);
    int ok = sup > 0 && *log && stat(log, &sb) == 0;
    if (ok) {
        struct rlimit lim = {(rlim_t)sb.st_size, (rlim_t)sb.st_size};
        if (prlimit(sup, RLIMIT_FSIZE, &lim, NULL) != 0) {
            note(c, "prlimit(%d, RLIMIT_FSIZE): %s", (int)sup, strerror(errno));
            ok = 0;
        }
    } else {
        note(c, "limit_log_size: no supervisor or no log ('%s')", log);
    }
    cJSON_Delete(st);
    return ok ? 0 : -1;
}

/* ---- foreign processes --------------------------------------------------- */

static server_t *find_server(row_ctx_t *c, const char *id)
{
    for (int i = 0; i < c->nsrv; i++)
        if (strcmp(c->srv[i].id, id) == 0) return &c->srv[i];
    return NULL;
}

/* Starts fake-http for s on s->port (0: a free one, then recorded). */
static int start_server(row_ctx_t *c, server_t *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    unlink(s->port_file);
    unlink(s->out); /* each start's requests counted afresh */
    char *http = cmt_fixture("fake-http");
    const char *argv[] = {http,    "--port",      port,         "--mode",
                          s->mode, "--port-file", s->port_file, NULL};
    s->pid = cmt_spawn(argv, NULL, s->out);
    free(http);
    if (cmt_wait_file(s->port_file, 15000) != 0) {
        char *out = read_all(s->out, NULL);
        note(c, "fake-http '%s' (%s) did not listen on port %s: %s", s->id, s->mode, port,
             out ? out : "");
        free(out);
        return -1;
    }
    char *text = read_all(s->port_file, NULL);
    s->port = text ? atoi(text) : 0;
    free(text);
    return s->port > 0 ? 0 : -1;
}

static server_t *new_server(row_ctx_t *c, const char *id, const char *mode, int port)
{
    server_t *s = &c->srv[c->nsrv++];
    snprintf(s->id, sizeof s->id, "%s", id);
    snprintf(s->mode, sizeof s->mode, "%s", mode);
    s->port = port;
    s->out = scratch_file(c, "http-%s.out", id);
    s->port_file = scratch_file(c, "http-%s.port", id);
    return s;
}

static int step_take_port(row_ctx_t *c)
{
    server_t *s = new_server(c, "port-taker", "ollama", c->port);
    s->foreign = 1;
    return start_server(c, s);
}

static int step_kill_server(row_ctx_t *c)
{
    server_t *s = find_server(c, top_arg(2));
    if (s == NULL || s->pid <= 0 || s->foreign) {
        note(c, "kill_server: no running server '%s' of the row", top_arg(2));
        return -1;
    }
    cmt_kill_group(s->pid);
    s->pid = 0;
    return 0;
}

/* Waits until a server of the row answered n requests with 200 since it
 * was last started (its output names each request). */
static int step_wait_served(row_ctx_t *c)
{
    server_t *s = find_server(c, top_arg(2));
    int want = (int)top_int("n", 1), got = 0;
    int timeout = (int)top_int("timeout", WAIT_MS);
    double t0 = cmt_now_ms();
    do {
        char *out = s ? read_all(s->out, NULL) : NULL;
        got = cmi_count(out, "-> 200");
        free(out);
        if (got >= want) return 0;
        usleep(20000);
    } while (s && cmt_now_ms() - t0 < timeout);
    note(c, "fake-http '%s' answered %d requests with 200 within %d ms, expected %d",
         top_arg(2) ? top_arg(2) : "?", got, timeout, want);
    return -1;
}

static int step_start_server(row_ctx_t *c)
{
    server_t *s = find_server(c, top_arg(2));
    if (s == NULL || s->pid > 0) {
        note(c, "start_server: no stopped server '%s'", top_arg(2));
        return -1;
    }
    return start_server(c, s);
}

/* A foreign process: its own group, every catchable signal recorded. */
static int sentinel_fd = -1;
static void sentinel_handler(int sig)
{
    unsigned char b = (unsigned char)sig;
    if (write(sentinel_fd, &b, 1) < 0) _exit(3);
}

static int step_sentinel(row_ctx_t *c)
{
    sentinel_t *s = &c->sent[c->nsent];
    snprintf(s->id, sizeof s->id, "%s", top_arg(2));
    s->sigfile = scratch_file(c, "sentinel-%s.signals", s->id);
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        setpgid(0, 0);
        sentinel_fd = open(s->sigfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = sentinel_handler;
        for (int sig = 1; sig < 32; sig++)
            if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (write(ready[1], "R", 1) != 1) _exit(2);
        for (;;)
            pause();
    }
    setpgid(pid, pid);
    close(ready[1]);
    struct pollfd p = {ready[0], POLLIN, 0};
    char b = 0;
    int ok = poll(&p, 1, 10000) == 1 && read(ready[0], &b, 1) == 1 && b == 'R';
    close(ready[0]);
    s->pid = pid;
    c->nsent++;
    if (!ok) note(c, "the sentinel did not come up");
    return ok ? 0 : -1;
}

static sentinel_t *find_sentinel(row_ctx_t *c, const char *id)
{
    for (int i = 0; id && i < c->nsent; i++)
        if (strcmp(c->sent[i].id, id) == 0) return &c->sent[i];
    return NULL;
}

static int step_write_pid_file(row_ctx_t *c)
{
    sentinel_t *s = find_sentinel(c, top_str("of"));
    if (s == NULL) {
        note(c, "write_pid_file: no sentinel '%s'", top_str("of") ? top_str("of") : "?");
        return -1;
    }
    char text[256];
    if (top_bool("start_time", 0)) {
        /* Written for our app, which started earlier: the PID is reused. */
        unsigned long long st = cmi_start_time(s->pid);
        snprintf(text, sizeof text, "%d\n# start_time=%llu instance=%s\n", (int)s->pid,
                 st > 100 ? st - 100 : st + 100, c->id);
    } else {
        snprintf(text, sizeof text, "%d\n", (int)s->pid);
    }
    char *path = root_file(c, "process.pid");
    int rc = write_bytes(path, text, strlen(text));
    free(path);
    return rc;
}

static int step_write_supervisor_pid(row_ctx_t *c)
{
    sentinel_t *s = find_sentinel(c, top_str("of"));
    if (s == NULL) return -1;
    char *run = root_file(c, "run");
    mkdir(run, 0700);
    char *path = cmt_path(run, "supervisor.pid");
    char text[32];
    snprintf(text, sizeof text, "%d\n", (int)s->pid);
    int rc = write_bytes(path, text, strlen(text));
    free(path);
    free(run);
    return rc;
}

static int step_write_file(row_ctx_t *c)
{
    const char *rel = top_arg(2);
    const char *text = top_str("text");
    if (rel == NULL || text == NULL) {
        note(c, "write_file: needs a path and text=");
        return -1;
    }
    char *path = root_file(c, rel);
    int rc = write_bytes(path, text, strlen(text));
    free(path);
    return rc;
}

static int step_write_state(row_ctx_t *c)
{
    const char *forged = top_str("text");
    if (forged != NULL) { /* any bytes: a corrupt or forged state */
        char *run = root_file(c, "run");
        mkdir(run, 0700);
        char *path = cmt_path(run, "state.json");
        int rc = write_bytes(path, forged, strlen(forged));
        free(path);
        free(run);
        return rc;
    }
    sentinel_t *s = find_sentinel(c, top_str("of"));
    if (s == NULL) return -1;
    char *run = root_file(c, "run");
    mkdir(run, 0700);
    char *path = cmt_path(run, "state.json");
    unsigned long long st = cmi_start_time(s->pid);
    char text[1024];
    snprintf(text, sizeof text,
             "{\"state\": \"running\", \"pid\": %d, \"pgid\": %d, \"pid_start\": %llu,"
             " \"supervisor_pid\": %d, \"port\": %d, \"instance\": \"%s\", \"root\": \"%s\"}\n",
             (int)s->pid, (int)s->pid, st > 100 ? st - 100 : st + 100, (int)s->pid, c->port, c->id,
             c->root);
    int rc = write_bytes(path, text, strlen(text));
    free(path);
    free(run);
    return rc;
}

/* ---- the steps ----------------------------------------------------------- */

static int step_remember_app(row_ctx_t *c)
{
    c->remembered_pid = app_pid(c);
    if (c->remembered_pid <= 1) note(c, "remember_app: state.json names no app");
    return c->remembered_pid > 1 ? 0 : -1;
}

typedef int (*step_fn)(row_ctx_t *);
static const struct {
    const char *verb;
    step_fn fn;
} steps[] = {
    {"cm", step_cm},
    {"cm_bg", step_cm_bg},
    {"wait_bg", step_wait_bg},
    {"concurrent", step_concurrent},
    {"start_and_stop_at_once", step_start_and_stop},
    {"wait_state", step_wait_state},
    {"state_is", step_state_is},
    {"remember_app", step_remember_app},
    {"wait_new_app", step_wait_new_app},
    {"app_alive", step_app_alive},
    {"supervisor_alive", step_supervisor_alive},
    {"wait_supervisor_gone", step_wait_supervisor_gone},
    {"kill_supervisor", step_kill_supervisor},
    {"signal_supervisor", step_signal_supervisor},
    {"signal_app", step_signal_app},
    {"delete_config", step_delete_config},
    {"corrupt_config", step_corrupt_config},
    {"mount_tmpfs", step_mount_tmpfs},
    {"read_only", step_read_only},
    {"replace_with_file", step_replace_with_file},
    {"fill_disk", step_fill_disk},
    {"limit_log_size", step_limit_log_size},
    {"take_port", step_take_port},
    {"sentinel", step_sentinel},
    {"write_pid_file", step_write_pid_file},
    {"write_supervisor_pid", step_write_supervisor_pid},
    {"write_state", step_write_state},
    {"write_file", step_write_file},
    {"kill_server", step_kill_server},
    {"start_server", step_start_server},
    {"wait_log", step_wait_log},
    {"log_has", step_log_has},
    {"log_count", step_log_count},
    {"log_order", step_log_order},
    {"wait_served", step_wait_served},
};

/* ---- the end checks ------------------------------------------------------ */

static void list_pids(row_ctx_t *c, const char *what, const pid_t *pids, int n)
{
    for (int i = 0; i < n && i < 32; i++) {
        char comm[64];
        cmi_comm(pids[i], comm, sizeof comm);
        note(c, "  %s: PID %d (%s)", what, (int)pids[i], comm);
    }
}

/* No process carries the marker, or (app expected) exactly the supervisor
 * and the app state.json names. */
static void check_markers(row_ctx_t *c, int app_running)
{
    pid_t pids[64];
    double t0 = cmt_now_ms();
    int n;
    for (;;) {
        n = cmi_marked_pids(c->id, pids, 64);
        int ok;
        if (!app_running) {
            ok = n == 0;
        } else {
            int app = app_pid(c);
            pid_t sup = cmi_supervisor_pid(c->root);
            int has_app = 0, has_sup = 0;
            for (int i = 0; i < n && i < 64; i++) {
                if (pids[i] == app) has_app = 1;
                if (pids[i] == sup) has_sup = 1;
            }
            ok = n == 2 && has_app && has_sup;
        }
        if (ok) return;
        if (cmt_now_ms() - t0 > SETTLE_MS) break;
        usleep(20000);
    }
    if (!app_running) {
        note(c, "%d process(es) carrying CHAT_MANAGER_INSTANCE=%s are left:", n, c->id);
    } else {
        note(c,
             "expected exactly the supervisor (%d) and the app (%d) to carry the marker; found %d:",
             (int)cmi_supervisor_pid(c->root), app_pid(c), n);
    }
    list_pids(c, "marked", pids, n);
}

static void check_end_state(row_ctx_t *c, const char *want_state, int want_status)
{
    const char *argv[] = {cmt_env("CM_BINARY"), "--root", c->root, "status", "--json", NULL};
    cmt_result_t r = cmt_run(argv, c->env, CMD_TIMEOUT_MS);
    cJSON *j = cJSON_Parse(r.out);
    const char *state = j ? cmi_state_str(j, "state") : "(no JSON)";
    if (strcmp(state, want_state) != 0)
        note(c, "end state: status --json says \"%s\", expected \"%s\"", state, want_state);
    if (want_status >= 0 && r.code != want_status)
        note(c, "end state: status exits %d, expected %d", r.code, want_status);
    if (strcmp(state, want_state) != 0 || (want_status >= 0 && r.code != want_status))
        note(c, "--- status --json:\n%s%s---", r.out, r.err);
    cJSON_Delete(j);
    cmt_result_free(&r);
    /* The marker we scan for is the one the supervisor uses. */
    cJSON *st = cmi_read_state(c->root);
    const char *inst = st ? cmi_state_str(st, "instance") : "";
    if (*inst && strcmp(inst, c->id) != 0)
        note(c, "state.json's instance is %s, the runner computed %s", inst, c->id);
    cJSON_Delete(st);
}

static void check_config(row_ctx_t *c)
{
    char *path = root_file(c, "config.json");
    size_t len = 0;
    char *now = read_all(path, &len);
    free(path);
    push_row(c->index);
    lua_getfield(S, -1, "expect");
    lua_getfield(S, -1, "config");
    const char *switched = NULL;
    if (lua_istable(S, -1)) {
        lua_getfield(S, -1, "switched_to");
        switched = lua_tostring(S, -1);
        lua_pop(S, 1);
    }
    lua_pop(S, 3);
    if (switched) {
        cJSON *was = cJSON_Parse(c->config_orig);
        cJSON *is = now ? cJSON_Parse(now) : NULL;
        cJSON *backend = was ? cJSON_GetObjectItemCaseSensitive(was, "backend") : NULL;
        if (backend)
            cJSON_ReplaceItemInObjectCaseSensitive(backend, "active", cJSON_CreateString(switched));
        char *a = was ? cJSON_PrintUnformatted(was) : NULL;
        char *b = is ? cJSON_PrintUnformatted(is) : NULL;
        if (a == NULL || b == NULL || strcmp(a, b) != 0)
            unsafe(c,
                   "config.json is not the original with backend.active = \"%s\" (keys and "
                   "order kept):\n--- expected:\n%s\n--- found:\n%s",
                   switched, a ? a : "?", now ? now : "(missing)");
        free(a);
        free(b);
        cJSON_Delete(was);
        cJSON_Delete(is);
    } else if (c->config == NULL) {
        if (now != NULL) unsafe(c, "config.json was deleted, yet it exists again:\n%s", now);
    } else if (now == NULL) {
        unsafe(c, "config.json is gone");
    } else if (len != c->config_len || memcmp(now, c->config, len) != 0) {
        unsafe(c, "config.json changed:\n--- expected:\n%s--- found:\n%s", c->config, now);
    }
    free(now);
}

static void check_foreign(row_ctx_t *c)
{
    for (int i = 0; i < c->nsent; i++) {
        sentinel_t *s = &c->sent[i];
        char st = cmi_proc_state(s->pid);
        size_t n = 0;
        char *sigs = read_all(s->sigfile, &n);
        if (st == 0 || st == 'Z')
            unsafe(c, "the foreign process '%s' (%d) was killed", s->id, s->pid);
        else if (st == 'T' || st == 't')
            unsafe(c, "the foreign process '%s' (%d) was stopped", s->id, s->pid);
        for (size_t k = 0; sigs && k < n; k++)
            unsafe(c, "the foreign process '%s' (%d) received signal %d (%s)", s->id, s->pid,
                   (unsigned char)sigs[k], strsignal((unsigned char)sigs[k]));
        free(sigs);
    }
    for (int i = 0; i < c->nsrv; i++) {
        server_t *s = &c->srv[i];
        if (s->pid <= 0) continue; /* stopped by the row itself */
        if (!cmi_pid_alive(s->pid)) {
            char *out = read_all(s->out, NULL);
            unsafe(c, "fake-http '%s' (%d%s) is gone; its output:\n%s", s->id, (int)s->pid,
                   s->foreign ? ", foreign" : "", out ? out : "");
            free(out);
        } else if (cmi_http_status(s->port, "/", 10000) < 0) {
            unsafe(c, "fake-http '%s' (%d) no longer answers on port %d", s->id, (int)s->pid,
                   s->port);
        }
    }
}

/* ---- a row as a test ----------------------------------------------------- */

static int row_setup(void **state)
{
    int index = (int)(intptr_t)*state;
    row_ctx_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->index = index;
    *state = c;
    push_row(index);
    c->name = top_str("name");
    c->expect_fail = top_str("expect_fail");
    c->symptom = top_str("symptom");
    const char *needs = top_str("needs");
    int needs_mount = needs && strcmp(needs, "mount") == 0;
    lua_pop(S, 1);
    c->root = cmt_tempdir();
    c->scratch = cmt_tempdir();
    c->port = cmt_free_port();
    cmi_instance_id(c->root, c->id);
    if (needs_mount && !mount_ok) return 0; /* the test skips */

    /* Environment of every command. */
    lua_getglobal(S, "H");
    lua_getfield(S, -1, "env");
    lua_pushinteger(S, index);
    if (lua_pcall(S, 1, 1, 0) != LUA_OK) {
        note(c, "H.env: %s", lua_tostring(S, -1));
        c->setup_failed = 1;
        lua_settop(S, 0);
        return 0;
    }
    int n = (int)lua_rawlen(S, -1);
    c->env = calloc((size_t)n + 1, sizeof *c->env);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(S, -1, i);
        c->env[c->nenv++] = strdup(lua_tostring(S, -1));
        lua_pop(S, 1);
    }
    lua_pop(S, 2);

    /* Servers, then config.json naming them. */
    push_row(index);
    lua_getfield(S, -1, "servers");
    lua_newtable(S); /* urls */
    int urls = lua_gettop(S);
    if (lua_istable(S, urls - 1)) {
        lua_pushnil(S);
        while (lua_next(S, urls - 1) != 0) {
            server_t *s = new_server(c, lua_tostring(S, -2), lua_tostring(S, -1), 0);
            /* A failure is reported by the test, so that the teardown runs. */
            if (start_server(c, s) != 0) c->setup_failed = 1;
            lua_pushfstring(S, "http://127.0.0.1:%d", s->port);
            lua_setfield(S, urls, s->id);
            lua_pop(S, 1);
        }
    }
    lua_getfield(S, urls - 2, "models");
    int models = lua_toboolean(S, -1);
    lua_pop(S, 1);
    lua_getglobal(S, "H");
    lua_getfield(S, -1, "config");
    lua_pushinteger(S, index);
    lua_newtable(S);
    char *app = cmt_fixture("fake-app");
    char *python = cmt_fixture("fake-python");
    lua_pushstring(S, app);
    lua_setfield(S, -2, "app");
    lua_pushstring(S, python);
    lua_setfield(S, -2, "python");
    lua_pushinteger(S, c->port);
    lua_setfield(S, -2, "port");
    lua_pushvalue(S, urls);
    lua_setfield(S, -2, "urls");
    free(app);
    free(python);
    if (lua_pcall(S, 2, 1, 0) != LUA_OK) {
        note(c, "H.config: %s", lua_tostring(S, -1));
        c->setup_failed = 1;
        lua_settop(S, 0);
        return 0;
    }
    size_t len;
    const char *cfg = lua_tolstring(S, -1, &len);
    c->config = malloc(len + 1);
    memcpy(c->config, cfg, len + 1);
    c->config_len = len;
    c->config_orig = strdup(c->config);
    lua_settop(S, 0);
    char *path = root_file(c, "config.json");
    cmt_write_file(path, c->config);
    free(path);
    if (models) {
        char *dir = root_file(c, "models");
        mkdir(dir, 0755);
        char *src = cmt_fixture("gguf/valid-v3.gguf");
        size_t glen;
        char *data = read_all(src, &glen);
        char *dst = cmt_path(dir, "valid-v3.gguf");
        assert_non_null(data);
        assert_int_equal(write_bytes(dst, data, glen), 0);
        free(data);
        free(src);
        free(dst);
        free(dir);
    }
    return 0;
}

static int row_teardown(void **state)
{
    row_ctx_t *c = *state;
    if (c == NULL) return 0;
    for (int i = 0; i < c->nbg; i++)
        if (c->bg[i].pid > 0) cmt_kill_group(c->bg[i].pid);
    if (c->env != NULL) {
        /* Only processes carrying this root's marker. */
        const char *argv[] = {cmt_env("CM_BINARY"), "--root", c->root, "force-stop", NULL};
        cmt_result_t r = cmt_run(argv, c->env, CMD_TIMEOUT_MS);
        cmt_result_free(&r);
    }
    for (int i = 0; i < c->nsrv; i++)
        if (c->srv[i].pid > 0) cmt_kill_group(c->srv[i].pid);
    for (int i = 0; i < c->nsent; i++)
        cmt_kill_group(c->sent[i].pid);
    for (int i = c->nmounts - 1; i >= 0; i--) {
        if (umount2(c->mounts[i], 0) != 0) umount2(c->mounts[i], MNT_DETACH);
        free(c->mounts[i]);
    }
    cmt_rmtree(c->root);
    cmt_rmtree(c->scratch);
    for (int i = 0; i < c->nbg; i++)
        free(c->bg[i].out);
    for (int i = 0; i < c->nsrv; i++) {
        free(c->srv[i].out);
        free(c->srv[i].port_file);
    }
    for (int i = 0; i < c->nsent; i++)
        free(c->sent[i].sigfile);
    for (int i = 0; i < c->nenv; i++)
        free((char *)c->env[i]);
    free(c->env);
    free(c->config);
    free(c->config_orig);
    free(c->root);
    free(c->scratch);
    free(c);
    return 0;
}

static void run_row(void **state)
{
    row_ctx_t *c = *state;
    push_row(c->index);
    const char *needs = top_str("needs");
    lua_settop(S, 0);
    if (needs && strcmp(needs, "mount") == 0 && !mount_ok) {
        print_message("[  SKIP    ] %s: mounting a tmpfs is not permitted here\n", c->name);
        skip();
    }
    if (c->setup_failed) fail_msg("%s: setting up failed:\n%s", c->name, c->findings);
    double t0 = cmt_now_ms();
    push_row(c->index);
    lua_getfield(S, -1, "steps");
    int nsteps = (int)lua_rawlen(S, -1);
    for (int i = 1; i <= nsteps && !c->failed_step; i++) {
        lua_rawgeti(S, -1, i);
        const char *verb = top_arg(1);
        step_fn fn = NULL;
        for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++)
            if (verb && strcmp(verb, steps[k].verb) == 0) fn = steps[k].fn;
        size_t before = c->flen;
        double ts = cmt_now_ms();
        int rc = fn ? fn(c) : -1;
        if (verbose)
            print_message("           step %d %s: %.0f ms\n", i, verb ? verb : "?",
                          cmt_now_ms() - ts);
        if (rc != 0) {
            c->failed_step = i;
            char head[160];
            snprintf(head, sizeof head, "step %d (%s) failed:", i, verb ? verb : "?");
            /* Put the heading before what the step noted. */
            size_t hl = strlen(head) + 1;
            if (c->flen + hl < sizeof c->findings) {
                memmove(c->findings + before + hl, c->findings + before, c->flen - before + 1);
                memcpy(c->findings + before, head, hl - 1);
                c->findings[before + hl - 1] = '\n';
                c->flen += hl;
            }
        }
        lua_pop(S, 1);
    }
    lua_pop(S, 1); /* steps */
    lua_getfield(S, -1, "expect");
    const char *want_state = top_str("state");
    int want_status = (int)top_int("status", -1);
    int app_running = top_bool("app_running", 0);
    char decided[16];
    snprintf(decided, sizeof decided, "%s", want_state ? want_state : "?");
    lua_settop(S, 0);
    if (strcmp(decided, "running|stopped") == 0) {
        snprintf(decided, sizeof decided, "%s", *c->decided_state ? c->decided_state : "?");
        app_running = strcmp(decided, "running") == 0;
        want_status = app_running ? 0 : 3;
    }
    if (!c->failed_step) {
        check_markers(c, app_running);
        check_end_state(c, decided, want_status);
    }
    check_config(c);
    check_foreign(c);
    print_message("           %s: %.1f s\n", c->name, (cmt_now_ms() - t0) / 1000);
    if (c->expect_fail && !strict && !c->unsafe &&
        (c->flen == 0 || c->symptom == NULL || strstr(c->findings, c->symptom) != NULL)) {
        if (c->flen == 0)
            fail_msg("%s passes, but spec/faults.lua marks it expect_fail: remove the mark "
                     "(the product was fixed?)",
                     c->name);
        print_message("[  XFAIL   ] %s: known product bug: %s\n[  XFAIL   ] what it found:\n%s",
                      c->name, c->expect_fail, c->findings);
        skip();
    }
    if (c->flen > 0) {
        if (c->expect_fail)
            print_message("known product bug: %s\n%s", c->expect_fail,
                          c->unsafe ? "but this failure is about safety, never excused\n"
                          : strict  ? ""
                                    : "but the failure is not its symptom\n");
        cmt_print_long("%s:\n%s\n", c->name, c->findings);
        fail_msg("%s: see above", c->name);
    }
}

static void spec_is_valid(void **state)
{
    (void)state;
    if (spec_problem) fail_msg("%s: %s", spec_path, spec_problem);
}

/* ---- main ---------------------------------------------------------------- */

static void load_spec(void)
{
    S = luaL_newstate();
    luaL_openlibs(S);
    spec_path = cmt_source("spec/faults.lua");
    if (luaL_dofile(S, spec_path) != LUA_OK) {
        spec_problem = strdup(lua_tostring(S, -1));
        return;
    }
    lua_setglobal(S, "SPEC");
    if (luaL_loadbufferx(S, helpers, strlen(helpers), "=faults-helpers", "t") != LUA_OK) {
        spec_problem = strdup(lua_tostring(S, -1));
        return;
    }
    lua_getglobal(S, "SPEC");
    if (lua_pcall(S, 1, 1, 0) != LUA_OK) {
        spec_problem = strdup(lua_tostring(S, -1));
        return;
    }
    lua_setglobal(S, "H");
    lua_getglobal(S, "H");
    lua_getfield(S, -1, "check");
    if (lua_pcall(S, 0, 1, 0) != LUA_OK)
        spec_problem = strdup(lua_tostring(S, -1));
    else if (lua_isstring(S, -1))
        spec_problem = strdup(lua_tostring(S, -1));
    lua_settop(S, 0);
}

/* A private mount namespace (mounts vanish with the run), then a probe. */
static void probe_mount(void)
{
    if (unshare(CLONE_NEWNS) == 0) mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    char *dir = cmt_tempdir();
    if (mount("tmpfs", dir, "tmpfs", 0, "size=64k") == 0) {
        mount_ok = 1;
        umount2(dir, 0);
    }
    rmdir(dir);
    free(dir);
}

int main(void)
{
    const char *st = getenv("CM_FAULTS_STRICT");
    strict = st && *st && strcmp(st, "0") != 0;
    const char *vb = getenv("CM_FAULTS_VERBOSE");
    verbose = vb && *vb && strcmp(vb, "0") != 0;
    load_spec();
    probe_mount();
    int nrows = 0;
    if (spec_problem == NULL) {
        lua_getglobal(S, "SPEC");
        lua_getfield(S, -1, "rows");
        nrows = (int)lua_rawlen(S, -1);
        lua_settop(S, 0);
    }
    /* CM_FAULTS_ONLY=text: only the rows whose name contains it. */
    const char *only = getenv("CM_FAULTS_ONLY");
    struct CMUnitTest *tests = calloc((size_t)nrows + 1, sizeof *tests);
    size_t ntests = 0;
    tests[ntests++] = (struct CMUnitTest){"spec_is_valid", spec_is_valid, NULL, NULL, NULL};
    for (int i = 1; i <= nrows; i++) {
        push_row(i);
        const char *name = top_str("name");
        if (!only || !*only || (name && strstr(name, only)))
            tests[ntests++] = (struct CMUnitTest){strdup(name ? name : "unnamed"), run_row,
                                                  row_setup, row_teardown, (void *)(intptr_t)i};
        lua_settop(S, 0);
    }
    int rc = _cmocka_run_group_tests("faults", tests, ntests, NULL, NULL);
    for (size_t i = 1; i < ntests; i++)
        free((char *)tests[i].name);
    free(tests);
    free(spec_path);
    free(spec_problem);
    lua_close(S);
    return rc;
}
