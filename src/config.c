/*
 * The config file (see config.h) on the JSON text engine (json_text.c):
 * loading with precise errors, dotted keys, and saves that are atomic and
 * serialised by a lock.
 */
#include "config.h"

#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char UTF8_BOM[] = "\xEF\xBB\xBF";

static void set_error(cm_config_error_t *err, const char *code, int sys_errno, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void set_error(cm_config_error_t *err, const char *code, int sys_errno, const char *fmt, ...)
{
    if (err == NULL) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    err->code = code;
    err->sys_errno = sys_errno;
}

/* ---- loading --------------------------------------------------------------------- */

/* Parses a buffer with s[n] == '\0' into a config. */
static cm_config_t *config_from_buffer(const char *s, size_t n, const char *name,
                                       cm_config_error_t *err)
{
    int bom = n >= 3 && memcmp(s, UTF8_BOM, 3) == 0;
    if (bom) {
        s += 3;
        n -= 3;
    }
    if (cm_json_only_space(s, n)) {
        set_error(err, "syntax", 0, "%s:1:1: empty file", name);
        return NULL;
    }
    char msg[400];
    int conflict;
    size_t pn = n;
    char *protected = cm_json_protect_nuls(s, n, &pn, &conflict);
    int nul_marks = protected != NULL;
    if (conflict) {
        set_error(err, "syntax", 0,
                  "%s: U+10FFFF (the manager's stand-in for \\u0000) cannot be kept: not "
                  "supported",
                  name);
        return NULL;
    }
    cJSON *root =
        cm_json_parse_terminated(protected != NULL ? protected : s, pn, "file", msg, sizeof(msg));
    if (root == NULL && protected != NULL) /* the message, about the bytes as they are */
        cJSON_Delete(cm_json_parse_terminated(s, n, "file", msg, sizeof(msg)));
    if (root == NULL) {
        free(protected);
        set_error(err, strcmp(msg, "out of memory") == 0 ? "nomem" : "syntax", 0, "%s:%s%s", name,
                  msg, cm_json_python_note(msg));
        return NULL;
    }
    if (cm_json_python_check(root, protected != NULL ? protected : s, pn, msg, sizeof msg) != 0) {
        set_error(err, "syntax", 0, "%s:%s", name, msg);
        free(protected);
        cJSON_Delete(root);
        return NULL;
    }
    free(protected);
    if (!cJSON_IsObject(root)) {
        set_error(err, "type", 0, "%s: top level must be a JSON object, not %s", name,
                  cm_json_type_name(root));
        cJSON_Delete(root);
        return NULL;
    }
    cm_config_t *cfg = calloc(1, sizeof(*cfg));
    char *path = strdup(name);
    if (cfg == NULL || path == NULL) {
        free(cfg);
        free(path);
        cJSON_Delete(root);
        set_error(err, "nomem", ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    cfg->root = root;
    cfg->path = path;
    cfg->has_bom = bom;
    cfg->nul_marks = nul_marks;
    cfg->no_final_newline = n > 0 && s[n - 1] != '\n';
    return cfg;
}

cm_config_t *cm_config_parse(const char *text, size_t len, const char *name, cm_config_error_t *err)
{
    if (len > CM_CONFIG_MAX_BYTES) {
        set_error(err, "too_large", 0, "%s: file too large (%zu bytes, limit 16 MiB)", name, len);
        return NULL;
    }
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        set_error(err, "nomem", ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    cm_config_t *cfg = config_from_buffer(copy, len, name, err);
    free(copy);
    return cfg;
}

/* Reads a whole regular file of at most CM_CONFIG_MAX_BYTES into a
 * NUL-terminated buffer (cm_read_file: a FIFO cannot block it). */
static char *read_file(const char *path, size_t *len, cm_config_error_t *err)
{
    char *buf = cm_read_file(path, CM_CONFIG_MAX_BYTES, len);
    if (buf != NULL) return buf;
    int e = errno;
    struct stat st;
    if (e == EFBIG && stat(path, &st) == 0 && st.st_size > (off_t)CM_CONFIG_MAX_BYTES)
        set_error(err, "too_large", 0, "%s: file too large (%lld bytes, limit 16 MiB)", path,
                  (long long)st.st_size);
    else if (e == EFBIG)
        set_error(err, "too_large", 0, "%s: file too large (more than 16 MiB)", path);
    else if (e == CM_ENOTREG)
        set_error(err, "type", 0, "%s: not a regular file", path);
    else if (e == ENOMEM)
        set_error(err, "nomem", ENOMEM, "%s: out of memory", path);
    else
        set_error(err, cm_errno_code(e), e, "%s: %s", path, strerror(e));
    return NULL;
}

cm_config_t *cm_config_load(const char *path, cm_config_error_t *err)
{
    size_t len;
    char *text = read_file(path, &len, err);
    if (text == NULL) return NULL;
    cm_config_t *cfg = config_from_buffer(text, len, path, err);
    free(text);
    return cfg;
}

void cm_config_free(cm_config_t *cfg)
{
    if (cfg == NULL) return;
    cJSON_Delete(cfg->root);
    free(cfg->path);
    free(cfg);
}

/* ---- dotted keys ------------------------------------------------------------------ */

/* A key is one or more non-empty parts joined by dots. */
static int valid_key(const char *key)
{
    if (key == NULL || key[0] == '\0' || key[0] == '.') return 0;
    size_t len = strlen(key);
    return key[len - 1] != '.' && strstr(key, "..") == NULL;
}

/* The length of the part of key starting at p. */
static size_t part_len(const char *p)
{
    const char *dot = strchr(p, '.');
    return dot != NULL ? (size_t)(dot - p) : strlen(p);
}

static cJSON *find_member(const cJSON *object, const char *name, size_t len)
{
    for (cJSON *child = object->child; child != NULL; child = child->next)
        if (child->string != NULL && strlen(child->string) == len &&
            memcmp(child->string, name, len) == 0)
            return child;
    return NULL;
}

cJSON *cm_config_get(const cm_config_t *cfg, const char *key)
{
    if (cfg == NULL || !valid_key(key)) return NULL;
    cJSON *node = cfg->root;
    for (const char *p = key;; p += part_len(p) + 1) {
        if (!cJSON_IsObject(node)) return NULL;
        node = find_member(node, p, part_len(p));
        if (node == NULL || p[part_len(p)] == '\0') return node;
    }
}

/* Gives node the member name `name` (len bytes), replacing any it had. */
static int set_member_name(cJSON *node, const char *name, size_t len)
{
    char *copy = cJSON_malloc(len + 1);
    if (copy == NULL) return -1;
    memcpy(copy, name, len);
    copy[len] = '\0';
    if (node->string != NULL && !(node->type & cJSON_StringIsConst)) cJSON_free(node->string);
    node->string = copy;
    node->type &= ~cJSON_StringIsConst;
    return 0;
}

int cm_config_set(cm_config_t *cfg, const char *key, cJSON *value, cm_config_error_t *err)
{
    if (value == NULL) {
        set_error(err, "nomem", ENOMEM, "out of memory");
        return -1;
    }
    if (cfg == NULL || !valid_key(key)) {
        set_error(err, "key", 0, "invalid config key '%s'", key ? key : "(null)");
        cJSON_Delete(value);
        return -1;
    }
    /* Walk the parts that exist first, so that a failure leaves cfg as it
     * was: `parent` ends at the deepest existing object, `p` at the first
     * part it lacks (or the last part). */
    cJSON *parent = cfg->root;
    const char *p = key;
    while (p[part_len(p)] != '\0') {
        cJSON *child = find_member(parent, p, part_len(p));
        if (child == NULL) break;
        if (!cJSON_IsObject(child)) {
            set_error(err, "key", 0, "cannot set '%s': '%.*s' is %s, not an object", key,
                      (int)(p + part_len(p) - key), key, cm_json_type_name(child));
            cJSON_Delete(value);
            return -1;
        }
        parent = child;
        p += part_len(p) + 1;
    }

    if (p[part_len(p)] == '\0') {
        /* Every intermediate exists: replace the member in place or append. */
        cJSON *old = find_member(parent, p, part_len(p));
        if (set_member_name(value, p, part_len(p)) != 0) goto nomem;
        if (old != NULL) {
            if (!cJSON_ReplaceItemViaPointer(parent, old, value)) goto nomem;
        } else {
            cJSON_AddItemToArray(parent, value); /* keeps value->string as the key */
        }
        return 0;
    }

    /* Build the missing objects from the innermost out, detached, so an
     * allocation failure cannot leave half of them behind. */
    cJSON *chain = value;
    const char *parts[64];
    size_t nparts = 0;
    for (const char *q = p;; q += part_len(q) + 1) {
        if (nparts == sizeof(parts) / sizeof(parts[0])) {
            set_error(err, "key", 0, "config key '%s' has too many parts", key);
            cJSON_Delete(value);
            return -1;
        }
        parts[nparts++] = q;
        if (q[part_len(q)] == '\0') break;
    }
    if (set_member_name(chain, parts[nparts - 1], part_len(parts[nparts - 1])) != 0) goto nomem;
    for (size_t k = nparts - 1; k > 0; k--) {
        cJSON *object = cJSON_CreateObject();
        if (object == NULL || set_member_name(object, parts[k - 1], part_len(parts[k - 1])) != 0) {
            cJSON_Delete(object);
            cJSON_Delete(chain); /* holds value */
            set_error(err, "nomem", ENOMEM, "out of memory");
            return -1;
        }
        cJSON_AddItemToArray(object, chain);
        chain = object;
    }
    cJSON_AddItemToArray(parent, chain);
    return 0;

nomem:
    cJSON_Delete(value);
    set_error(err, "nomem", ENOMEM, "out of memory");
    return -1;
}

int cm_config_unset(cm_config_t *cfg, const char *key)
{
    if (cfg == NULL || !valid_key(key)) return 0;
    cJSON *parent = cfg->root;
    const char *p = key;
    while (p[part_len(p)] != '\0') {
        parent = find_member(parent, p, part_len(p));
        if (!cJSON_IsObject(parent)) return 0;
        p += part_len(p) + 1;
    }
    cJSON *node = find_member(parent, p, part_len(p));
    if (node == NULL) return 0;
    cJSON_Delete(cJSON_DetachItemViaPointer(parent, node));
    return 1;
}

/* ---- saving ------------------------------------------------------------------------ */

char *cm_config_text(const cm_config_t *cfg, size_t *len)
{
    size_t n = 0;
    char *text = cm_json_print_doc(cfg->root, cfg->nul_marks, cfg->has_bom ? UTF8_BOM : "", &n);
    /* Chat-O-Llama's own config.json has no final newline: a write keeps
     * the file's ending as it found it. */
    if (text != NULL && cfg->no_final_newline && n > 0 && text[n - 1] == '\n') text[--n] = '\0';
    if (len != NULL) *len = n;
    return text;
}

/* dirname and basename of path, into malloc'd strings. */
static int split_path(const char *path, char **dir, char **base)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        *dir = strdup(".");
        *base = strdup(path);
    } else {
        size_t dlen = slash == path ? 1 : (size_t)(slash - path);
        *dir = strndup(path, dlen);
        *base = strdup(slash + 1);
    }
    if (*dir == NULL || *base == NULL) {
        free(*dir);
        free(*base);
        return -1;
    }
    return 0;
}

/* "<dir>/.<base><suffix>": the hidden siblings of a file (temp file, lock). */
static char *hidden_sibling(const char *dir, const char *base, const char *suffix)
{
    const char *sep = strcmp(dir, "/") == 0 ? "" : "/";
    size_t n = strlen(dir) + strlen(sep) + 1 + strlen(base) + strlen(suffix) + 1;
    char *s = malloc(n);
    if (s != NULL) snprintf(s, n, "%s%s.%s%s", dir, sep, base, suffix);
    return s;
}

int cm_config_save(const cm_config_t *cfg, const char *path, const char *lock_path,
                   cm_config_error_t *err)
{
    if (path == NULL) path = cfg->path;
    char *target = NULL, *dir = NULL, *base = NULL, *lock = NULL, *text = NULL;
    int lock_fd = -1, rc = -1;
    size_t len;
    struct stat st;

    /* Write through a symlink rather than over it. */
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) target = realpath(path, NULL);
    if (target == NULL) target = strdup(path);
    if (path[0] == '\0') {
        set_error(err, "ENOENT", ENOENT, "cannot save: empty path");
        goto out;
    }
    if (target == NULL || split_path(target, &dir, &base) != 0) {
        set_error(err, "nomem", ENOMEM, "%s: cannot save: out of memory", path);
        goto out;
    }
    if (base[0] == '\0') {
        set_error(err, "EISDIR", EISDIR, "%s: cannot save: %s", path, strerror(EISDIR));
        goto out;
    }
    /* "" : the caller holds the lock that serialises writers already. */
    int own_lock = lock_path == NULL || lock_path[0] != '\0';
    lock = lock_path != NULL ? strdup(lock_path) : hidden_sibling(dir, base, ".lock");
    text = cm_config_text(cfg, &len);
    if (lock == NULL || text == NULL) {
        set_error(err, "nomem", ENOMEM, "%s: cannot save: out of memory", path);
        goto out;
    }

    /* Never waited for: a save must not block the event loop; waiting for a
     * lock another process holds is the caller's (cm.fs.lock, on the loop). */
    lock_fd = own_lock ? cm_lock_now(lock, LOCK_EX, NULL) : -2;
    if (lock_fd == -1) {
        int e = errno;
        if (e == EWOULDBLOCK)
            set_error(err, "busy", e, "%s: cannot save: the lock %s is held by another process",
                      target, lock);
        else
            set_error(err, cm_errno_code(e), e, "%s: cannot save: %s (opening the lock %s)", target,
                      strerror(e), lock);
        goto out;
    }

    mode_t mode = 0644;
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    if (stat(target, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            set_error(err, "EISDIR", EISDIR, "%s: cannot save: %s", target, strerror(EISDIR));
            goto out;
        }
        mode = st.st_mode & 07777;
        uid = st.st_uid;
        gid = st.st_gid;
    } else if (errno != ENOENT) {
        int e = errno;
        set_error(err, cm_errno_code(e), e, "%s: cannot save: %s", target, strerror(e));
        goto out;
    }

    char what[PATH_MAX + 64];
    if (cm_replace_file(target, text, len, mode, uid, gid, 1, what, sizeof what) != 0) {
        int e = errno;
        set_error(err, cm_errno_code(e), e, "%s: cannot save: %s (%s)", target, strerror(e), what);
        goto out;
    }
    rc = 0;

out:
    if (lock_fd >= 0) close(lock_fd);
    free(text);
    free(lock);
    free(base);
    free(dir);
    free(target);
    return rc;
}
