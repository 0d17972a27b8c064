/*
 * The config file: loading with precise syntax errors, dotted get/set that
 * keeps key order, and atomic, lock-serialised saves that write exactly the
 * style of Python's json.dump(obj, f, indent=2, ensure_ascii=False) + "\n"
 * (the style Chat-O-Llama itself writes), so a load/save round trip of such
 * a file is byte-identical.
 *
 * The JSON text engine under it, which cm.json shares, is json_text.h.
 *
 * Pure C on cJSON: no Lua, no libuv.
 */
#ifndef CM_CONFIG_H
#define CM_CONFIG_H

#include "json_text.h"

#include <stddef.h>
#include <cjson/cJSON.h>

/* The largest config file. */
#define CM_CONFIG_MAX_BYTES CM_JSON_MAX_BYTES

typedef struct cm_config_error {
    char msg[512];    /* "path:line:col: what" or "path: strerror" */
    const char *code; /* static string: "ENOENT" (any errno name), "syntax", "type",
                         "too_large", "busy", "key", "nomem" */
    int sys_errno;    /* the errno behind an OS error, else 0 */
} cm_config_error_t;

typedef struct cm_config {
    cJSON *root;   /* always an object */
    char *path;    /* the file it was loaded from */
    int has_bom;   /* the file started with a UTF-8 BOM; saves write it back */
    int nul_marks; /* its strings spell NUL as "\u0000": held as U+10FFFF */
    int no_final_newline; /* the file did not end with a newline; saves keep it so */
} cm_config_t;

/* Reads and parses the file at `path` (at most CM_CONFIG_MAX_BYTES; a leading
 * UTF-8 BOM is skipped and remembered).  Returns a new config, or NULL with
 * *err filled: a missing file gives "<path>: No such file or directory" code
 * "ENOENT"; a syntax error "<path>:<line>:<col>: invalid JSON...: <what>
 * near '<text>'" code "syntax" (an empty file "<path>:1:1: empty file"); a
 * top level that is not an object "<path>: top level must be a JSON object"
 * code "type". */
cm_config_t *cm_config_load(const char *path, cm_config_error_t *err);

/* Like cm_config_load on text already in memory; `name` stands for the path
 * in messages and becomes cfg->path. */
cm_config_t *cm_config_parse(const char *text, size_t len, const char *name,
                             cm_config_error_t *err);

void cm_config_free(cm_config_t *cfg);

/* The node at a dotted key ("manager.restart.policy"), or NULL when a part is
 * missing, an intermediate is not an object, or the key is malformed (empty,
 * or with an empty part).  Keys match case-sensitively; the first of
 * duplicate keys wins.  The node stays owned by cfg. */
cJSON *cm_config_get(const cm_config_t *cfg, const char *key);

/* Sets the dotted key to `value`, which cfg takes over in every case (it is
 * deleted on failure).  An existing key is replaced where it stands; a new
 * one is appended to its object, and missing intermediate objects are
 * created at the end of theirs.  Fails (returns -1, code "key") when the key
 * is malformed or an intermediate exists but is not an object, leaving cfg
 * unchanged.  Returns 0 on success. */
int cm_config_set(cm_config_t *cfg, const char *key, cJSON *value, cm_config_error_t *err);

/* Removes the dotted key.  Returns 1 when it was there, 0 when not. */
int cm_config_unset(cm_config_t *cfg, const char *key);

/* The bytes cm_config_save writes: the BOM when the file had one, the
 * indented JSON and a final newline.  malloc'd (caller frees), NUL-terminated,
 * length in *len when len is not NULL; NULL when out of memory. */
char *cm_config_text(const cm_config_t *cfg, size_t *len);

/* Writes cm_config_text to `path` (cfg->path when NULL) atomically: under an
 * exclusive flock on `lock_path` (default "<dir>/.<name>.lock"; created 0600;
 * never waited for: code "busy" at once when another process holds it; ""
 * when the caller holds the lock that serialises writers), into a temp file
 * "<dir>/.<name>.tmp.<pid>" created with O_EXCL, fsync'd, given the
 * original's mode and owner (0644 when new), renamed over the original, then
 * the directory is fsync'd.  A symlink at `path` is followed, so the link
 * survives.  On failure the temp file is removed, the original is untouched
 * and *err names the path and the reason.  Blocks the calling thread.
 * Returns 0 or -1. */
int cm_config_save(const cm_config_t *cfg, const char *path, const char *lock_path,
                   cm_config_error_t *err);

#endif
