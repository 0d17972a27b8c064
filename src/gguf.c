/*
 * GGUF header reader (see gguf.h).
 *
 * The layout (little-endian throughout, versions 2 and 3):
 *
 *   "GGUF"  u32 version  u64 tensor_count  u64 kv_count
 *   kv_count x { string key, u32 type, value }
 *   tensor_count x { string name, u32 n_dims, n_dims x u64 dim, u32 type, u64 offset }
 *   padding to general.alignment (default 32), then the tensor data
 *
 * where a string is a u64 length and that many bytes, and an array value is
 * a u32 element type, a u64 count and the elements.  The reader walks the
 * metadata keeping the few values the backend reports, then walks the tensor
 * infos to check that the data they describe fits in the file: an incomplete
 * download has a perfect header, and is the corrupt model users meet most.
 *
 * Reads go through one fixed buffer with pread; skipped values are skipped
 * by moving the offset, so nothing is ever allocated from a size the file
 * claims, and every claimed size is checked against the bytes that remain.
 */
#include "gguf.h"
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_BUFFER (64 * 1024)
/* The header, metadata and tensor infos must lie in the file's first 32 MiB
 * (real models need a few MiB, most of it the vocabulary; the largest
 * vocabularies under 20): a forged header over a sparse file (16 GiB on
 * 4 KiB of disk) cannot make a check read for minutes. */
#define MAX_HEADER_BYTES ((uint64_t)32 << 20)
#define MAX_KV_COUNT ((uint64_t)1 << 20)
#define MAX_TENSOR_COUNT ((uint64_t)1 << 20)
#define MAX_ARRAY_DEPTH 4    /* arrays of arrays of ... */
#define MAX_TENSOR_DIMS 4    /* GGML_MAX_DIMS */
#define DEFAULT_ALIGNMENT 32 /* when general.alignment is absent */
#define MAX_CONTEXT_CANDIDATES 8

enum {
    T_U8 = 0,
    T_I8 = 1,
    T_U16 = 2,
    T_I16 = 3,
    T_U32 = 4,
    T_I32 = 5,
    T_F32 = 6,
    T_BOOL = 7,
    T_STRING = 8,
    T_ARRAY = 9,
    T_U64 = 10,
    T_I64 = 11,
    T_F64 = 12,
};

typedef struct reader {
    int fd;
    const char *path;
    uint64_t size;    /* the file's size */
    uint64_t pos;     /* offset of the next byte to read */
    uint64_t buf_off; /* file offset of buf[0] */
    size_t buf_len;   /* valid bytes in buf */
    char *err;
    size_t errlen;
    unsigned char buf[READ_BUFFER];
} reader_t;

/* A "<arch>.context_length" seen before the architecture may be known. */
typedef struct context_candidate {
    char arch[64];
    int64_t value;
} context_candidate_t;

static int invalid(reader_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int invalid(reader_t *r, const char *fmt, ...)
{
    int n = snprintf(r->err, r->errlen, "%s: ", r->path);
    if (n >= 0 && (size_t)n < r->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return CM_GGUF_INVALID;
}

static int os_error(char *err, size_t errlen, const char *path, int e)
{
    snprintf(err, errlen, "%s: %s", path, strerror(e));
    return e;
}

/* Fails unless n more bytes exist past the current offset. */
static int need(reader_t *r, uint64_t n, const char *what)
{
    if (n > r->size - r->pos)
        return invalid(r, "truncated at byte %" PRIu64 " while reading %s", r->size, what);
    return 0;
}

static int read_bytes(reader_t *r, void *dst, size_t n, const char *what)
{
    int rc = need(r, n, what);
    if (rc != 0) return rc;
    if (r->pos + n > MAX_HEADER_BYTES)
        return invalid(r,
                       "its metadata goes on past %" PRIu64 " MiB (at %s): not a model header "
                       "this manager reads (a forged or damaged file?)",
                       MAX_HEADER_BYTES >> 20, what);
    unsigned char *out = dst;
    while (n > 0) {
        if (r->pos < r->buf_off || r->pos >= r->buf_off + r->buf_len) {
            ssize_t got;
            do
                got = pread(r->fd, r->buf, sizeof(r->buf), (off_t)r->pos);
            while (got < 0 && errno == EINTR);
            if (got < 0) return os_error(r->err, r->errlen, r->path, errno);
            if (got == 0) /* the file shrank under us */
                return invalid(r, "truncated at byte %" PRIu64 " while reading %s", r->pos, what);
            r->buf_off = r->pos;
            r->buf_len = (size_t)got;
        }
        size_t at = (size_t)(r->pos - r->buf_off);
        size_t k = r->buf_len - at < n ? r->buf_len - at : n;
        memcpy(out, r->buf + at, k);
        out += k;
        n -= k;
        r->pos += k;
    }
    return 0;
}

static int skip(reader_t *r, uint64_t n, const char *what)
{
    int rc = need(r, n, what);
    if (rc == 0) r->pos += n;
    return rc;
}

static int read_u32(reader_t *r, uint32_t *v, const char *what)
{
    unsigned char b[4];
    int rc = read_bytes(r, b, sizeof(b), what);
    if (rc == 0)
        *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return rc;
}

static int read_u64(reader_t *r, uint64_t *v, const char *what)
{
    unsigned char b[8];
    int rc = read_bytes(r, b, sizeof(b), what);
    if (rc != 0) return rc;
    *v = 0;
    for (int i = 7; i >= 0; i--)
        *v = *v << 8 | b[i];
    return 0;
}

/* Copies text into a message: control and non-ASCII bytes become '?', and
 * long text is cut. */
static void printable(const char *s, size_t n, char *out, size_t outlen)
{
    size_t k = 0;
    for (; k < n && k + 1 < outlen; k++) {
        unsigned char c = (unsigned char)s[k];
        out[k] = (c < 0x20 || c >= 0x7F) ? '?' : (char)c;
    }
    out[k] = '\0';
}

/* Reads a string: its length (checked against the file), then up to
 * keep_len - 1 bytes of it into keep (NUL-terminated; keep may be NULL), and
 * skips the rest.  *full_len receives the length the file claims. */
static int read_string(reader_t *r, char *keep, size_t keep_len, uint64_t *full_len,
                       const char *what)
{
    uint64_t len;
    int rc = read_u64(r, &len, what);
    if (rc != 0) return rc;
    if (len > r->size - r->pos)
        return invalid(r, "string length %" PRIu64 " exceeds the file (%" PRIu64 " bytes) in %s",
                       len, r->size, what);
    if (full_len != NULL) *full_len = len;
    uint64_t kept = 0;
    if (keep != NULL && keep_len > 0) {
        kept = len < keep_len - 1 ? len : keep_len - 1;
        rc = read_bytes(r, keep, (size_t)kept, what);
        if (rc != 0) return rc;
        keep[kept] = '\0';
    }
    return skip(r, len - kept, what);
}

/* The size of a fixed-size value type, 0 for strings and arrays, -1 for an
 * unknown type. */
static int type_size(uint32_t type)
{
    switch (type) {
    case T_U8:
    case T_I8:
    case T_BOOL:
        return 1;
    case T_U16:
    case T_I16:
        return 2;
    case T_U32:
    case T_I32:
    case T_F32:
        return 4;
    case T_U64:
    case T_I64:
    case T_F64:
        return 8;
    case T_STRING:
    case T_ARRAY:
        return 0;
    default:
        return -1;
    }
}

static int skip_value(reader_t *r, uint32_t type, int depth, const char *what);

static int skip_array(reader_t *r, int depth, const char *what)
{
    uint32_t elem;
    uint64_t count;
    int rc = read_u32(r, &elem, what);
    if (rc == 0) rc = read_u64(r, &count, what);
    if (rc != 0) return rc;
    int size = type_size(elem);
    if (size < 0) return invalid(r, "unknown array element type %" PRIu32 " in %s", elem, what);
    uint64_t remaining = r->size - r->pos;
    /* Every element takes at least this many bytes, so no count larger
     * than the remaining bytes allow can be real; this also bounds the
     * loops below by the file's size. */
    uint64_t min_size = size > 0 ? (uint64_t)size : (elem == T_STRING ? 8 : 12);
    if (count > remaining / min_size)
        return invalid(r, "array of %" PRIu64 " elements exceeds the file in %s", count, what);
    if (size > 0) return skip(r, count * (uint64_t)size, what);
    if (depth >= MAX_ARRAY_DEPTH) return invalid(r, "arrays nested too deeply in %s", what);
    for (uint64_t i = 0; i < count; i++) {
        rc = skip_value(r, elem, depth + 1, what);
        if (rc != 0) return rc;
    }
    return 0;
}

static int skip_value(reader_t *r, uint32_t type, int depth, const char *what)
{
    int size = type_size(type);
    if (size > 0) return skip(r, (uint64_t)size, what);
    if (type == T_STRING) return read_string(r, NULL, 0, NULL, what);
    if (type == T_ARRAY) return skip_array(r, depth, what);
    return invalid(r, "unknown value type %" PRIu32 " in %s", type, what);
}

/* Reads an integer value of any integer type.  *ok is 0 when the type is
 * not an integer (the value is then skipped) or does not fit in int64. */
static int read_integer(reader_t *r, uint32_t type, int64_t *v, int *ok, const char *what)
{
    unsigned char b[8] = {0};
    int size = type_size(type);
    *ok = 0;
    if (type == T_F32 || type == T_F64 || type == T_BOOL || size <= 0)
        return skip_value(r, type, 0, what);
    int rc = read_bytes(r, b, (size_t)size, what);
    if (rc != 0) return rc;
    uint64_t u = 0;
    for (int i = size - 1; i >= 0; i--)
        u = u << 8 | b[i];
    int is_signed = type == T_I8 || type == T_I16 || type == T_I32 || type == T_I64;
    if (is_signed && size < 8 && (u >> (size * 8 - 1)) & 1) u |= ~(uint64_t)0 << (size * 8);
    if (!is_signed && u > INT64_MAX) return 0;
    *v = (int64_t)u;
    *ok = 1;
    return 0;
}

const char *cm_gguf_file_type_name(int64_t file_type, char *buf, size_t len)
{
    static const struct {
        int64_t type;
        const char *name;
    } names[] = {
        {0, "F32"},      {1, "F16"},      {2, "Q4_0"},       {3, "Q4_1"},    {7, "Q8_0"},
        {8, "Q5_0"},     {9, "Q5_1"},     {10, "Q2_K"},      {11, "Q3_K_S"}, {12, "Q3_K_M"},
        {13, "Q3_K_L"},  {14, "Q4_K_S"},  {15, "Q4_K_M"},    {16, "Q5_K_S"}, {17, "Q5_K_M"},
        {18, "Q6_K"},    {19, "IQ2_XXS"}, {20, "IQ2_XS"},    {21, "Q2_K_S"}, {22, "IQ3_XS"},
        {23, "IQ3_XXS"}, {24, "IQ1_S"},   {25, "IQ4_NL"},    {26, "IQ3_S"},  {27, "IQ3_M"},
        {28, "IQ2_S"},   {29, "IQ2_M"},   {30, "IQ4_XS"},    {31, "IQ1_M"},  {32, "BF16"},
        {36, "TQ1_0"},   {37, "TQ2_0"},   {38, "MXFP4_MOE"},
    };
    /* These are llama.cpp's llama_ftype values, not ggml tensor types: BF16
     * is 32 here (the tensor type BF16 is 30, and file type 30 is IQ4_XS). */
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i].type == file_type) {
            snprintf(buf, len, "%s", names[i].name);
            return buf;
        }
    }
    snprintf(buf, len, "type %" PRId64, file_type);
    return buf;
}

/* Bytes per block and elements per block of the ggml tensor types whose
 * layout is settled (ggml's type_traits); 0 for the others, whose sizes are
 * then not checked. */
static void tensor_type_layout(uint32_t type, uint64_t *block_elems, uint64_t *block_bytes)
{
    static const struct {
        uint16_t elems, bytes;
    } layout[] = {
        [0] = {1, 4},      [1] = {1, 2},      [2] = {32, 18},    [3] = {32, 20},
        [6] = {32, 22},    [7] = {32, 24},    [8] = {32, 34},    [9] = {32, 36},
        [10] = {256, 84},  [11] = {256, 110}, [12] = {256, 144}, [13] = {256, 176},
        [14] = {256, 210}, [15] = {256, 292}, [16] = {256, 66},  [17] = {256, 74},
        [18] = {256, 98},  [19] = {256, 50},  [20] = {32, 18},   [21] = {256, 110},
        [22] = {256, 82},  [23] = {256, 136}, [24] = {1, 1},     [25] = {1, 2},
        [26] = {1, 4},     [27] = {1, 8},     [28] = {1, 8},     [29] = {256, 56},
        [30] = {1, 2},     [34] = {256, 54},  [35] = {256, 66},  [39] = {32, 17},
    };
    *block_elems = *block_bytes = 0;
    if (type < sizeof(layout) / sizeof(layout[0])) {
        *block_elems = layout[type].elems;
        *block_bytes = layout[type].bytes;
    }
}

/* Walks the tensor infos and checks that the data they describe lies inside
 * the file. */
static int check_tensors(reader_t *r, uint64_t count, uint64_t alignment)
{
    uint64_t data_end = 0; /* the furthest byte any tensor needs, from the data start */
    char what[96], name[48];
    for (uint64_t t = 0; t < count; t++) {
        uint64_t name_len;
        snprintf(what, sizeof(what), "the name of tensor %" PRIu64, t);
        int rc = read_string(r, name, sizeof(name), &name_len, what);
        if (rc != 0) return rc;
        printable(name, strlen(name), name, sizeof(name));
        snprintf(what, sizeof(what), "tensor '%s'", name);

        uint32_t n_dims, type;
        uint64_t dims[MAX_TENSOR_DIMS], offset;
        if ((rc = read_u32(r, &n_dims, what)) != 0) return rc;
        if (n_dims > MAX_TENSOR_DIMS)
            return invalid(r, "tensor '%s' has %" PRIu32 " dimensions (at most %d)", name, n_dims,
                           MAX_TENSOR_DIMS);
        for (uint32_t d = 0; d < n_dims; d++)
            if ((rc = read_u64(r, &dims[d], what)) != 0) return rc;
        if ((rc = read_u32(r, &type, what)) != 0) return rc;
        if ((rc = read_u64(r, &offset, what)) != 0) return rc;
        if (offset % alignment != 0)
            return invalid(r, "tensor '%s' is not aligned to %" PRIu64 " bytes", name, alignment);

        uint64_t block_elems, block_bytes, bytes = 0;
        tensor_type_layout(type, &block_elems, &block_bytes);
        if (block_elems > 0) {
            uint64_t row = n_dims > 0 ? dims[0] : 1;
            if (row % block_elems != 0)
                return invalid(r,
                               "tensor '%s' has rows of %" PRIu64 " elements, not a whole "
                               "number of blocks",
                               name, row);
            uint64_t blocks = row / block_elems;
            for (uint32_t d = 1; d < n_dims; d++) {
                if (dims[d] != 0 && blocks > UINT64_MAX / dims[d])
                    return invalid(r, "tensor '%s' has absurd dimensions", name);
                blocks *= dims[d];
            }
            if (blocks > UINT64_MAX / block_bytes)
                return invalid(r, "tensor '%s' has absurd dimensions", name);
            bytes = blocks * block_bytes;
        }
        if (bytes > UINT64_MAX - offset)
            return invalid(r, "tensor '%s' has an absurd offset", name);
        if (offset + bytes > data_end) data_end = offset + bytes;
    }
    if (count == 0) return 0;
    uint64_t data_start = r->pos + (alignment - r->pos % alignment) % alignment;
    if (data_start > r->size || data_end > r->size - data_start)
        return invalid(r,
                       "truncated: the tensor data needs %" PRIu64 " bytes but the file ends "
                       "at byte %" PRIu64 " (an incomplete download?)",
                       data_start + data_end, r->size);
    /* The header and the size must agree both ways: the data ends at the
     * end of the file, give or take the alignment padding. */
    if (r->size - data_start - data_end > alignment)
        return invalid(r,
                       "the tensor data ends at byte %" PRIu64 " but the file goes on to byte "
                       "%" PRIu64 " (its header does not describe it)",
                       data_start + data_end, r->size);
    return 0;
}

/* Keeps the metadata values the backend reports; skips the others. */
static int read_metadata(reader_t *r, cm_gguf_info_t *out, uint64_t *alignment)
{
    context_candidate_t ctx[MAX_CONTEXT_CANDIDATES];
    size_t n_ctx = 0;
    char key[128], shown[64], what[128];

    for (uint64_t i = 0; i < out->kv_count; i++) {
        uint64_t key_len;
        snprintf(what, sizeof(what), "the key of metadata pair %" PRIu64, i);
        int rc = read_string(r, key, sizeof(key), &key_len, what);
        if (rc != 0) return rc;
        printable(key, strlen(key), shown, sizeof(shown));
        if (key_len >= sizeof(key)) key[0] = '\0'; /* too long to be one we keep */
        uint32_t type;
        snprintf(what, sizeof(what), "the type of '%s'", shown);
        if ((rc = read_u32(r, &type, what)) != 0) return rc;
        if (type_size(type) < 0)
            return invalid(r, "unknown value type %" PRIu32 " for '%s'", type, shown);
        snprintf(what, sizeof(what), "the value of '%s'", shown);

        char *text = NULL;
        size_t text_len = 0;
        if (strcmp(key, "general.architecture") == 0) {
            text = out->architecture;
            text_len = sizeof(out->architecture);
        } else if (strcmp(key, "general.name") == 0) {
            text = out->name;
            text_len = sizeof(out->name);
        } else if (strcmp(key, "general.size_label") == 0) {
            text = out->size_label;
            text_len = sizeof(out->size_label);
        }
        const char *suffix = ".context_length";
        size_t klen = strlen(key), slen = strlen(suffix);
        int is_ctx = klen > slen && klen - slen < sizeof(ctx[0].arch) &&
                     strcmp(key + klen - slen, suffix) == 0;
        int64_t v;
        int ok;

        if (text != NULL && type == T_STRING) {
            rc = read_string(r, text, text_len, NULL, what);
        } else if (strcmp(key, "general.file_type") == 0) {
            rc = read_integer(r, type, &v, &ok, what);
            if (rc == 0 && ok) out->file_type = v;
        } else if (strcmp(key, "general.parameter_count") == 0) {
            rc = read_integer(r, type, &v, &ok, what);
            if (rc == 0 && ok && v > 0) out->parameter_count = v;
        } else if (strcmp(key, "general.alignment") == 0) {
            rc = read_integer(r, type, &v, &ok, what);
            if (rc == 0 && ok) {
                if (v <= 0 || v > (1 << 30) || (v & (v - 1)) != 0)
                    return invalid(r, "general.alignment %" PRId64 " is not a power of two", v);
                *alignment = (uint64_t)v;
            }
        } else if (is_ctx) {
            rc = read_integer(r, type, &v, &ok, what);
            if (rc == 0 && ok && n_ctx < MAX_CONTEXT_CANDIDATES) {
                memcpy(ctx[n_ctx].arch, key, klen - slen);
                ctx[n_ctx].arch[klen - slen] = '\0';
                ctx[n_ctx++].value = v;
            }
        } else {
            rc = skip_value(r, type, 0, what);
        }
        if (rc != 0) return rc;
    }
    for (size_t k = 0; k < n_ctx; k++) {
        if (strcmp(ctx[k].arch, out->architecture) == 0) {
            out->context_length = ctx[k].value;
            break;
        }
    }
    return 0;
}

static void describe_magic(const unsigned char *m, char *out, size_t outlen)
{
    size_t k = 0;
    for (int i = 0; i < 4 && k + 5 < outlen; i++) {
        if (m[i] >= 0x20 && m[i] < 0x7F && m[i] != '"' && m[i] != '\\')
            out[k++] = (char)m[i];
        else
            k += (size_t)snprintf(out + k, outlen - k, "\\x%02x", m[i]);
    }
    out[k] = '\0';
}

static int read_header(reader_t *r, cm_gguf_info_t *out)
{
    unsigned char magic[4];
    char shown[24];
    if (r->size == 0) return invalid(r, "not a GGUF file (empty)");
    if (r->size < 4) return invalid(r, "not a GGUF file (%" PRIu64 " bytes)", r->size);
    int rc = read_bytes(r, magic, 4, "the magic");
    if (rc != 0) return rc;
    if (memcmp(magic, "GGUF", 4) != 0) {
        describe_magic(magic, shown, sizeof(shown));
        return invalid(r, "not a GGUF file (magic \"%s\")", shown);
    }
    if ((rc = read_u32(r, &out->version, "the version")) != 0) return rc;
    uint32_t v = out->version;
    uint32_t swapped = (v >> 24) | ((v >> 8) & 0xFF00) | ((v << 8) & 0xFF0000) | (v << 24);
    if (v == 1) return invalid(r, "unsupported GGUF version 1");
    if (v != 2 && v != 3) {
        if (swapped >= 1 && swapped <= 3)
            return invalid(r, "big-endian GGUF file (version %" PRIu32 "), not supported", swapped);
        return invalid(r, "unknown GGUF version %" PRIu32, v);
    }
    if ((rc = read_u64(r, &out->tensor_count, "the tensor count")) != 0) return rc;
    if ((rc = read_u64(r, &out->kv_count, "the metadata count")) != 0) return rc;
    if (out->kv_count > MAX_KV_COUNT)
        return invalid(r, "absurd metadata count %" PRIu64, out->kv_count);
    if (out->tensor_count > MAX_TENSOR_COUNT)
        return invalid(r, "absurd tensor count %" PRIu64, out->tensor_count);
    return 0;
}

int cm_gguf_read(const char *path, cm_gguf_info_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->file_type = -1;
    out->context_length = -1;
    out->parameter_count = -1;
    if (errlen > 0) err[0] = '\0';

    struct stat st;
    int fd = cm_open_regular(path, &st);
    if (fd < 0 && errno == EISDIR) {
        snprintf(err, errlen, "%s: is a directory", path);
        return EISDIR;
    }
    if (fd < 0 && errno == CM_ENOTREG) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return CM_GGUF_INVALID;
    }
    if (fd < 0) return os_error(err, errlen, path, errno);
    reader_t *r = malloc(sizeof(*r));
    if (r == NULL) {
        close(fd);
        return os_error(err, errlen, path, ENOMEM);
    }
    r->fd = fd;
    r->path = path;
    r->size = out->size = (uint64_t)st.st_size;
    r->pos = r->buf_off = 0;
    r->buf_len = 0;
    r->err = err;
    r->errlen = errlen;

    uint64_t alignment = DEFAULT_ALIGNMENT;
    int rc = read_header(r, out);
    if (rc == 0) rc = read_metadata(r, out, &alignment);
    if (rc == 0) rc = check_tensors(r, out->tensor_count, alignment);
    if (rc == 0 && out->file_type >= 0)
        cm_gguf_file_type_name(out->file_type, out->quantization, sizeof(out->quantization));
    close(fd);
    free(r);
    return rc;
}
