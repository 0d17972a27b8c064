-- The bad-input matrix: every way a user, a config file, a
-- model file, a backend server or a user's Lua can be wrong, and what the
-- real binary must do about it.  tests/test_bad_input.c turns every row into
-- one cmocka test (a `truncate` row into one test per prefix length) and
-- checks, for each:
--
--   * the exit code (`exit`);
--   * every substring of `message` in stdout+stderr, and none of `absent`
--     (nor "stack traceback" unless `traceback_ok`: a clear message is not a
--     Lua traceback);
--   * nothing on disk changed: the root's files (path, type, bytes, mode,
--     symlink target) before the command and after it (and after the `after`
--     commands) are the same, except run/ and logs/, which commands may
--     create, and the files named in `changes` (path -> substrings the new
--     content must hold; a table may give `prefix` too);
--   * no sanitizer report (the suite runs under ASan+UBSan) in the output of
--     any command run for the row, nor in run/supervisor.log;
--   * with `stdout_json`, stdout is one JSON document.
--
-- Row fields:
--   name        unique, shown by cmocka (prefixed by the group)
--   group       "command", "port", "config", "gguf", "http", "policy",
--               "user-command", "user-backend"
--   argv        the command line after `--root <root>` (`no_root` leaves
--               --root out); "${...}" placeholders are substituted
--   env         extra environment ("K" = "V"); every row gets
--               FAKE_PYTHON_LLAMA=missing unless it sets it
--   config      config.json text (placeholders substituted); nil = BASE;
--               false = no config.json; `config_raw` = bytes written as they
--               are (no substitution: NUL bytes, 50 MB)
--   files       root-relative path -> text | { raw = bytes } |
--               { fixture = "gguf/x.gguf" } | { dir = true } |
--               { symlink = target } | { fifo = true } | { mode = octal }
--   http        { mode = "<fake-http mode>", delay_ms = n } runs fixtures'
--               fake-http; { body = bytes, status = "200 OK", short = true }
--               runs the runner's one-answer server (short: the body is cut
--               before Content-Length); its port is ${HTTP_PORT}
--   after       list of argv lists run after the command (cleanup: `stop`)
--   timeout     ms for the command (default 30000); a row that hangs fails
--   requires    a path that must exist for the row to run (else skipped)
--   skip_as_root  the row means nothing when run as root (skipped)
--   key         the settings.lua schema key a config row covers (the runner
--               fails when a schema key has no row)
--   expect_fail "diagnosis": the row fails today because the PRODUCT
--               misbehaves; the diagnosis says where and what should happen.
--               The test passes while the row fails, and fails as soon as
--               the row passes (remove the mark then).  Sanitizer reports
--               fail the test even in such a row.
--
-- Placeholders: ${ROOT} (the temp root, real path), ${PORT} (a free port,
-- server.port), ${HTTP_PORT}, ${FIXTURES}, ${PYTHON} (fake-python),
-- ${APP} (fake-app), ${TMP_FILE} (a regular file outside the root).

-- ---- configs ---------------------------------------------------------------

-- A valid config that keeps every check local and quick: Ollama at a port
-- that refuses at once, the fixture Python (FAKE_PYTHON_LLAMA=missing by
-- default), the fixture app, short timeouts.
local function base(o)
    o = o or {}
    local policy = o.policy and (',\n    "policy": "%s"'):format(o.policy) or ""
    if o.user_timeout then
        policy = policy .. (',\n    "user_code": {"timeout": %s}'):format(o.user_timeout)
    end
    return ([[
{
  "backend": {"active": "%s", "auto_fallback": %s, "health_check_interval": 3600},
  "ollama": {"base_url": "%s", "timeout": %d, "connect_timeout": 1},
  "llamacpp": {"python": "${PYTHON}", "model_path": "./models"},
  "server": {"port": ${PORT}},
  "manager": {
    "app": {"command": [%s], "env": {"FAKE_APP_MODE": "instant"}},
    "start_timeout": 10,
    "stop_timeout": 5,
    "health_timeout": 2,
    "health_connect_timeout": 1%s
  }
}
]]):format(o.active or "ollama", tostring(o.auto_fallback == true),
        o.base_url or "http://127.0.0.1:1", o.timeout or 2, o.command or '"${APP}"', policy)
end

local BASE = base()
local BOM = "\xEF\xBB\xBF"

local rows = {}
local function add(group, row)
    row.group = group
    if row.config == nil and row.config_raw == nil then row.config = BASE end
    rows[#rows + 1] = row
    return row
end

-- {"a": {"b": {"c": <value>}}} for the dotted key "a.b.c".
local function nested(key, value_json)
    local parts = {}
    for p in key:gmatch("[^.]+") do parts[#parts + 1] = p end
    local text = value_json
    for i = #parts, 1, -1 do text = ('{"%s": %s}'):format(parts[i], text) end
    return text
end

-- ---- 1. commands: arity, types, unknown flags --------------------------------

local USAGE = "usage: chat-manager "
local command_rows = {
    { "start with two ports", { "start", "3000", "3001" }, 2, USAGE .. "start [port]" },
    { "start --bogus", { "start", "--bogus" }, 2, "Invalid port: --bogus" },
    { "restart with two ports", { "restart", "3000", "3001" }, 2, USAGE .. "restart [port]" },
    { "restart --bogus", { "restart", "--bogus" }, 2, "Invalid port: --bogus" },
    { "run with two ports", { "run", "3000", "3001" }, 2, USAGE .. "run [port]" },
    { "run --bogus", { "run", "--bogus" }, 2, "Invalid port: --bogus" },
    { "stop with an argument", { "stop", "now" }, 2, USAGE .. "stop" },
    { "stop --force", { "stop", "--force" }, 2, USAGE .. "stop" },
    { "force-stop with an argument", { "force-stop", "all" }, 2, USAGE .. "force-stop" },
    { "force-stop --all", { "force-stop", "--all" }, 2, USAGE .. "force-stop" },
    { "status with an argument", { "status", "app" }, 2, USAGE .. "status" },
    { "status --verbose", { "status", "--verbose" }, 2, USAGE .. "status" },
    { "logs with an unknown log", { "logs", "app" }, 2, "no such log: app" },
    { "logs with two logs", { "logs", "1", "2" }, 2, "one log at a time: 2" },
    { "logs --bogus", { "logs", "--bogus" }, 2, "unknown option: --bogus" },
    { "logs --since without a time", { "logs", "--since" }, 2, "--since needs a value" },
    { "logs --since yesterday", { "logs", "--since", "yesterday" }, 2, "--since needs a time" },
    { "logs 0", { "logs", "0" }, 2, "no log number 0" },
    { "completion for an unknown shell", { "completion", "tcsh" }, 2,
      USAGE .. "completion bash|zsh|fish" },
    { "logs -n without a number", { "logs", "-n" }, 2, "-n needs a number of lines" },
    { "logs -n abc", { "logs", "-n", "abc" }, 2, "-n needs a number of lines" },
    { "logs -n -1", { "logs", "-n", "-1" }, 2, "-n needs a number of lines" },
    { "logs -n 1.5", { "logs", "-n", "1.5" }, 2, "-n needs a number of lines" },
    { "logs -n 1e30", { "logs", "-n", "99999999999999999999", "--no-follow" }, 2,
      "-n needs a number of lines" },
    { "backend without a subcommand", { "backend" }, 2, "backend needs a subcommand" },
    { "backend bogus", { "backend", "bogus" }, 2, "Unknown backend subcommand: bogus" },
    { "backend status with an argument", { "backend", "status", "ollama" }, 2,
      "backend status takes no arguments" },
    { "backend status --bogus", { "backend", "status", "--bogus" }, 2,
      "backend status takes no arguments" },
    { "backend list with an argument", { "backend", "list", "ollama" }, 2,
      "backend status takes no arguments" },
    { "backend health with two names", { "backend", "health", "ollama", "llamacpp" }, 2,
      "backend health takes at most one backend name" },
    { "backend health of an unknown backend", { "backend", "health", "nosuch" }, 2,
      { "Unknown backend: nosuch", "Available backends: llamacpp, ollama" } },
    { "backend health of an empty name", { "backend", "health", "" }, 2, "Unknown backend: " },
    { "backend health --bogus", { "backend", "health", "--bogus" }, 2, "Unknown backend: --bogus" },
    { "backend switch without a name", { "backend", "switch" }, 2,
      "backend switch needs a backend name" },
    { "backend switch with two names", { "backend", "switch", "ollama", "llamacpp" }, 2,
      "backend switch takes one backend name" },
    { "backend switch --bogus", { "backend", "switch", "--bogus", "llamacpp" }, 2,
      "unknown option for backend switch: --bogus" },
    { "backend switch to an unknown backend", { "backend", "switch", "nosuch" }, 2,
      "Unknown backend: nosuch" },
    { "backend switch to an empty name", { "backend", "switch", "" }, 2, "Unknown backend: " },
    { "backend switch to a path", { "backend", "switch", "../../etc/passwd" }, 2,
      "Unknown backend: ../../etc/passwd" },
    { "help with a command", { "help", "start" }, 0, "Usage: chat-manager start [port]" },
    { "help of an unknown command", { "help", "bogus" }, 2, "Unknown command: bogus" },
    { "start --help", { "start", "--help" }, 0, "Usage: chat-manager start [port]" },
    { "backend switch -h", { "backend", "switch", "x", "-h" }, 0, "Usage: chat-manager backend" },
    { "an unknown command", { "bogus" }, 2, { "Unknown command: bogus", "Usage: chat-manager" } },
    { "an unknown global flag", { "--bogus" }, 2, "Unknown command: --bogus" },
    { "an empty command", { "" }, 2, "Unknown command: " },
}
for _, c in ipairs(command_rows) do
    local row = add("command", { name = c[1], argv = c[2], exit = c[3], message = c[4] })
    if c[1] == "logs -n 1e30" then
        -- parse() takes -n<digits> as written and math.tointeger gives nil
        -- for 20 digits; only matters once a log exists.
        row.files = { ["logs/chat-o-llama_20240101_000000.log"] = "one\ntwo\n" }
        row.argv = { "logs", "-n99999999999999999999", "--no-follow" }
    end
end

add("command", { name = "--root without a directory", no_root = true, argv = { "--root" },
    exit = 2, message = "--root needs a directory" })
add("command", { name = "--root of a missing directory", no_root = true,
    argv = { "--root", "${ROOT}/nonexistent", "status" }, exit = 2,
    message = "root directory not found: ${ROOT}/nonexistent" })
add("command", { name = "--root= empty", no_root = true, argv = { "--root=", "status" },
    env = { CHAT_MANAGER_ROOT = "${ROOT}" }, exit = 2, message = "root" })
add("command", { name = "--root of a regular file (status)", no_root = true,
    argv = { "--root", "${TMP_FILE}", "status" }, exit = 2, message = "not a directory" })
add("command", { name = "--root of a regular file (force-stop)", no_root = true,
    argv = { "--root", "${TMP_FILE}", "force-stop" }, exit = 2, message = "not a directory" })

-- ---- 2. ports for start, restart, run --------------------------------------------

local bad_ports = { "0", "-1", "65536", "1e9", "abc", "", "3113.0", "0x50", " 80", "+80",
                    "99999999999999999999" }
for _, cmd in ipairs({ "start", "restart", "run" }) do
    for _, p in ipairs(bad_ports) do
        add("port", { name = ("%s %q"):format(cmd, p), argv = { cmd, p }, exit = 2,
            message = ("Invalid port: %s (expected 1-65535)"):format(p) })
    end
end

-- ---- 3. config.json ----------------------------------------------------------------

-- The commands every broken config is tried with, and what each must do:
-- status reports (LSB 3, not running) with the error as a warning; the
-- others refuse with exit 1.  `backend switch` must never write to it.
local config_commands = {
    { "status", { "status" }, 3 },
    { "start", { "start" }, 1 },
    { "backend status", { "backend", "status" }, 1 },
    { "backend switch ollama", { "backend", "switch", "ollama" }, 1 },
}
local function config_rows(name, fields)
    for _, c in ipairs(config_commands) do
        local row = { name = ("%s: %s"):format(c[1], name), argv = c[2], exit = c[3] }
        for k, v in pairs(fields) do row[k] = v end
        add("config", row)
    end
end

-- Where cJSON and Python's json (the app) disagree, the manager refuses
-- and says so: a leading zero (Python refuses), a key twice in one object
-- (Python keeps the last, cJSON would find the first), NaN / Infinity
-- (Python accepts them, JSON does not).
config_rows("a number with a leading zero", { config = '{"server": {"port": 03113}}\n',
    message = "config.json:1:21: the number 03113 has a leading zero: Python's json (the app) refuses it" })
config_rows("a duplicate key", { config = '{"backend": {"active": "ollama", "active": "llamacpp"}}\n',
    message = "the key 'active' occurs twice in 'backend': Python's json (the app) would use the last" })
config_rows("NaN", { config = '{"manager": {"start_timeout": NaN}}\n',
    message = "NaN and Infinity are not JSON: Python's json accepts them, the manager refuses them" })

-- "\u0000" in keys and values the switch does not touch: every byte kept
-- (cJSON's strings end at a NUL: they were cut there, and "k\u0000ey"
-- became a second "k").
add("config", { name = "backend switch keeps \\u0000 in keys and values it does not touch",
    argv = { "backend", "switch", "llamacpp" }, exit = 0,
    config = BASE:gsub("^{", '{\n  "k\\u0000ey": "x\\u0000y",\n  "k": 1,', 1),
    message = "Switched to backend 'llamacpp'",
    changes = { ["config.json"] = { '"k\\u0000ey": "x\\u0000y",\n  "k": 1,', '"active": "llamacpp"' } } })

for _, v in ipairs({ { "[]", "not an array" }, { "[1, 2]", "not an array" }, { "1", "not a number" },
                     { '"config"', "not a string" }, { "null", "not null" },
                     { "true", "not a boolean" } }) do
    config_rows(("top level %s"):format(v[1]),
        { config = v[1] .. "\n", message = "config.json: top level must be a JSON object, " .. v[2] })
end
config_rows("an empty file", { config = "", message = "config.json:1:1: empty file" })
config_rows("only white space", { config = "  \n\t\n", message = "config.json:1:1: empty file" })
config_rows("only a UTF-8 BOM", { config = BOM, message = "config.json:1:1: empty file" })
config_rows("NUL bytes", { config_raw = '{"backend": {"active": "oll\0ama"}}\n',
    message = "invalid JSON: NUL byte" })
config_rows("a 50 MB file", { config_raw = '{"pad": "' .. ("x"):rep(50 * 1000 * 1000) .. '"}\n',
    message = "file too large (50000012 bytes, limit 16 MiB)" })
config_rows("10 000 levels of nesting",
    { config_raw = '{"a": ' .. ("["):rep(10000) .. ("]"):rep(10000) .. "}\n",
      message = "invalid JSON: nesting deeper than 1000 levels" })
config_rows("a syntax error (line 7)",
    { files = { ["config.json"] = { fixture = "configs/syntax-error-line7.json" } }, config = false,
      message = "config.json:7:3: invalid JSON" })
config_rows("cut in the middle", { config = '{"backend": {"active": "oll',
    message = "config.json:1:24: invalid JSON: unterminated string (the file ends inside it)" })
config_rows("a directory", { config = false, files = { ["config.json"] = { dir = true } },
    message = "config.json: Is a directory" })
config_rows("a FIFO (must not block)", { config = false, files = { ["config.json"] = { fifo = true } },
    message = "config.json: not a regular file", timeout = 10000 })

-- A UTF-8 BOM before valid JSON is accepted (Windows editors write one) and
-- kept by writes: decided, and shown by each command.
add("config", { name = "status: BOM + valid JSON (accepted)", config = BOM .. BASE, argv = { "status" },
    exit = 3, message = "Chat-O-Llama is not running", absent = { "[ERROR]", "invalid JSON" } })
add("config", { name = "start: BOM + valid JSON (accepted)",
    config = BOM .. base({ command = '"/nonexistent/bad-input-app"' }), argv = { "start" }, exit = 1,
    message = "/nonexistent/bad-input-app not found", absent = "invalid JSON" })
add("config", { name = "backend status: BOM + valid JSON (accepted)", config = BOM .. BASE,
    argv = { "backend", "status" }, exit = 0, message = "Active backend: ollama" })
add("config", { name = "backend switch ollama: BOM + valid JSON (already active)", config = BOM .. BASE,
    argv = { "backend", "switch", "ollama" }, exit = 0, message = "Backend 'ollama' is already active" })
add("config", { name = "backend switch llamacpp: BOM + valid JSON (written, BOM kept)", config = BOM .. BASE,
    argv = { "backend", "switch", "llamacpp" }, exit = 0, message = "Switched to backend 'llamacpp'",
    changes = { ["config.json"] = { prefix = BOM .. "{", '"active": "llamacpp"', '"port": ${PORT}' } } })

-- Each known key (lua/settings.lua's schema) with a value of the wrong type.
local wrong = {
    { "backend.active", "42" }, { "backend.active", '""' },
    { "backend.auto_fallback", '"yes"' },
    { "backend.health_check_interval", "0" }, { "backend.health_check_interval", '"30"' },
    { "backend.order", '"ollama"' }, { "backend.order", "[1]" },
    { "ollama.base_url", "11434" },
    { "ollama.timeout", "-1" },
    { "ollama.connect_timeout", '"5"' },
    { "ollama.verify_ssl", '"false"' },
    { "llamacpp.model_path", "[]" },
    { "llamacpp.server_url", "8080" },
    { "llamacpp.python", "true" },
    { "server.port", '"3113"' }, { "server.port", "0" }, { "server.port", "65536" },
    { "server.port", "3113.5" }, { "server.port", "1e9" },
    { "manager.app.command", '"python3 app.py"' }, { "manager.app.command", "[]" },
    { "manager.app.command", '["python3", 5]' },
    { "manager.app.cwd", "{}" },
    { "manager.app.env", '{"A": 1}' }, { "manager.app.env", '["A=1"]' },
    { "manager.app.venv", "true" }, { "manager.app.venv", "5" },
    { "manager.app.switch_path", "5" }, { "manager.app.switch_path", '"api/backend/switch"' },
    { "manager.app.status_path", "false" },
    { "manager.start_timeout", "0" },
    -- JSON spells infinity as 1e999: it passed as "positive" and then
    -- failed every start.
    { "manager.start_timeout", "1e999" }, { "manager.stop_timeout", "1e999" },
    { "manager.health_timeout", "-1e999" }, { "manager.fallback_cooldown", "1e999" },
    { "manager.stop_timeout", "-5" },
    { "manager.health_path", "5" },
    { "manager.health_connect_timeout", '"5"' },
    { "manager.health_timeout", "false" },
    { "manager.restart.policy", '"sometimes"' },
    { "manager.restart.max_restarts", "-1" }, { "manager.restart.max_restarts", "2.5" },
    { "manager.restart.backoff_initial", "0" },
    { "manager.restart.backoff_max", '"60"' },
    { "manager.restart.reset_after", "[]" },
    { "manager.fallback_after", "0" },
    { "manager.fallback_cooldown", "-1" },
    { "manager.failback_after", "0" },
    { "manager.log_keep", "0" },
    { "manager.log_max_bytes", "-1" },
    { "manager.log_backups", "1.5" },
    { "manager.policy", "5" },
    { "manager.user_code.timeout", "0" }, { "manager.user_code.timeout", "1e999" },
    { "manager.user_code.memory_mb", "1.5" }, { "manager.user_code.max_output", '"64k"' },
}
for _, w in ipairs(wrong) do
    for _, c in ipairs(config_commands) do
        add("config", { name = ("%s: %s = %s"):format(c[1], w[1], w[2]), key = w[1],
            config = nested(w[1], w[2]) .. "\n", argv = c[2], exit = c[3],
            message = ("config.json: '%s' must be "):format(w[1]) })
    end
end

-- A section that is not an object hides every key below it: today the keys
-- silently fall back to their defaults and a switch writes into the file.
local sections = {
    { "manager", "5" }, { "manager.app", '"python3 app.py"' }, { "manager.restart", "[]" },
    { "backend", '"ollama"' }, { "ollama", "[]" }, { "llamacpp", "true" }, { "server", "3113" },
    { "manager.user_code", "5" },
}
for _, s in ipairs(sections) do
    for _, c in ipairs({ { "status", { "status" }, 3 }, { "backend status", { "backend", "status" }, 1 },
                         { "backend switch llamacpp", { "backend", "switch", "llamacpp" }, 1 } }) do
        add("config", { name = ("%s: section %s = %s"):format(c[1], s[1], s[2]),
            config = nested(s[1], s[2]) .. "\n", argv = c[2], exit = c[3],
            message = ("config.json: '%s' must be an object"):format(s[1]) })
    end
end

-- ---- 4. model files for `backend health llamacpp` --------------------------------

local function u32(n) return string.pack("<I4", n) end
local function u64(n) return string.pack("<i8", n) end -- -1 is 2^64-1
local function gstr(s) return u64(#s) .. s end
local function header(tensors, kvs, version) return "GGUF" .. u32(version or 3) .. u64(tensors) .. u64(kvs) end
local function kv_str(k, v) return gstr(k) .. u32(8) .. gstr(v) end
local function kv_u32(k, v) return gstr(k) .. u32(4) .. u32(v) end
local function tensor(name, dims, ttype, offset)
    local t = gstr(name) .. u32(#dims)
    for _, d in ipairs(dims) do t = t .. u64(d) end
    return t .. u32(ttype) .. u64(offset)
end
local function aligned(s) return s .. ("\0"):rep((32 - #s % 32) % 32) end
-- A valid version 3 file: one metadata pair and one 4x3 F32 tensor.
local function gguf(meta, tensors, kvs, n_tensors)
    meta = meta or kv_str("general.architecture", "llama")
    tensors = tensors or tensor("token_embd.weight", { 4, 3 }, 0, 0)
    return aligned(header(n_tensors or 1, kvs or 1) .. meta .. tensors) .. ("\0"):rep(48)
end
local function nest_arrays(depth)
    if depth == 0 then return u32(4) .. u64(0) end
    return u32(9) .. u64(1) .. nest_arrays(depth - 1)
end

local GGUF_ENV = { FAKE_PYTHON_LLAMA = "present" }
local function gguf_row(name, files, exit, message, extra)
    local row = { name = name, argv = { "backend", "health", "llamacpp" }, env = GGUF_ENV,
                  files = files, exit = exit, message = message }
    for k, v in pairs(extra or {}) do row[k] = v end
    return add("gguf", row)
end
local function model(bytes) return { ["models/x.gguf"] = { raw = bytes } } end
local NOT_COUNTED = "x.gguf  not counted: "

gguf_row("control: the fixture valid-v3.gguf is healthy",
    { ["models/x.gguf"] = { fixture = "gguf/valid-v3.gguf" } }, 0, "Tiny Test (llama, 1B, 1.24B parameters, Q8_0, 464 B)")
gguf_row("control: the spec's own valid file is healthy", model(gguf()), 0, "1 model (x.gguf)")
for _, f in ipairs({
    { "truncated.gguf", "truncated at byte 89 while reading the type of 'general.name'" },
    { "wrong-magic.gguf", 'not a GGUF file (magic "GGML")' },
    { "absurd-count.gguf", "absurd metadata count 1152921504606846976" },
    { "absurd-string.gguf", "string length 1099511627776 exceeds the file (52 bytes)" },
    { "empty.gguf", "not a GGUF file (empty)" },
    { "v1.gguf", "unsupported GGUF version 1" },
}) do
    gguf_row("fixture " .. f[1], { ["models/x.gguf"] = { fixture = "gguf/" .. f[1] } }, 1,
        { "no valid GGUF model in ${ROOT}/models", NOT_COUNTED .. f[2] })
end
for _, g in ipairs({
    { "wrong magic (binary bytes)", "\0\1\2\3" .. gguf():sub(5), 'not a GGUF file (magic "\\x00\\x01\\x02\\x03")' },
    { "big-endian version", "GGUF" .. string.pack(">I4", 3) .. gguf():sub(9), "big-endian GGUF file (version 3)" },
    { "version 99", "GGUF" .. u32(99) .. gguf():sub(9), "unknown GGUF version 99" },
    { "tensor count 2^63", header(math.mininteger, 0) .. ("\0"):rep(64), "absurd tensor count 9223372036854775808" },
    { "metadata count 2^20 + 1", header(0, (1 << 20) + 1) .. ("\0"):rep(64), "absurd metadata count 1048577" },
    { "key length 2^64 - 1", header(0, 1) .. u64(-1) .. ("\0"):rep(64),
      "string length 18446744073709551615 exceeds the file" },
    { "value length 2^40", header(0, 1) .. gstr("general.name") .. u32(8) .. u64(1 << 40) .. "abc",
      "string length 1099511627776 exceeds the file" },
    { "array of 2^62 u64", gguf(gstr("a") .. u32(9) .. u32(10) .. u64(1 << 62)),
      "array of 4611686018427387904 elements exceeds the file" },
    { "array of 2^64 - 1 strings", gguf(gstr("a") .. u32(9) .. u32(8) .. u64(-1)),
      "array of 18446744073709551615 elements exceeds the file" },
    { "arrays nested 6 deep", gguf(gstr("a") .. u32(9) .. nest_arrays(6) .. ("\0"):rep(64)), "arrays nested too deeply" },
    { "value type 99", gguf(gstr("a") .. u32(99) .. u32(0)), "unknown value type 99 for 'a'" },
    { "array element type 99", gguf(gstr("a") .. u32(9) .. u32(99) .. u64(1)), "unknown array element type 99" },
    { "a tensor with 1000 dimensions", gguf(nil, gstr("t") .. u32(1000) .. ("\0"):rep(64)),
      "tensor 't' has 1000 dimensions (at most 4)" },
    { "tensor dimensions overflowing 64 bits", gguf(nil, tensor("t", { 1 << 32, 1 << 32, 1 << 32 }, 0, 0)),
      "tensor 't' has absurd dimensions" },
    { "tensor offset 2^64 - 32", gguf(nil, tensor("t", { 4, 3 }, 0, -32)), "tensor 't' has an absurd offset" },
    { "tensor offset not aligned", gguf(nil, tensor("t", { 4, 3 }, 0, 1)), "tensor 't' is not aligned to 32 bytes" },
    { "general.alignment 0", gguf(kv_u32("general.alignment", 0)), "general.alignment 0 is not a power of two" },
    { "general.alignment 3", gguf(kv_u32("general.alignment", 3)), "general.alignment 3 is not a power of two" },
    { "Q4_0 rows of 5 elements", gguf(nil, tensor("t", { 5 }, 2, 0)),
      "tensor 't' has rows of 5 elements, not a whole number of blocks" },
    { "a 1 GiB tensor in a small file", gguf(nil, tensor("t", { 1 << 28 }, 0, 0)),
      "truncated: the tensor data needs" },
    { "tensor count 2^20 with one tensor", gguf(nil, nil, nil, 1 << 20), "truncated at byte" },
}) do
    gguf_row(g[1], model(g[2]), 1, { "no valid GGUF model in ${ROOT}/models", NOT_COUNTED .. g[3] })
end

-- Every prefix of valid-v3.gguf (the runner makes one test per length).  The
-- message names the file's size: "truncated at byte N while reading ...",
-- "... the file ends at byte N ..." or "string length L exceeds the file (N
-- bytes)"; or, inside an array, "array of 3 elements exceeds the file in the
-- value of '...'" (a table in a message list is a set of alternatives).
add("gguf", { name = "valid-v3.gguf truncated", argv = { "backend", "health", "llamacpp" }, env = GGUF_ENV,
    truncate = { fixture = "gguf/valid-v3.gguf", file = "models/x.gguf" }, exit = 1,
    message = function(n)
        if n == 0 then return NOT_COUNTED .. "not a GGUF file (empty)" end
        if n < 4 then return ("%snot a GGUF file (%d bytes)"):format(NOT_COUNTED, n) end
        return { NOT_COUNTED, { ("byte %d "):format(n), ("(%d bytes)"):format(n), "exceeds the file" } }
    end })

-- Not files.
gguf_row("a directory named x.gguf", { ["models/x.gguf"] = { dir = true } }, 1,
    { "no valid GGUF model", NOT_COUNTED .. "a directory, not a file" })
gguf_row("a dangling symlink", { ["models/x.gguf"] = { symlink = "/nonexistent/model.gguf" } }, 1,
    { "no valid GGUF model", NOT_COUNTED .. "a dangling symlink" })
gguf_row("a FIFO named x.gguf (must not block)", { ["models/x.gguf"] = { fifo = true } }, 1,
    { "no valid GGUF model", NOT_COUNTED, "not a file" }, { absent = "a other", timeout = 10000 })
gguf_row("a symlink to a character device", { ["models/x.gguf"] = { symlink = "/dev/zero" } }, 1,
    { "no valid GGUF model", NOT_COUNTED, "not a file" }, { absent = "a other", requires = "/dev/zero" })
gguf_row("a symlink loop", { ["models/x.gguf"] = { symlink = "x.gguf" } }, 1,
    { "no valid GGUF model", NOT_COUNTED .. "Too many levels of symbolic links" },
    {})
-- Unreadable even for root: a write-only sysctl refuses O_RDONLY opens with
-- EACCES whatever the capabilities (chmod 000 does not stop root).
gguf_row("an unreadable file (write-only sysctl, EACCES even for root)",
    { ["models/x.gguf"] = { symlink = "/proc/sys/vm/compact_memory" } }, 1,
    { "no valid GGUF model", NOT_COUNTED .. "Permission denied" },
    { requires = "/proc/sys/vm/compact_memory" })
gguf_row("an unreadable file (mode 000, not root)", { ["models/x.gguf"] = { fixture = "gguf/valid-v3.gguf", mode = 0 } },
    1, { "no valid GGUF model", NOT_COUNTED .. "Permission denied" }, { skip_as_root = true })
gguf_row("models/ is a regular file", { ["models"] = "not a directory\n" }, 1,
    "model path is not a directory: ${ROOT}/models")
gguf_row("models/ is a dangling symlink", { ["models"] = { symlink = "/nonexistent/models" } }, 1,
    "model directory not found: ${ROOT}/models")
gguf_row("a valid model next to a broken one (healthy, broken one named)",
    { ["models/a.gguf"] = { fixture = "gguf/valid-v3.gguf" }, ["models/b.gguf"] = { fixture = "gguf/truncated.gguf" } },
    0, { "1 model (Tiny Test)", "1 file not counted (b.gguf)", "b.gguf  not counted: truncated at byte 89" })

-- ---- 5. HTTP answers for `backend health ollama` ----------------------------------

local function http_row(name, http, message, extra)
    local row = { name = name, argv = { "backend", "health", "ollama" }, http = http, exit = 1,
                  config = base({ base_url = "http://127.0.0.1:${HTTP_PORT}", timeout = 1 }),
                  message = message, absent = "✓ healthy" }
    for k, v in pairs(extra or {}) do row[k] = v end
    add("http", row)
    if not (extra and extra.expect_fail) then
        -- The same answer under --json: stdout stays one JSON document.
        local j = {}
        for k, v in pairs(row) do j[k] = v end
        j.name, j.argv, j.message, j.stdout_json = name .. " (--json)",
            { "backend", "health", "ollama", "--json" }, '"healthy": false', true
        add("http", j)
    end
end
local TAGS = "http://127.0.0.1:${HTTP_PORT}/api/tags"
http_row("fake-http huge: a 64 MiB body (capped at 8 MiB)", { mode = "huge" },
    { "the answer from " .. TAGS .. " is too large", "really an Ollama server" })
http_row("fake-http invalid-json", { mode = "invalid-json" }, TAGS .. " did not answer valid JSON")
http_row("fake-http wrong-shape", { mode = "wrong-shape" }, TAGS .. ' answered JSON of an unexpected shape: no "models" list')
http_row("fake-http http500", { mode = "http500" }, "HTTP 500 from " .. TAGS)
http_row("fake-http close", { mode = "close" }, TAGS .. " closed the connection without an answer")
http_row("fake-http hang (1 s timeout)", { mode = "hang" }, "no answer from " .. TAGS .. " within 1 s")
http_row("a 9 MiB body with Content-Length", { body = '{"models": [], "pad": "' .. ("x"):rep(9 * 1024 * 1024) .. '"}' },
    "the answer from " .. TAGS .. " is too large")
http_row("a JSON array", { body = "[]" }, 'unexpected shape: no "models" list')
http_row("a JSON string", { body = '"models"' }, 'unexpected shape: no "models" list')
http_row("models null", { body = '{"models": null}' }, 'unexpected shape: no "models" list')
http_row("models a number", { body = '{"models": 3}' }, 'unexpected shape: no "models" list')
http_row("a model that is a number", { body = '{"models": [1]}' }, "unexpected shape: model #1 has no name")
http_row("a model whose name is a number", { body = '{"models": [{"name": "a"}, {"name": 5}]}' },
    "unexpected shape: model #2 has no name")
http_row("models an object with keys", { body = '{"models": {"llama3": {"name": "llama3"}}}' },
    'unexpected shape: no "models" list',
    {})
http_row("an empty body", { body = "" }, TAGS .. " did not answer valid JSON")
http_row("HTML instead of JSON", { body = "<html><body>It works!</body></html>" },
    TAGS .. " did not answer valid JSON")
http_row("a raw NUL byte in the JSON", { body = '{"models": ["\0"]}' }, "NUL byte")
http_row("10 000 levels of nesting", { body = '{"models": ' .. ("["):rep(10000) .. ("]"):rep(10000) .. "}" },
    "nesting deeper than 1000 levels")
-- src/http.c maps CURLE_PARTIAL_FILE to "closed" on purpose.
http_row("a body cut before its Content-Length", { body = '{"models": [', short = true },
    TAGS .. " closed the connection")
http_row("HTTP 404", { body = '{"error": "not found"}', status = "404 Not Found" },
    { "HTTP 404 from " .. TAGS, "really an Ollama server" })

-- ---- 6. user Lua: the policy (manager.policy) ---------------------------------------

-- Where the policy runs: lua/control.lua check_backends_at_start() asks
-- policy.fallback.evaluate at every `start` (and lua/health.lua at every
-- health check of the supervisor).  Each case runs twice:
--   * "keeps": every backend unhealthy, so the built-in policy keeps the
--     active one; the user must still be told that the policy failed
--     ("[WARNING] user policy failed: file:line: ...");
--   * "switches": the active backend (llamacpp) is unhealthy and ollama
--     (fake-http) healthy with auto_fallback on, so the built-in policy
--     switches, and the reason names the policy's error.
local POLICY = "${ROOT}/policy.lua"
local policy_cases = {
    { "a syntax error", "return function(ctx)\n  return { action = 'keep' \nend\n", POLICY .. ":3:" },
    { "a runtime error", "return function(ctx)\n  error('policy exploded')\nend\n", POLICY .. ":2: policy exploded" },
    { "an endless loop in the decision", "return function(ctx)\n  while true do end\nend\n",
      POLICY .. ":2: policy exceeded its instruction budget" },
    { "an endless loop while loading", "local n = 0\nwhile true do n = n + 1 end\n",
      POLICY .. ":2: policy exceeded its instruction budget" },
    { "an endless loop hidden in pcall", "return function(ctx)\n  while true do\n    pcall(function() while true do end end)\n  end\nend\n",
      "policy exceeded its instruction budget" },
    { "a file returning a number", "return 42\n", POLICY .. ": the policy file must return a function, not number" },
    { "a decision that is a string", "return function(ctx) return 'switch' end\n",
      POLICY .. ":1: the policy returned string, expected a decision table" },
    { "an unknown action", "return function(ctx) return { action = 'explode' } end\n",
      'action must be "keep" or "switch", not "explode"' },
    { "a switch to an unknown backend", "return function(ctx) return { action = 'switch', to = 'nosuch' } end\n",
      "switch to an unknown backend: nosuch" },
    { "os.execute", "return function(ctx)\n  os.execute('touch ${ROOT}/escaped')\n  return { action = 'keep' }\nend\n",
      POLICY .. ":2: attempt to call a nil value (field 'execute')" },
    { "io.open", "return function(ctx)\n  io.open('${ROOT}/escaped', 'w'):write('x')\n  return { action = 'keep' }\nend\n",
      POLICY .. ":2: attempt to index a nil value (global 'io')" },
    { "require", "return function(ctx)\n  require('os').execute('touch ${ROOT}/escaped')\nend\n",
      POLICY .. ":2: attempt to call a nil value (global 'require')" },
    { "load", "return function(ctx)\n  load('os.execute(\"touch ${ROOT}/escaped\")')()\nend\n",
      POLICY .. ":2: attempt to call a nil value (global 'load')" },
    { "debug.sethook (to lift the budget)", "debug.sethook()\nreturn function(ctx) return { action = 'keep' } end\n",
      POLICY .. ":1: attempt to index a nil value (global 'debug')" },
    { "a missing policy file", false, POLICY .. ": cannot open the policy file" },
}
for _, p in ipairs(policy_cases) do
    local files = p[2] and { ["policy.lua"] = p[2] } or nil
    add("policy", { name = p[1] .. " (start, built-in keeps)", argv = { "start" }, exit = 0,
        config = base({ policy = "policy.lua", auto_fallback = true }), files = files,
        message = { "[WARNING] user policy failed: ", p[3], "Chat-O-Llama started successfully" },
        after = { { "stop" } } })
    add("policy", { name = p[1] .. " (start, built-in switches)", argv = { "start" }, exit = 0,
        config = base({ policy = "policy.lua", auto_fallback = true, active = "llamacpp",
                        base_url = "http://127.0.0.1:${HTTP_PORT}" }),
        files = files, http = { mode = "ollama" },
        message = { "Starting with backend 'ollama' instead of 'llamacpp' (config.json unchanged)",
                    "user policy failed: ", p[3], "the built-in policy decided",
                    "Chat-O-Llama started successfully" },
        changes = { ["run/app-config.json"] = '"active": "ollama"' }, after = { { "stop" } } })
end
-- User code that a Lua instruction budget cannot stop (a C function that
-- loops, allocates or backtracks) or that floods the log: the policy runs in
-- a child under kernel limits (manager.user_code, 1 s here), which is
-- stopped; `start` goes on with the built-in policy.
local contained = {
    { "a C-level loop (string.rep of 2^62 empty strings)",
      "return function(ctx)\n  return ('').rep('', 2^62)\nend\n", { POLICY .. ": the policy ", ": stopped" } },
    { "a C-level loop (table.move over 2^50 slots)",
      "return function(ctx)\n  table.move({}, 1, 2^50, 1)\nend\n", { POLICY .. ": the policy ", ": stopped" } },
    { "a backtracking pattern",
      "return function(ctx)\n  return (('a'):rep(40)):find(('a*'):rep(40) .. 'b')\nend\n",
      { POLICY .. ": the policy ", ": stopped" } },
    { "a memory bomb", "return function(ctx)\n  return ('x'):rep(2^30)\nend\n",
      POLICY .. ": not enough memory" },
    { "a memory bomb in small pieces",
      "local t = {}\nfor i = 1, 1e9 do t[i] = ('x'):rep(1 << 20) .. i end\n", POLICY .. ": not enough memory",
      timeout = 20 },
    { "a print flood", "return function(ctx)\n  local s = ('x'):rep(1 << 20)\n  while true do print(s) end\nend\n",
      POLICY .. ":" },
    { "string.dump reached through a string", "return function(ctx)\n  return ('').dump(function() end)\nend\n",
      POLICY .. ":2: attempt to call a nil value (field 'dump')" },
    { "a C-level loop inside pcall", "return function(ctx)\n  pcall(string.rep, '', 2^62)\n  return { action = 'keep' }\nend\n",
      { POLICY .. ": the policy ", ": stopped" } },
}
for _, p in ipairs(contained) do
    add("policy", { name = p[1] .. " (start, built-in switches)", argv = { "start" }, exit = 0,
        config = base({ policy = "policy.lua", auto_fallback = true, active = "llamacpp", user_timeout = p.timeout or 1,
                        base_url = "http://127.0.0.1:${HTTP_PORT}" }),
        files = { ["policy.lua"] = p[2] }, http = { mode = "ollama" },
        message = { "Starting with backend 'ollama' instead of 'llamacpp' (config.json unchanged)",
                    "user policy failed: ", "the built-in policy decided", "Chat-O-Llama started successfully",
                    table.unpack(type(p[3]) == "table" and p[3] or { p[3] }) },
        changes = { ["run/app-config.json"] = '"active": "ollama"' }, after = { { "stop" } }, timeout = 40000 })
end

-- Code that someone else can change is not run: the policy file, and
-- commands/ and backends/ files, writable by group or others (or in such a
-- directory) give an [ERROR] with the fix.
local KEEP_POLICY = "return function(ctx) return { action = 'keep' } end\n"
add("policy", { name = "a group-writable policy file is not run", argv = { "start" }, exit = 0,
    config = base({ policy = "policy.lua", auto_fallback = true }),
    files = { ["policy.lua"] = { raw = KEEP_POLICY, mode = tonumber("664", 8) } },
    message = { "[ERROR] user policy failed: ${ROOT}/policy.lua is writable by its group: not run (chmod go-w ${ROOT}/policy.lua)",
                "Chat-O-Llama started successfully" }, after = { { "stop" } } })
add("policy", { name = "a policy file in a world-writable directory is not run", argv = { "start" }, exit = 0,
    config = base({ policy = "pol/policy.lua", auto_fallback = true }),
    files = { ["pol"] = { dir = true, mode = tonumber("777", 8) }, ["pol/policy.lua"] = KEEP_POLICY },
    message = { "[ERROR] user policy failed: ${ROOT}/pol is writable by its group and others: not run (chmod go-w ${ROOT}/pol)",
                "Chat-O-Llama started successfully" }, after = { { "stop" } } })
add("user-command", { name = "a world-writable command file is not run", argv = { "bad" }, exit = 2,
    files = { ["commands/bad.lua"] = { raw = "return { name = 'bad', run = function() return 0 end }\n",
                                       mode = tonumber("666", 8) } },
    message = { "[ERROR] ${ROOT}/commands/bad.lua is writable by its group and others: not run (chmod go-w ${ROOT}/commands/bad.lua)",
                "Unknown command: bad" } })
add("user-backend", { name = "a group-writable backends/ directory is not run", argv = { "backend", "health", "mine" },
    exit = 2, files = { ["backends"] = { dir = true, mode = tonumber("775", 8) },
                        ["backends/mine.lua"] = "return { name = 'mine', check = function() return { healthy = true } end }\n" },
    message = { "[ERROR] ${ROOT}/backends is writable by its group: not run (chmod go-w ${ROOT}/backends)",
                "Unknown backend: mine" } })

-- FIFOs where the manager reads a file: one reader for all (non-blocking
-- open, regular files only) instead of a read that waits for a writer.
for _, f in ipairs({ "process.pid", "run/state.json", "logs/chat-o-llama_20260101_000000.log" }) do
    for _, c in ipairs({ { { "status" }, 3, "Chat-O-Llama is not running" },
                         { { "stop" }, 0, "Chat-O-Llama is not running" },
                         { { "force-stop" }, 0, "Nothing to stop" },
                         { { "logs", "--no-follow" }, 0, nil } }) do
        -- (stop and force-stop remove process.pid, whatever it is)
        if not (c[1][1] == "logs" and f ~= "logs/chat-o-llama_20260101_000000.log")
            and not (c[1][1] ~= "status" and f == "process.pid") then
            add("command", { name = ("%s with a FIFO at %s (must not block)"):format(table.concat(c[1], " "), f),
                argv = c[1], exit = c[2], message = c[3] or "Showing ${ROOT}/logs/chat-o-llama_20260101_000000.log",
                files = { [f] = { fifo = true } }, timeout = 5000 })
        end
    end
end

add("command", { name = "start with run/ a symlink (refused, its target untouched)", argv = { "start" }, exit = 1,
    files = { ["elsewhere"] = { dir = true, mode = tonumber("755", 8) }, ["run"] = { symlink = "${ROOT}/elsewhere" } },
    message = "${ROOT}/run is a symlink: refused" })

add("policy", { name = "a policy file that is a directory (start, built-in switches)", argv = { "start" },
    exit = 0, config = base({ policy = "policy.lua", auto_fallback = true, active = "llamacpp",
                              base_url = "http://127.0.0.1:${HTTP_PORT}" }),
    files = { ["policy.lua"] = { dir = true } }, http = { mode = "ollama" },
    message = { "user policy failed: ", "policy.lua", "the built-in policy decided" },
    changes = { ["run/app-config.json"] = '"active": "ollama"' }, after = { { "stop" } } })
add("policy", { name = "a policy file that is a FIFO (must not block start)", argv = { "start" }, exit = 0,
    config = base({ policy = "policy.lua", auto_fallback = true }), files = { ["policy.lua"] = { fifo = true } },
    message = { "policy.lua", "Chat-O-Llama started successfully" }, after = { { "stop" } }, timeout = 5000 })

-- ---- 7. user Lua: commands in <root>/commands/ -------------------------------------------

local CMDS = "${ROOT}/commands/"
local function user_command(name, files, argv, exit, message, extra)
    local row = { name = name, files = files, argv = argv, exit = exit, message = message }
    for k, v in pairs(extra or {}) do row[k] = v end
    return add("user-command", row)
end
local function cmd_file(text) return { ["commands/bad.lua"] = text } end
user_command("a syntax error (named and skipped by help)", cmd_file("return {\n  name = 'bad',\n"), { "help" }, 0,
    { "ignoring " .. CMDS .. "bad.lua: " .. CMDS .. "bad.lua:3:", "Usage: chat-manager" })
user_command("a syntax error (built-in commands still work)", cmd_file("return {\n  name = 'bad',\n"), { "status" }, 3,
    "Chat-O-Llama is not running")
user_command("a syntax error (an unknown command names it)", cmd_file("return {\n  name = 'bad',\n"), { "bad" }, 2,
    { "ignoring " .. CMDS .. "bad.lua: " .. CMDS .. "bad.lua:3:", "Unknown command: bad" })
user_command("a runtime error while loading", cmd_file("local x = nil\nreturn x.name\n"), { "help" }, 0,
    "ignoring " .. CMDS .. "bad.lua: " .. CMDS .. "bad.lua:2: attempt to index a nil value")
user_command("a module returning a number", cmd_file("return 42\n"), { "help" }, 0,
    "a command module must return { name = ..., run = function }")
user_command("a name that is a number", cmd_file("return { name = 5, run = function() return 0 end }\n"), { "help" }, 0,
    "a command module must return { name = ..., run = function }")
user_command("run that is not a function", cmd_file("return { name = 'bad', run = 'go' }\n"), { "bad" }, 2,
    { "a command module must return { name = ..., run = function }", "Unknown command: bad" })
user_command("a built-in name", cmd_file("return { name = 'stop', run = function() return 0 end }\n"), { "help" }, 0,
    "ignoring " .. CMDS .. "bad.lua: 'stop' is a built-in command")
user_command("a directory named bad.lua", { ["commands/bad.lua"] = { dir = true } }, { "help" }, 0,
    "ignoring " .. CMDS .. "bad.lua: cannot read")
user_command("a dangling symlink", { ["commands/bad.lua"] = { symlink = "/nonexistent/bad.lua" } }, { "help" }, 0,
    "ignoring " .. CMDS .. "bad.lua: cannot open")
user_command("run raises (file:line, exit 1)", cmd_file("return { name = 'bad', run = function()\n  error('kaboom')\nend }\n"),
    { "bad" }, 1, CMDS .. "bad.lua:2: kaboom", { traceback_ok = true })
for _, r in ipairs({ { "a string", '"abc"' }, { "a table", "{}" }, { "a fraction", "2.5" },
                     { "300", "300" }, { "-1", "-1" } }) do
    user_command(("run returns %s"):format(r[1]),
        cmd_file(("return { name = 'bad', run = function() return %s end }\n"):format(r[2])),
        { "bad" }, 1, "bad.lua", {})
end
user_command("usage that is a table", cmd_file("return { name = 'bad', usage = {}, run = function() end }\n"),
    { "help" }, 0, { "Usage: chat-manager", "bad.lua" }, {})
user_command("summary that is a table", cmd_file("return { name = 'bad', summary = {}, run = function() end }\n"),
    { "help" }, 0, { "Usage: chat-manager", "bad.lua" }, {})
user_command("a module whose fields raise", cmd_file(
        "return setmetatable({}, { __index = function(_, k) error('no field ' .. k) end })\n"),
    { "help" }, 0, { "ignoring " .. CMDS .. "bad.lua", "Usage: chat-manager" },
    {})
user_command("a FIFO named bad.lua (help must not block)", { ["commands/bad.lua"] = { fifo = true } }, { "help" }, 0,
    { "ignoring " .. CMDS .. "bad.lua", "Usage: chat-manager" }, { timeout = 5000 })
user_command("a FIFO named bad.lua (running it must not block)", { ["commands/bad.lua"] = { fifo = true } }, { "bad" }, 2,
    { "ignoring " .. CMDS .. "bad.lua", "Unknown command: bad" }, { timeout = 5000 })
user_command("a FIFO named bad.lua (built-in commands still work)", { ["commands/bad.lua"] = { fifo = true } },
    { "status" }, 3, "Chat-O-Llama is not running", { timeout = 5000 })
-- Listing user commands (help, an unknown name) loads each in a limited
-- child: a loop at load time, even inside a C function, cannot hang them.
user_command("an endless loop while loading (help must not hang)", cmd_file("while true do end\n"), { "help" }, 0,
    { "ignoring " .. CMDS .. "bad.lua: " .. CMDS .. "bad.lua: loading it did not finish within 1 s", "Usage: chat-manager" },
    { timeout = 10000, config = base({ user_timeout = 1 }) })
user_command("a C-level loop while loading (an unknown command must not hang)",
    { ["commands/other.lua"] = "return ('').rep('', 2^62)\n" }, { "nosuch" }, 2,
    { "ignoring " .. CMDS .. "other.lua: " .. CMDS .. "other.lua: loading it did not finish within 1 s",
      "Unknown command: nosuch" }, { timeout = 10000, config = base({ user_timeout = 1 }) })
user_command("--json output stays clean", cmd_file("return 42\n"), { "backend", "status", "--json" }, 0,
    '"active": "ollama"', { stdout_json = true })

-- ---- 8. user Lua: backends in <root>/backends/ -------------------------------------------

local function user_backend(name, text, argv, exit, message, extra)
    local row = { name = name, files = { ["backends/mine.lua"] = text }, argv = argv, exit = exit,
                  message = message }
    for k, v in pairs(extra or {}) do row[k] = v end
    return add("user-backend", row)
end
local HEALTH_MINE = { "backend", "health", "mine" }
local MINE = "${ROOT}/backends/mine.lua"
user_backend("check raises", "return { name = 'mine', check = function()\n  error('check exploded')\nend }\n",
    HEALTH_MINE, 1, "? unknown     check failed: " .. MINE .. ":2: check exploded")
user_backend("check raises (backend status still lists all)",
    "return { name = 'mine', check = function()\n  error('check exploded')\nend }\n",
    { "backend", "status" }, 0, { "check failed: " .. MINE .. ":2: check exploded", "ollama", "llamacpp" })
user_backend("a syntax error", "return { name = 'mine', check = function() end\n", { "backend", "status" }, 0,
    { "ignoring backend " .. MINE .. ": " .. MINE .. ":2:", "Active backend: ollama" })
user_backend("a runtime error while loading", "error('load exploded')\n", HEALTH_MINE, 2,
    { "ignoring backend " .. MINE .. ": " .. MINE .. ":1: load exploded", "Unknown backend: mine" })
user_backend("a module returning a string", "return 'mine'\n", HEALTH_MINE, 2,
    { "a backend module must return { name = ..., check = function }", "Unknown backend: mine" })
user_backend("check returns a string", "return { name = 'mine', check = function() return 'fine' end }\n",
    HEALTH_MINE, 1, "check failed: it returned string instead of a result table")
user_backend("check returns nothing", "return { name = 'mine', check = function() end }\n",
    HEALTH_MINE, 1, "check failed: it returned nil instead of a result table")
user_backend("check returns fields of the wrong types",
    "return { name = 'mine', check = function() return { healthy = 'yes', detail = 5, hint = {}, ms = 'x', info = 7 } end }\n",
    HEALTH_MINE, 1, "? unknown")
user_backend("details() raises", "return { name = 'mine', check = function() return { healthy = false, detail = 'down' } end,\n" ..
    "  details = function() error('details exploded') end }\n", HEALTH_MINE, 1, "✗ unhealthy   down")
add("user-backend", { name = "a built-in name", argv = { "backend", "status" }, exit = 0,
    files = { ["backends/ollama.lua"] = "return { name = 'ollama', check = function() return { healthy = true } end }\n" },
    message = { "ignoring backend ${ROOT}/backends/ollama.lua: 'ollama' is a built-in backend",
                "ollama     ✗ unhealthy   connection refused" } })
user_backend("a FIFO named mine.lua (skipped, must not block)", { fifo = true }, HEALTH_MINE, 2,
    "Unknown backend: mine", { timeout = 10000 })
user_backend("detail whose __tostring raises",
    "return { name = 'mine', check = function() return { healthy = true, detail = setmetatable({}, " ..
    "{ __tostring = function() error('tostring exploded') end }) } end }\n",
    HEALTH_MINE, 1, "check failed", { timeout = 15000 })
user_backend("ms NaN under --json", "return { name = 'mine', check = function() return { healthy = true, detail = 'ok', ms = 0/0 } end }\n",
    { "backend", "health", "mine", "--json" }, 0, '"healthy": true', { stdout_json = true })
user_backend("info holding a function under --json",
    "return { name = 'mine', check = function() return { healthy = true, detail = 'ok', info = { f = print } } end }\n",
    { "backend", "status", "--json" }, 0, '"mine"', { stdout_json = true })
-- Loops that a Lua instruction budget cannot stop: user backends load and
-- check in a child under kernel limits with a hard deadline (health_timeout
-- 2 s + 1 s for a check, manager.user_code.timeout 1 s for a load).
user_backend("a C-level loop in check", "return { name = 'mine', check = function()\n  return ('').rep('', 2^62)\nend }\n",
    HEALTH_MINE, 1, { "? unknown", "did not finish within 3 s: stopped" }, { timeout = 10000 })
user_backend("an endless loop in check that swallows errors in its own pcall",
    "return { name = 'mine', check = function()\n  while true do pcall(function() while true do end end) end\nend }\n",
    HEALTH_MINE, 1, { "? unknown", "did not finish" }, { timeout = 10000 })
user_backend("a memory bomb in check", "return { name = 'mine', check = function()\n  return ('x'):rep(2^30)\nend }\n",
    HEALTH_MINE, 1, { "? unknown", "check failed: not enough memory" }, { timeout = 10000 })
user_backend("an endless loop at load time (backend status)", "while true do end\n",
    { "backend", "status" }, 0, { "ignoring backend " .. MINE .. ": " .. MINE .. ": loading it did not finish within 1 s",
                                  "Active backend: ollama" },
    { timeout = 10000, config = base({ user_timeout = 1 }) })
user_backend("a C-level loop at load time (status)", "return ('').rep('', 2^62)\n",
    { "status" }, 3, "Chat-O-Llama is not running", { timeout = 10000, config = base({ user_timeout = 1 }) })
user_backend("an endless loop in check", "return { name = 'mine', check = function()\n  while true do end\nend }\n",
    HEALTH_MINE, 1, "did not finish", { timeout = 10000 })
-- All user backends load in one child and check in one other: each answer
-- must reach its own backend (the slow one, first by name, answers last),
-- and a file stuck while loading must not take the files after it (in name
-- order) down with it.
local MINE_OK = "return { name = 'mine', check = function() return { healthy = true, detail = 'mine ok' } end }\n"
-- A backend file whose check reads the global `label` its load set.
local function labelled(name)
    return ("label = '%s'\nreturn { name = '%s', check = function() cm.time.sleep(50)\n" ..
        "  return { healthy = true, detail = 'I am ' .. label } end }\n"):format(name, name)
end
add("user-backend", { name = "two user backends get their own results", argv = { "backend", "status" }, exit = 0,
    files = { ["backends/mine.lua"] = MINE_OK,
              ["backends/aslow.lua"] = "return { name = 'aslow', check = function() cm.time.sleep(100)\n" ..
                  "  return { healthy = false, detail = 'aslow down' } end }\n" },
    message = { "mine       ✓ healthy     mine ok", "aslow      ✗ unhealthy   aslow down" } })
add("user-backend", { name = "slow files share no deadline: each may take most of its own",
    argv = { "backend", "health", "mine" }, exit = 0, timeout = 15000, config = base({ user_timeout = 2 }),
    files = { ["backends/aaa.lua"] = "cm.time.sleep(1200)\nreturn { name = 'aaa', check = function() return { healthy = true } end }\n",
              ["backends/mine.lua"] = "cm.time.sleep(1200)\n" .. MINE_OK },
    message = { "mine       ✓ healthy     mine ok" }, absent = { "ignoring backend" } })
add("user-backend", { name = "two files with the same global do not see each other's",
    argv = { "backend", "status" }, exit = 0,
    files = { ["backends/aaa.lua"] = labelled("aaa"), ["backends/mine.lua"] = labelled("mine") },
    message = { "aaa        ✓ healthy     I am aaa", "mine       ✓ healthy     I am mine" } })
add("user-backend", { name = "a file after one stuck while loading still loads",
    argv = { "backend", "health", "mine" }, exit = 0, timeout = 10000, config = base({ user_timeout = 1 }),
    files = { ["backends/aaa.lua"] = "return ('').rep('', 2^62)\n",
              ["backends/mine.lua"] = MINE_OK },
    message = { "ignoring backend ${ROOT}/backends/aaa.lua: ${ROOT}/backends/aaa.lua: loading it did not finish within 1 s",
                "mine       ✓ healthy     mine ok" } })

return rows
