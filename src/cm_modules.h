/*
 * The groups of C primitives that make up the Lua module `cm`.  Each
 * cm__open_<group> pushes one table of functions; cm__open_all (lua_cm.c)
 * assembles them.  A group lives in its own src/lua_<group>.c file.
 */
#ifndef CM_MODULES_H
#define CM_MODULES_H

#include <lua.h>

int cm__open_task(lua_State *L);    /* cm.task: spawn, join (runtime.c) */
int cm__open_time(lua_State *L);    /* cm.time: now, wall, sleep, timer (lua_time.c) */
int cm__open_fs(lua_State *L);      /* cm.fs: files, atomic writes, locks, watch (lua_fs.c) */
int cm__open_sys(lua_State *L);     /* cm.sys: env, tty, signals, exit (lua_sys.c) */
int cm__open_log(lua_State *L);     /* cm.log: session log lines (lua_sys.c) */
int cm__open_proc(lua_State *L);    /* cm.proc: run, spawn, kill, /proc (lua_proc.c) */
int cm__open_net(lua_State *L);     /* cm.net: connect, port checks (lua_net.c) */
int cm__open_http(lua_State *L);    /* cm.http: get (lua_http.c) */
int cm__open_json(lua_State *L);    /* cm.json: decode, encode (lua_json.c) */
int cm__open_config(lua_State *L);  /* cm.config: load, get, set, save (lua_config.c) */
int cm__open_gguf(lua_State *L);    /* cm.gguf: read (lua_gguf.c) */
int cm__open_machine(lua_State *L); /* cm.machine: new (lua_machine.c) */
int cm__open_build(lua_State *L);   /* cm.build: version, build type, libraries (lua_build.c) */

/* Pushes the whole `cm` table. */
int cm__open_all(lua_State *L);

#endif
