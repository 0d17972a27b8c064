/*
 * fuzz_config: the config file's parser, printer and dotted keys
 * (src/config.c on src/json_text.c), fed arbitrary bytes.
 *
 * Input: config text, optionally followed by a NUL byte and NUL-separated
 * dotted keys ("a.b\0c\0") that are set, read back and unset.  The whole
 * input, NUL bytes included, is also parsed as it is.
 *
 * Every property below is what a command relies on; a violation aborts, so
 * libFuzzer records it as a crash with the input that caused it:
 *  - a refused text gives an error code and a message;
 *  - loading a file and parsing the same bytes agree;
 *  - a config that loads can be saved: cm_config_text succeeds, the text
 *    loads again and prints to the same bytes (the save round trip);
 *  - every member reachable by a dotted key is what cm_config_get returns;
 *  - cm_config_set makes cm_config_get return the value, and a failed set
 *    leaves the config's text unchanged;
 *  - any JSON value prints (compact and indented) to text that parses back
 *    to the same print.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_KEYS 8
#define MAX_WALK_DEPTH 32
#define MAX_PATH 512

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The memfd through which the load path is exercised; /proc/self/fd/N is an
 * ordinary regular file to open(2). */
static int input_fd = -1;
static char input_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    input_fd = memfd_create("fuzz_config", MFD_CLOEXEC);
    if (input_fd < 0) {
        perror("memfd_create");
        abort();
    }
    snprintf(input_path, sizeof(input_path), "/proc/self/fd/%d", input_fd);
    return 0;
}

static void write_input(const uint8_t *data, size_t size)
{
    CHECK(ftruncate(input_fd, 0) == 0);
    size_t done = 0;
    while (done < size) {
        ssize_t k = pwrite(input_fd, data + done, size - done, (off_t)done);
        CHECK(k > 0);
        done += (size_t)k;
    }
}

/* Saving a config that loaded must work and be a fixed point: what is
 * written loads again and is written back byte for byte.  Returns the text
 * (caller frees). */
static char *check_round_trip(const cm_config_t *cfg, size_t *out_len)
{
    size_t len1, len2;
    char *text1 = cm_config_text(cfg, &len1);
    CHECK(text1 != NULL);
    CHECK(strlen(text1) == len1);
    cm_config_error_t err = {0};
    cm_config_t *again = cm_config_parse(text1, len1, "printed", &err);
    if (again == NULL) fprintf(stderr, "re-load failed: %s\n", err.msg);
    CHECK(again != NULL);
    CHECK(again->has_bom == cfg->has_bom);
    char *text2 = cm_config_text(again, &len2);
    CHECK(text2 != NULL);
    if (len1 != len2 || memcmp(text1, text2, len1) != 0)
        fprintf(stderr, "first print:\n%s\nsecond print:\n%s\n", text1, text2);
    CHECK(len1 == len2 && memcmp(text1, text2, len1) == 0);
    free(text2);
    cm_config_free(again);
    if (out_len) *out_len = len1;
    return text1;
}

/* A member name that can be one part of a dotted key. */
static int is_key_part(const char *name)
{
    return name != NULL && name[0] != '\0' && strchr(name, '.') == NULL;
}

/* Every member reached by a dotted key of plain parts is the one
 * cm_config_get finds (the first of duplicates). */
static void check_walk(const cm_config_t *cfg, const cJSON *object, char *path, size_t path_len,
                       int depth)
{
    if (depth >= MAX_WALK_DEPTH) return;
    for (const cJSON *child = object->child; child != NULL; child = child->next) {
        if (!is_key_part(child->string)) continue;
        int first = 1;
        for (const cJSON *prev = object->child; prev != child; prev = prev->next)
            if (prev->string != NULL && strcmp(prev->string, child->string) == 0) first = 0;
        if (!first) continue;
        size_t name_len = strlen(child->string);
        size_t sep = path_len > 0 ? 1 : 0;
        if (path_len + sep + name_len + 1 > MAX_PATH) continue;
        if (sep) path[path_len] = '.';
        memcpy(path + path_len + sep, child->string, name_len + 1);
        CHECK(cm_config_get(cfg, path) == child);
        if (cJSON_IsObject(child))
            check_walk(cfg, child, path, path_len + sep + name_len, depth + 1);
        path[path_len] = '\0';
    }
}

/* A value for the i-th set: one of each kind the commands write. */
static cJSON *make_value(int i, const char *key)
{
    switch (i % 6) {
    case 0:
        return cJSON_CreateNumber(8080);
    case 1:
        return cJSON_CreateString(key);
    case 2:
        return cJSON_CreateObject();
    case 3:
        return cJSON_CreateNumber(0.1 * i);
    case 4:
        return cJSON_CreateBool(i & 1);
    default:
        return cJSON_CreateNull();
    }
}

static void check_keys(cm_config_t *cfg, const char *keys, size_t len)
{
    int n = 0;
    for (size_t at = 0; at < len && n < MAX_KEYS; n++) {
        const char *key = keys + at;
        size_t key_len = strnlen(key, len - at);
        char *copy = strndup(key, key_len);
        CHECK(copy != NULL);
        at += key_len + 1;

        (void)cm_config_get(cfg, copy);
        size_t before_len;
        char *before = cm_config_text(cfg, &before_len);
        CHECK(before != NULL);
        cJSON *value = make_value(n, copy);
        CHECK(value != NULL);
        cm_config_error_t err = {0};
        if (cm_config_set(cfg, copy, value, &err) == 0) {
            CHECK(cm_config_get(cfg, copy) == value);
            if (n % 2 == 1) CHECK(cm_config_unset(cfg, copy) == 1);
        } else {
            CHECK(err.code != NULL && strcmp(err.code, "key") == 0 && err.msg[0] != '\0');
            size_t after_len;
            char *after = cm_config_text(cfg, &after_len);
            CHECK(after != NULL);
            CHECK(after_len == before_len && memcmp(before, after, after_len) == 0);
            free(after);
        }
        free(before);
        free(copy);
    }
}

/* Any JSON value: printing and parsing the print is a fixed point. */
static void check_json_value(const uint8_t *data, size_t size)
{
    char err[256];
    cJSON *root = cm_json_parse((const char *)data, size, err, sizeof(err));
    if (root == NULL) {
        CHECK(err[0] != '\0');
        return;
    }
    for (int indent = 0; indent <= 1; indent++) {
        size_t len1, len2;
        char *text1 = cm_json_print(root, indent, &len1);
        CHECK(text1 != NULL);
        cJSON *again = cm_json_parse(text1, len1, err, sizeof(err));
        if (again == NULL) fprintf(stderr, "re-parse failed: %s\n%s\n", err, text1);
        CHECK(again != NULL);
        char *text2 = cm_json_print(again, indent, &len2);
        CHECK(text2 != NULL);
        CHECK(len1 == len2 && memcmp(text1, text2, len1) == 0);
        free(text1);
        free(text2);
        cJSON_Delete(again);
    }
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The whole input, as a file and as bytes: the same verdict. */
    cm_config_error_t perr = {0}, lerr = {0};
    write_input(data, size);
    cm_config_t *parsed = cm_config_parse((const char *)data, size, input_path, &perr);
    cm_config_t *loaded = cm_config_load(input_path, &lerr);
    CHECK((parsed == NULL) == (loaded == NULL));
    if (parsed == NULL) {
        CHECK(perr.code != NULL && perr.msg[0] != '\0');
        CHECK(strcmp(perr.code, lerr.code) == 0 && strcmp(perr.msg, lerr.msg) == 0);
    } else {
        size_t plen, llen;
        char *ptext = check_round_trip(parsed, &plen);
        char *ltext = check_round_trip(loaded, &llen);
        CHECK(plen == llen && memcmp(ptext, ltext, plen) == 0);
        free(ptext);
        free(ltext);
    }
    cm_config_free(parsed);
    cm_config_free(loaded);

    check_json_value(data, size);

    /* The text before the first NUL as a config, the rest as keys. */
    const uint8_t *nul = memchr(data, '\0', size);
    size_t text_len = nul != NULL ? (size_t)(nul - data) : size;
    cm_config_error_t err = {0};
    cm_config_t *cfg = cm_config_parse((const char *)data, text_len, "fuzz.json", &err);
    if (cfg == NULL) return 0;
    char path[MAX_PATH] = "";
    check_walk(cfg, cfg->root, path, 0, 0);
    if (nul != NULL) {
        check_keys(cfg, (const char *)nul + 1, size - text_len - 1);
        char *text = check_round_trip(cfg, NULL);
        free(text);
    }
    cm_config_free(cfg);
    return 0;
}
