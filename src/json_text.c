/*
 * The JSON text engine under cm.json and the config file (see json_text.h).
 *
 * cJSON parses and keeps key order; this file adds:
 *  - syntax errors with a line, a column and a reason, found by a small
 *    grammar check that runs only after cJSON has refused a text (cJSON's own
 *    error position is approximate);
 *  - a printer that writes exactly what Python's json.dump(indent=2,
 *    ensure_ascii=False) writes, so that Chat-O-Llama's files round-trip byte
 *    for byte.  cJSON keeps only the double of a number, so the parser keeps
 *    the source spelling of every number the printer would not reproduce
 *    (1.0, 1E5, 12345678901234567890) in the node's unused valuestring;
 *  - the checks of what cJSON and Python's json read differently.
 */
#include "json_text.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The largest integer a double holds exactly, and so the largest magnitude
 * printed as an integer without a kept spelling. */
#define EXACT_INT_MAX 9007199254740992.0

/* U+10FFFF in UTF-8 and as a JSON escape: what stands for a NUL in a
 * config's strings (see cm_json_protect_nuls). */
#define NUL_MARK "\xF4\x8F\xBF\xBF"
#define NUL_MARK_ESCAPE "\\uDBFF\\uDFFF"

/* CM_JSON_MAX_DEPTH as text, for messages. */
#define CM_JSON_STR_(x) #x
#define CM_JSON_STR(x) CM_JSON_STR_(x)
#define CM_JSON_DEPTH_TEXT CM_JSON_STR(CJSON_NESTING_LIMIT)

/* ---- numbers, independent of the locale --------------------------------- */

/* printf and strtod follow LC_NUMERIC, and cJSON parses with the locale's
 * decimal point too; JSON always uses '.', so both directions swap it. */
static char locale_decimal_point(void)
{
    const struct lconv *lc = localeconv();
    if (lc == NULL || lc->decimal_point == NULL || lc->decimal_point[0] == '\0') return '.';
    return lc->decimal_point[0];
}

static int is_number_char(char c)
{
    return (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.' || c == 'e' || c == 'E';
}

/* Reads a JSON number spelling from s (at most n bytes) as cJSON does: the
 * longest run of number characters (of any length: cJSON takes them all),
 * through strtod.  *used receives how many bytes strtod took (0 when none). */
static double read_number(const char *s, size_t n, size_t *used)
{
    char small[64], *buf = small;
    size_t k = 0, run = 0;
    char dp = locale_decimal_point();
    while (run < n && is_number_char(s[run]))
        run++;
    if (run >= sizeof(small)) {
        buf = malloc(run + 1);
        if (buf == NULL) {
            *used = 0;
            return 0;
        }
    }
    for (; k < run; k++)
        buf[k] = (s[k] == '.') ? dp : s[k];
    buf[k] = '\0';
    char *end = buf;
    double v = strtod(buf, &end);
    *used = (size_t)(end - buf);
    if (buf != small) free(buf);
    return v;
}

/* Writes the default spelling of v into buf (at least 32 bytes).  Returns
 * -1 for NaN and infinities, which JSON cannot express. */
static int format_number(double v, char *buf, size_t len)
{
    if (!isfinite(v)) return -1;
    if (v == floor(v) && fabs(v) <= EXACT_INT_MAX) {
        snprintf(buf, len, "%lld", (long long)v);
        return 0;
    }
    char dp = locale_decimal_point();
    for (int precision = 15; precision <= 17; precision++) {
        snprintf(buf, len, "%.*g", precision, v);
        for (char *p = buf; *p != '\0'; p++)
            if (*p == dp) *p = '.';
        size_t used;
        if (read_number(buf, strlen(buf), &used) == v) break;
    }
    return 0;
}

/* The kept spelling of a number node, when it still spells the node's value
 * (a caller may have changed the double since). */
static const char *number_literal(const cJSON *node)
{
    const char *lit = node->valuestring;
    if (lit == NULL) return NULL;
    size_t len = strlen(lit), used;
    double v = read_number(lit, len, &used);
    if (used == 0 || used != len || v != node->valuedouble) return NULL;
    return lit;
}

int cm_json_set_literal(cJSON *number, const char *literal)
{
    size_t len = strlen(literal);
    char *copy = cJSON_malloc(len + 1);
    if (copy == NULL) return -1;
    memcpy(copy, literal, len + 1);
    if (number->valuestring != NULL) cJSON_free(number->valuestring);
    number->valuestring = copy;
    return 0;
}

int cm_json_integer(const cJSON *number, long long *out)
{
    const char *lit = number_literal(number);
    if (lit != NULL) {
        const char *p = lit + (lit[0] == '-');
        if (*p == '\0' || strspn(p, "0123456789") != strlen(p)) return 0;
        errno = 0;
        long long v = strtoll(lit, NULL, 10);
        if (errno == ERANGE) return 0;
        *out = v;
        return 1;
    }
    double v = number->valuedouble;
    if (!isfinite(v) || v != floor(v) || fabs(v) > EXACT_INT_MAX) return 0;
    *out = (long long)v;
    return 1;
}

/* ---- syntax errors -------------------------------------------------------- */

/* Why and where a text is not JSON.  Runs after cJSON has refused the text,
 * and accepts everything cJSON accepts (raw control characters in strings,
 * numbers as loose as strtod), so the first error it finds is the one that
 * stopped cJSON. */
typedef struct diagnosis {
    size_t offset;    /* where the problem is */
    const char *what; /* NULL when no error was found */
    int at_eof;       /* the text ended too early */
} diagnosis_t;

static int diagnosed(diagnosis_t *d, size_t offset, const char *what)
{
    d->offset = offset;
    d->what = what;
    return 0;
}

static size_t skip_space(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static int hex4(const char *s, size_t n, size_t i, unsigned *out)
{
    if (n - i < 4) return 0;
    unsigned v = 0;
    for (size_t k = i; k < i + 4; k++) {
        char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

/* Checks the string starting at the quote s[*i]; on success *i is past the
 * closing quote.  Returns 0 with d filled on an error. */
static int check_string(const char *s, size_t n, size_t *i, diagnosis_t *d)
{
    size_t j = *i + 1;
    for (;;) {
        if (j >= n) {
            d->at_eof = 1;
            return diagnosed(d, *i, "unterminated string");
        }
        char c = s[j];
        if (c == '"') break;
        if (c != '\\') {
            j++;
            continue;
        }
        if (j + 1 >= n) {
            d->at_eof = 1;
            return diagnosed(d, *i, "unterminated string");
        }
        char e = s[j + 1];
        if (strchr("\"\\/bfnrt", e) != NULL && e != '\0') {
            j += 2;
            continue;
        }
        if (e != 'u') return diagnosed(d, j, "invalid escape in string");
        unsigned code, low;
        if (!hex4(s, n, j + 2, &code)) return diagnosed(d, j, "invalid \\u escape in string");
        if (code >= 0xDC00 && code <= 0xDFFF)
            return diagnosed(d, j, "lone UTF-16 surrogate in string");
        if (code >= 0xD800 && code <= 0xDBFF) {
            if (n - j < 12 || s[j + 6] != '\\' || s[j + 7] != 'u' || !hex4(s, n, j + 8, &low) ||
                low < 0xDC00 || low > 0xDFFF)
                return diagnosed(d, j, "lone UTF-16 surrogate in string");
            j += 12;
        } else {
            j += 6;
        }
    }
    *i = j + 1;
    return 1;
}

static int starts_with(const char *s, size_t n, size_t i, const char *word)
{
    size_t len = strlen(word);
    return n - i >= len && memcmp(s + i, word, len) == 0;
}

/* Finds the first syntax error of s.  Returns 1 when the grammar holds (the
 * error is one only cJSON sees), 0 with d filled otherwise. */
static int diagnose(const char *s, size_t n, diagnosis_t *d)
{
    enum { VALUE, KEY, AFTER } state = VALUE;
    char stack[CM_JSON_MAX_DEPTH]; /* '{' or '[' for every open container */
    size_t depth = 0, i = 0;
    int after_comma = 0;

    memset(d, 0, sizeof(*d));
    for (;;) {
        i = skip_space(s, n, i);
        if (i >= n && (state != AFTER || depth > 0)) {
            d->at_eof = 1;
            return diagnosed(d, i, "unexpected end");
        }
        char c = i < n ? s[i] : '\0';
        if (state == VALUE) {
            if (c == '{' || c == '[') {
                if (depth == CM_JSON_MAX_DEPTH)
                    return diagnosed(d, i, "nesting deeper than " CM_JSON_DEPTH_TEXT " levels");
                stack[depth++] = c;
                i = skip_space(s, n, i + 1);
                if (i < n && s[i] == (c == '{' ? '}' : ']')) {
                    depth--;
                    i++;
                    state = AFTER;
                } else {
                    state = (c == '{') ? KEY : VALUE;
                }
                after_comma = 0;
                continue;
            }
            if (c == '"') {
                if (!check_string(s, n, &i, d)) return 0;
                state = AFTER;
                continue;
            }
            if (c == '-' || (c >= '0' && c <= '9')) {
                size_t used;
                read_number(s + i, n - i, &used);
                if (used == 0) return diagnosed(d, i, "invalid number");
                i += used;
                state = AFTER;
                continue;
            }
            if (starts_with(s, n, i, "true") || starts_with(s, n, i, "null")) {
                i += 4;
                state = AFTER;
                continue;
            }
            if (starts_with(s, n, i, "false")) {
                i += 5;
                state = AFTER;
                continue;
            }
            if ((c == ']' || c == '}') && after_comma) return diagnosed(d, i, "trailing comma");
            if (c == '\'') return diagnosed(d, i, "strings must be in double quotes");
            if (c == '/' || c == '#') return diagnosed(d, i, "comments are not allowed in JSON");
            return diagnosed(d, i, "expected a value");
        }
        if (state == KEY) {
            if (c == '"') {
                if (!check_string(s, n, &i, d)) return 0;
                i = skip_space(s, n, i);
                if (i >= n) {
                    d->at_eof = 1;
                    return diagnosed(d, i, "unexpected end");
                }
                if (s[i] != ':') return diagnosed(d, i, "missing ':' after the key");
                i++;
                state = VALUE;
                after_comma = 0;
                continue;
            }
            if (c == '}' && after_comma) return diagnosed(d, i, "trailing comma");
            if (c == '\'') return diagnosed(d, i, "strings must be in double quotes");
            if (c == '/' || c == '#') return diagnosed(d, i, "comments are not allowed in JSON");
            return diagnosed(d, i, "expected a key in double quotes");
        }
        /* AFTER a value */
        if (depth == 0) {
            if (i >= n) return 1;
            return diagnosed(d, i, "unexpected text after the JSON value");
        }
        char open = stack[depth - 1];
        if (c == ',') {
            i++;
            after_comma = 1;
            state = (open == '{') ? KEY : VALUE;
            continue;
        }
        if (c == (open == '{' ? '}' : ']')) {
            depth--;
            i++;
            continue;
        }
        if (c == '/' || c == '#') return diagnosed(d, i, "comments are not allowed in JSON");
        return diagnosed(d, i, open == '{' ? "missing ',' or '}'" : "missing ',' or ']'");
    }
}

/* The 1-based line and column of s[offset]; the column counts characters
 * (UTF-8 continuation bytes do not count). */
static void line_col(const char *s, size_t offset, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t k = 0; k < offset; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c == '\n') {
            (*line)++;
            *col = 1;
        } else if ((c & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

/* Up to 20 bytes of s from offset, to the end of the line, never cutting a
 * UTF-8 sequence, with control characters shown as '?'. */
static void snippet(const char *s, size_t n, size_t offset, char *out, size_t outlen)
{
    size_t k = 0, max = outlen - 1 < 20 ? outlen - 1 : 20;
    while (offset + k < n && k < max && s[offset + k] != '\n' && s[offset + k] != '\r')
        k++;
    if (offset + k < n && k == max)
        while (k > 0 && ((unsigned char)s[offset + k] & 0xC0) == 0x80)
            k--;
    for (size_t j = 0; j < k; j++) {
        unsigned char c = (unsigned char)s[offset + j];
        out[j] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
    }
    out[k] = '\0';
}

/* Formats "line:col: what" for a text cJSON refused; cjson_offset is where
 * cJSON stopped, used when the grammar check finds nothing. */
static void describe_error(const char *s, size_t n, size_t cjson_offset, const char *eof_noun,
                           char *out, size_t outlen)
{
    diagnosis_t d;
    size_t line, col;
    char near[32];
    if (diagnose(s, n, &d)) {
        d.offset = cjson_offset <= n ? cjson_offset : n;
        d.what = NULL;
    }
    line_col(s, d.offset, &line, &col);
    if (d.at_eof && d.offset >= n) {
        snprintf(out, outlen, "%zu:%zu: invalid JSON: unexpected end of %s", line, col, eof_noun);
        return;
    }
    snippet(s, n, d.offset, near, sizeof(near));
    if (d.what == NULL) {
        snprintf(out, outlen, "%zu:%zu: invalid JSON near '%s'", line, col, near);
    } else if (d.at_eof) {
        snprintf(out, outlen, "%zu:%zu: invalid JSON: %s (the %s ends inside it) near '%s'", line,
                 col, d.what, eof_noun, near);
    } else {
        snprintf(out, outlen, "%zu:%zu: invalid JSON: %s near '%s'", line, col, d.what, near);
    }
}

/* ---- parsing ------------------------------------------------------------------ */

/* Walks the number tokens of a text in document order, which is also the
 * order in which a depth-first walk of the parsed tree meets number nodes
 * (cJSON keeps every member, duplicates included, in source order). */
typedef struct number_scan {
    const char *s;
    size_t n, i;
} number_scan_t;

static int next_number(number_scan_t *sc, const char **tok, size_t *len)
{
    while (sc->i < sc->n) {
        char c = sc->s[sc->i];
        if (c == '"') {
            sc->i++;
            while (sc->i < sc->n && sc->s[sc->i] != '"')
                sc->i += (sc->s[sc->i] == '\\') ? 2 : 1;
            sc->i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t start = sc->i;
            while (sc->i < sc->n && is_number_char(sc->s[sc->i]))
                sc->i++;
            *tok = sc->s + start;
            *len = sc->i - start;
            return 1;
        } else {
            sc->i++;
        }
    }
    return 0;
}

/* Keeps the source spelling of a number node when the printer would spell
 * it differently. */
static int keep_literal(cJSON *node, const char *tok, size_t len)
{
    char fmt[64];
    size_t used;
    if (read_number(tok, len, &used) != node->valuedouble || used != len) return 0;
    if (format_number(node->valuedouble, fmt, sizeof(fmt)) == 0 && strlen(fmt) == len &&
        memcmp(fmt, tok, len) == 0)
        return 0;
    char *lit = strndup(tok, len);
    if (lit == NULL) return -1;
    int rc = cm_json_set_literal(node, lit);
    free(lit);
    return rc;
}

static int keep_literals(cJSON *node, number_scan_t *sc)
{
    if (cJSON_IsNumber(node)) {
        const char *tok;
        size_t len;
        if (!next_number(sc, &tok, &len)) return 0;
        return keep_literal(node, tok, len);
    }
    for (cJSON *child = node->child; child != NULL; child = child->next)
        if (keep_literals(child, sc) != 0) return -1;
    return 0;
}

/* Parses s (n bytes, s[n] == '\0').  eof_noun names the text in messages. */
cJSON *cm_json_parse_terminated(const char *s, size_t n, const char *eof_noun, char *err,
                                size_t errlen)
{
    const char *nul = memchr(s, '\0', n);
    if (nul != NULL) {
        size_t line, col;
        line_col(s, (size_t)(nul - s), &line, &col);
        snprintf(err, errlen, "%zu:%zu: invalid JSON: NUL byte (is this a binary file?)", line,
                 col);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(s, &end, 1);
    if (root == NULL) {
        if (end == NULL || end < s) end = s;
        describe_error(s, n, (size_t)(end - s), eof_noun, err, errlen);
        return NULL;
    }
    number_scan_t sc = {s, n, 0};
    if (keep_literals(root, &sc) != 0) {
        cJSON_Delete(root);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    return root;
}

cJSON *cm_json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    if (len > CM_JSON_MAX_BYTES) {
        snprintf(err, errlen, "1:1: text too large (%zu bytes, limit %u)", len, CM_JSON_MAX_BYTES);
        return NULL;
    }
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    cJSON *root = cm_json_parse_terminated(copy, len, "input", err, errlen);
    free(copy);
    return root;
}

/* ---- printing ------------------------------------------------------------------ */

typedef struct outbuf {
    char *p;
    size_t len, cap;
    int failed;
    int nul_marks; /* U+10FFFF stands for a NUL (see protect_nuls) */
} outbuf_t;

static void put(outbuf_t *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(outbuf_t *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_indent(outbuf_t *b, int level)
{
    static const char spaces[] = "                                ";
    size_t n = (size_t)level * 2;
    put(b, "\n", 1);
    while (n > 0) {
        size_t k = n < sizeof(spaces) - 1 ? n : sizeof(spaces) - 1;
        put(b, spaces, k);
        n -= k;
    }
}

/* Escapes as Python's json module does with ensure_ascii=False: the quote,
 * the backslash and control characters; every other byte as it is. */
static void put_string(outbuf_t *b, const char *s)
{
    put(b, "\"", 1);
    const char *run = s;
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (b->nul_marks && strncmp(p, NUL_MARK, 4) == 0) {
            put(b, run, (size_t)(p - run));
            puts_(b, "\\u0000");
            p += 3;
            run = p + 1;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(b, run, (size_t)(p - run));
        run = p + 1;
        char esc[8];
        switch (c) {
        case '"':
            puts_(b, "\\\"");
            break;
        case '\\':
            puts_(b, "\\\\");
            break;
        case '\b':
            puts_(b, "\\b");
            break;
        case '\f':
            puts_(b, "\\f");
            break;
        case '\n':
            puts_(b, "\\n");
            break;
        case '\r':
            puts_(b, "\\r");
            break;
        case '\t':
            puts_(b, "\\t");
            break;
        default:
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            puts_(b, esc);
        }
    }
    put(b, run, strlen(run));
    put(b, "\"", 1);
}

static void put_value(outbuf_t *b, const cJSON *node, int level, int indent)
{
    if (b->failed) return;
    if (level > CM_JSON_MAX_DEPTH + 100) {
        b->failed = 1;
        return;
    }
    char num[64];
    const char *lit;
    switch (node->type & 0xFF) {
    case cJSON_NULL:
        puts_(b, "null");
        return;
    case cJSON_False:
        puts_(b, "false");
        return;
    case cJSON_True:
        puts_(b, "true");
        return;
    case cJSON_Number:
        lit = number_literal(node);
        if (lit == NULL) {
            if (format_number(node->valuedouble, num, sizeof(num)) != 0) {
                b->failed = 1;
                return;
            }
            lit = num;
        }
        puts_(b, lit);
        return;
    case cJSON_String:
        put_string(b, node->valuestring ? node->valuestring : "");
        return;
    case cJSON_Raw:
        puts_(b, node->valuestring ? node->valuestring : "null");
        return;
    case cJSON_Array:
    case cJSON_Object:
        break;
    default:
        b->failed = 1;
        return;
    }
    int is_object = (node->type & 0xFF) == cJSON_Object;
    if (node->child == NULL) {
        puts_(b, is_object ? "{}" : "[]");
        return;
    }
    puts_(b, is_object ? "{" : "[");
    for (const cJSON *child = node->child; child != NULL; child = child->next) {
        if (indent) put_indent(b, level + 1);
        if (is_object) {
            put_string(b, child->string ? child->string : "");
            puts_(b, indent ? ": " : ":");
        }
        put_value(b, child, level + 1, indent);
        if (child->next != NULL) puts_(b, ",");
    }
    if (indent) put_indent(b, level);
    puts_(b, is_object ? "}" : "]");
}

char *cm_json_print(const cJSON *node, int indent, size_t *len)
{
    outbuf_t b = {0};
    put_value(&b, node, 0, indent);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (len != NULL) *len = b.len;
    return b.p;
}

char *cm_json_print_doc(const cJSON *node, int nul_marks, const char *prefix, size_t *len)
{
    outbuf_t b = {0};
    b.nul_marks = nul_marks;
    puts_(&b, prefix);
    put_value(&b, node, 0, 1);
    puts_(&b, "\n");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (len != NULL) *len = b.len;
    return b.p;
}

/* ---- small facts ------------------------------------------------------------ */

int cm_json_only_space(const char *s, size_t n)
{
    return skip_space(s, n, 0) == n;
}

const char *cm_json_type_name(const cJSON *node)
{
    switch (node->type & 0xFF) {
    case cJSON_Array:
        return "an array";
    case cJSON_String:
        return "a string";
    case cJSON_Number:
        return "a number";
    case cJSON_NULL:
        return "null";
    case cJSON_True:
    case cJSON_False:
        return "a boolean";
    default:
        return "something else";
    }
}

/* ---- where cJSON and Python's json disagree ------------------------------------ */

/* cJSON's strings end at a NUL, so "\u0000" in a key or a value would be
 * cut there (and "k\u0000ey" would become a second "k").  Such escapes are
 * parsed as the escape of U+10FFFF instead, which the printer writes back
 * as "\u0000" (Python's spelling), so a save keeps every byte.  Returns a
 * malloc'd copy with the escapes swapped (*out_n bytes), or NULL when there
 * are none (*conflict = 1 when the text holds U+10FFFF itself, which would
 * then be ambiguous). */

char *cm_json_protect_nuls(const char *s, size_t n, size_t *out_n, int *conflict)
{
    *conflict = 0;
    size_t count = 0;
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') {
            in_string = !in_string;
        } else if (in_string && s[i] == '\\' && i + 1 < n) {
            if (i + 5 < n && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0) count++;
            if (i + 5 < n && s[i + 1] == 'u' && strncasecmp(s + i + 2, "dbff", 4) == 0)
                *conflict = 1;
            i++;
        } else if (i + 3 < n && memcmp(s + i, NUL_MARK, 4) == 0) {
            *conflict = 1;
        }
    }
    if (count == 0) *conflict = 0; /* nothing to stand in for */
    if (count == 0 || *conflict) return NULL;
    size_t len = n + count * (sizeof(NUL_MARK_ESCAPE) - 1 - 6);
    char *out = malloc(len + 1);
    if (out == NULL) return NULL;
    size_t o = 0;
    in_string = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') {
            in_string = !in_string;
        } else if (in_string && s[i] == '\\' && i + 1 < n) {
            if (i + 5 < n && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0) {
                memcpy(out + o, NUL_MARK_ESCAPE, sizeof(NUL_MARK_ESCAPE) - 1);
                o += sizeof(NUL_MARK_ESCAPE) - 1;
                i += 5;
                continue;
            }
            out[o++] = s[i++];
        }
        out[o++] = s[i];
    }
    out[o] = '\0';
    *out_n = o;
    return out;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key that occurs twice in one object (Python's json keeps the
 * last, cJSON finds the first: the app and the manager would read
 * different values), with the dotted path of its object; NULL when none. */
static const char *duplicate_key(const cJSON *node, char *where, size_t wlen, size_t at)
{
    int n = 0;
    for (const cJSON *c = node->child; c != NULL; c = c->next)
        n++;
    if (cJSON_IsObject(node) && n > 1) {
        const char **names = malloc((size_t)n * sizeof *names);
        if (names != NULL) {
            int k = 0;
            for (const cJSON *c = node->child; c != NULL; c = c->next)
                names[k++] = c->string != NULL ? c->string : "";
            qsort(names, (size_t)n, sizeof *names, compare_names);
            for (int i = 1; i < n; i++) {
                if (strcmp(names[i - 1], names[i]) == 0) {
                    const char *dup = names[i];
                    free(names);
                    return dup;
                }
            }
            free(names);
        }
    }
    for (const cJSON *c = node->child; c != NULL; c = c->next) {
        if (c->child == NULL) continue;
        size_t next = at;
        if (cJSON_IsObject(node) && c->string != NULL)
            next = at + (size_t)snprintf(where + at, at < wlen ? wlen - at : 0, "%s%s",
                                         at > 0 ? "." : "", c->string);
        if (next >= wlen) next = wlen - 1;
        const char *dup = duplicate_key(c, where, wlen, next);
        if (dup != NULL) return dup;
        where[at] = '\0';
    }
    return NULL;
}

/* Refuses, with a message that says so, what cJSON would accept but
 * Python's json (the app) would not, or would read differently: a number
 * with a leading zero, a key twice in one object.  NaN and Infinity, which
 * Python accepts, cJSON refuses already (cm_json_python_note says so).
 * Returns 0, or -1 with the message in msg: "line:col: what" or " what". */
int cm_json_python_check(const cJSON *root, const char *s, size_t n, char *msg, size_t msglen)
{
    number_scan_t sc = {s, n, 0};
    const char *tok;
    size_t len;
    while (next_number(&sc, &tok, &len)) {
        const char *digits = tok[0] == '-' ? tok + 1 : tok;
        if (digits + 1 < tok + len && digits[0] == '0' && digits[1] >= '0' && digits[1] <= '9') {
            size_t line, col;
            line_col(s, (size_t)(tok - s), &line, &col);
            snprintf(msg, msglen,
                     "%zu:%zu: the number %.*s has a leading zero: Python's json (the app) "
                     "refuses it, and so does the manager",
                     line, col, (int)(len > 40 ? 40 : len), tok);
            return -1;
        }
    }
    char where[256] = "";
    const char *dup = duplicate_key(root, where, sizeof where, 0);
    if (dup != NULL) {
        snprintf(msg, msglen,
                 " the key '%s' occurs twice in %s%s%s: Python's json (the app) would use "
                 "the last and the manager the first, so the manager refuses it (remove one)",
                 dup, where[0] != '\0' ? "'" : "the top-level object", where,
                 where[0] != '\0' ? "'" : "");
        return -1;
    }
    return 0;
}

const char *cm_json_python_note(const char *msg)
{
    const char *tail = strstr(msg, "near '");
    int python_only = tail != NULL &&
                      (strncmp(tail + 6, "NaN", 3) == 0 || strncmp(tail + 6, "Infinity", 8) == 0 ||
                       strncmp(tail + 6, "-Infinity", 9) == 0);
    return python_only ? " (NaN and Infinity are not JSON: Python's json accepts them, the "
                         "manager refuses them)"
                       : "";
}
