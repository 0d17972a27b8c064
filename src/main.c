/*
 * chat-manager: runs, watches and stops the Chat-O-Llama app and keeps its
 * LLM backends healthy.  main() only builds the runtime and hands the
 * command line to lua/cli.lua, inside one protected main task.
 */
#include "runtime.h"

#include <signal.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    /* A closed pipe (`chat-manager status | head -1`) must give EPIPE on
     * write, not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    /* Likewise a full log (RLIMIT_FSIZE) must give EFBIG, not end the
     * supervisor.  Children get default dispositions back (libuv resets
     * them), so the app is not affected. */
    signal(SIGXFSZ, SIG_IGN);

    cm_runtime_t *rt = cm_runtime_new();
    if (rt == NULL) {
        fprintf(stderr, "[ERROR] cannot initialise the runtime (out of memory?)\n");
        return 1;
    }
    lua_State *L = cm_runtime_lua(rt);
    lua_getglobal(L, "require"); /* [require] */
    lua_pushliteral(L, "cli");   /* [require, "cli"] */
    int code = 1;
    if (cm_pcall(L, 1, 1) != LUA_OK) { /* [cli] */
        fprintf(stderr, "[ERROR] %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    } else {
        lua_getfield(L, -1, "main"); /* [cli, main] */
        lua_remove(L, -2);           /* [main] */
        lua_createtable(L, argc, 0); /* [main, args] */
        for (int i = 1; i < argc; i++) {
            lua_pushstring(L, argv[i]);
            lua_rawseti(L, -2, i);
        }
        code = cm_runtime_run(rt, 1);
    }
    fflush(stdout);
    cm_runtime_free(rt);
    return code;
}
