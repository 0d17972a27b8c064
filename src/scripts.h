/*
 * The script loader: the embedded Lua scripts in package.preload (chunk
 * names "@lua/...", so tracebacks show real paths), with CHAT_MANAGER_LUA_DIR
 * overriding them file by file, and cm.modules.
 */
#ifndef CM_SCRIPTS_H
#define CM_SCRIPTS_H

#include <lua.h>

/* Registers every embedded module in package.preload and limits
 * package.path to the override folder (no search of the current
 * directory). */
void cm_scripts_register(lua_State *L);

/* cm.modules(prefix) -> {name = true}: the embedded modules under a prefix
 * ("commands."), plus the .lua files of the same folder under
 * CHAT_MANAGER_LUA_DIR. */
int cm_scripts_modules(lua_State *L);

#endif
