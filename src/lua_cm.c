/*
 * Assembles the Lua module `cm` from its groups of C primitives (one
 * src/lua_<group>.c each; see docs/lua-api.md for the whole API).
 */
#include "cm_modules.h"

#include <lauxlib.h>

typedef struct group {
    const char *name;
    lua_CFunction open;
} group_t;

int cm__open_all(lua_State *L)
{
    static const group_t groups[] = {
        {"task", cm__open_task},     {"time", cm__open_time}, {"fs", cm__open_fs},
        {"sys", cm__open_sys},       {"log", cm__open_log},   {"proc", cm__open_proc},
        {"net", cm__open_net},       {"http", cm__open_http}, {"json", cm__open_json},
        {"config", cm__open_config}, {"gguf", cm__open_gguf}, {"machine", cm__open_machine},
        {"build", cm__open_build},
    };
    lua_createtable(L, 0, 16); /* [cm] */
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        if (groups[i].open == NULL) continue;
        groups[i].open(L); /* [cm, group] */
        lua_setfield(L, -2, groups[i].name);
    }
    return 1;
}
