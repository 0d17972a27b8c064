/*
 * cm.gguf: what the llamacpp backend reports about a model file.
 *
 *   local info, err, code = cm.gguf.read(path)
 *   --> {version=3, tensor_count=, kv_count=, size=, architecture="llama",
 *        name=, size_label=, file_type=15, quantization="Q4_K_M",
 *        context_length=} (absent metadata is nil)
 *   --> nil, "path: why", "invalid" | "ENOENT" | "EISDIR" | ...
 */
#include <lauxlib.h>

#include "cm_modules.h"
#include "fsutil.h"
#include "gguf.h"
#include "runtime.h"

static void set_text(lua_State *L, const char *key, const char *value)
{
    if (value[0] != '\0') cm_set_str(L, key, value);
}

/* read(path) -> info | nil, msg, code */
static int gguf_read(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    cm_gguf_info_t info;
    char err[512];
    int rc = cm_gguf_read(path, &info, err, sizeof(err));
    if (rc == CM_GGUF_INVALID) return cm_fail(L, "invalid", "%s", err);
    if (rc != 0) return cm_fail(L, cm_errno_code(rc), "%s", err);
    lua_createtable(L, 0, 10); /* [path, info] */
    cm_set_int(L, "version", (lua_Integer)info.version);
    cm_set_int(L, "tensor_count", (lua_Integer)info.tensor_count);
    cm_set_int(L, "kv_count", (lua_Integer)info.kv_count);
    cm_set_int(L, "size", (lua_Integer)info.size);
    set_text(L, "architecture", info.architecture);
    set_text(L, "name", info.name);
    set_text(L, "size_label", info.size_label);
    set_text(L, "quantization", info.quantization);
    if (info.file_type >= 0) cm_set_int(L, "file_type", (lua_Integer)info.file_type);
    if (info.context_length >= 0) cm_set_int(L, "context_length", (lua_Integer)info.context_length);
    if (info.parameter_count > 0)
        cm_set_int(L, "parameter_count", (lua_Integer)info.parameter_count);
    return 1;
}

int cm__open_gguf(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"read", gguf_read},
        {NULL, NULL},
    };
    luaL_newlib(L, fns); /* [gguf] */
    return 1;
}
