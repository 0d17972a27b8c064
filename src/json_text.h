/*
 * The JSON text engine shared by cm.json and the config file: cm_json_parse
 * (cJSON plus line:column errors and number literals kept for exact output)
 * and cm_json_print (a printer that writes exactly Python's json.dump
 * style, indented or compact), and the checks of what cJSON and Python's
 * json read differently.
 *
 * Pure C on cJSON: no Lua, no libuv.
 */
#ifndef CM_JSON_TEXT_H
#define CM_JSON_TEXT_H

#include <stddef.h>
#include <cjson/cJSON.h>

/* The largest text cm_json_parse accepts (and the largest config file). */
#define CM_JSON_MAX_BYTES (16u * 1024u * 1024u)

/* The deepest nesting a parse accepts (cJSON's own limit). */
#define CM_JSON_MAX_DEPTH CJSON_NESTING_LIMIT

/* Parses JSON text of `len` bytes (the text need not be NUL-terminated).  Any
 * JSON value is accepted at the top.  Number nodes whose source spelling
 * differs from what cm_json_print would write (1.0, 1E5, integers beyond
 * 2^53) keep it in their valuestring, so printing gives it back exactly.
 * Returns the tree, or NULL with "<line>:<col>: <what>" in err (1-based; the
 * column counts characters). */
cJSON *cm_json_parse(const char *text, size_t len, char *err, size_t errlen);

/* Prints a tree: with `indent`, in json.dump(indent=2) style without the
 * final newline; without, compact ({"a":1,"b":[true,null]}).  Keys keep their
 * order; strings are escaped as JSON requires (non-ASCII bytes pass through).
 * Integral numbers up to 2^53 print as integers, others as the shortest of
 * %.15g/%.16g/%.17g that reads back the same.  Returns a malloc'd string, or
 * NULL when out of memory, for a NaN or infinity, or a tree deeper than
 * CM_JSON_MAX_DEPTH + 100 (cJSON built by hand). */
char *cm_json_print(const cJSON *node, int indent, size_t *len);

/* Attaches the exact decimal spelling `literal` to a number node, so the
 * printer writes it instead of the double (used for 64-bit integers beyond
 * 2^53).  Returns 0, or -1 when out of memory (the node is unchanged). */
int cm_json_set_literal(cJSON *number, const char *literal);

/* The number node's exact integer value when its source spelling is an
 * integer that fits in 64 bits, or its double is integral and at most 2^53 in
 * magnitude: returns 1 and stores it in *out.  Returns 0 for everything else
 * (fractions, exponents, huge values). */
int cm_json_integer(const cJSON *number, long long *out);

/* Parses s (n bytes, s[n] == '\0', no NUL inside); eof_noun names the text
 * in messages ("file", "input").  Like cm_json_parse otherwise. */
cJSON *cm_json_parse_terminated(const char *s, size_t n, const char *eof_noun, char *err,
                                size_t errlen);

/* What a config file is written as: prefix (a BOM or ""), the indented
 * print, "\n"; with nul_marks, U+10FFFF in strings prints as \u0000 (see
 * cm_json_protect_nuls).  NULL when out of memory or unprintable. */
char *cm_json_print_doc(const cJSON *node, int nul_marks, const char *prefix, size_t *len);

/* cJSON's strings end at a NUL, so "\u0000" in a key or a value would be
 * cut there.  Returns a malloc'd copy of s with each such escape swapped
 * for the escape of U+10FFFF (*out_n bytes), or NULL when there is none or
 * when *conflict: the text holds U+10FFFF itself, which would then be
 * ambiguous. */
char *cm_json_protect_nuls(const char *s, size_t n, size_t *out_n, int *conflict);

/* 0, or -1 with "line:col: what" or " what" in msg: a number with a
 * leading zero (Python's json refuses it) or a key twice in one object
 * (Python keeps the last, cJSON finds the first). */
int cm_json_python_check(const cJSON *root, const char *s, size_t n, char *msg, size_t msglen);

/* For a parse error message: a note when the text near the error is NaN or
 * Infinity, which Python's json accepts and JSON does not; else "". */
const char *cm_json_python_note(const char *msg);

/* True when s holds only JSON whitespace. */
int cm_json_only_space(const char *s, size_t n);

/* "an array", "a string", ... for messages. */
const char *cm_json_type_name(const cJSON *node);

#endif
