/*
 * The GGUF header reader (src/gguf.c): the facts it extracts from valid
 * files, a named verdict for every kind of broken file, and a fuzz-style pass
 * (every truncation of a valid file, 2000 random mutations with a fixed seed)
 * that must never crash and never accept a truncated file.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../fixtures/gguf_writer.h"
#include "cmtest.h"
#include "gguf.h"

static char *dir;

static int setup(void **state)
{
    (void)state;
    dir = cmt_tempdir();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cmt_rmtree(dir);
    free(dir);
    return 0;
}

static char *save(const char *name, const void *data, size_t len)
{
    char *path = cmt_path(dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    if (len > 0) assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
    return path;
}

static void put_kv_typed(gguf_writer *w, const char *key, uint32_t type, const void *value,
                         size_t size)
{
    gguf_put_string(w, key);
    gguf_put_u32(w, type);
    gguf_put_bytes(w, value, size);
}

/* One tensor info: a name, 2 dims, a type and an offset. */
static void put_tensor(gguf_writer *w, const char *name, uint64_t d0, uint64_t d1, uint32_t type,
                       uint64_t offset)
{
    gguf_put_string(w, name);
    gguf_put_u32(w, 2);
    gguf_put_u64(w, d0);
    gguf_put_u64(w, d1);
    gguf_put_u32(w, type);
    gguf_put_u64(w, offset);
}

static void pad_and_data(gguf_writer *w, size_t data_bytes)
{
    static const uint8_t zeros[4096];
    gguf_put_bytes(w, zeros, (32 - w->len % 32) % 32);
    gguf_put_bytes(w, zeros, data_bytes);
}

/* A model using every metadata value type: the context length comes before
 * the architecture, and the architecture of a second model family is there
 * too, to check that the right one is picked. */
static gguf_writer rich_model(uint32_t version)
{
    static const char *const tokens[] = {"<s>", "</s>", "hello", ""};
    gguf_writer w = {.version = version};
    gguf_put_header(&w, 2, 16);
    gguf_put_kv_u32(&w, "qwen2.context_length", 32768);
    gguf_put_kv_u64(&w, "llama.context_length", 131072);
    gguf_put_kv_string(&w, "general.architecture", "llama");
    gguf_put_kv_string(&w, "general.name", "Rich Test");
    gguf_put_kv_string(&w, "general.size_label", "8B");
    int32_t ft = 15;
    put_kv_typed(&w, "general.file_type", 5 /* i32 */, &ft, 4);
    uint8_t u8 = 7;
    put_kv_typed(&w, "x.u8", 0, &u8, 1);
    put_kv_typed(&w, "x.i8", 1, &u8, 1);
    uint16_t u16 = 512;
    put_kv_typed(&w, "x.u16", 2, &u16, 2);
    put_kv_typed(&w, "x.i16", 3, &u16, 2);
    float f = 0.5f;
    put_kv_typed(&w, "x.f32", 6, &f, 4);
    uint8_t yes = 1;
    put_kv_typed(&w, "x.bool", 7, &yes, 1);
    double d = 1e-5;
    put_kv_typed(&w, "x.f64", 12, &d, 8);
    put_kv_typed(&w, "x.i64", 11, &d, 8);
    gguf_put_kv_strings(&w, "tokenizer.ggml.tokens", tokens, 4);
    /* An array of two arrays of three u32. */
    gguf_put_string(&w, "x.nested");
    gguf_put_u32(&w, 9);
    gguf_put_u32(&w, 9);
    gguf_put_u64(&w, 2);
    for (int i = 0; i < 2; i++) {
        gguf_put_u32(&w, 4);
        gguf_put_u64(&w, 3);
        for (uint32_t k = 0; k < 3; k++)
            gguf_put_u32(&w, k);
    }
    put_tensor(&w, "token_embd.weight", 32, 2, 8 /* Q8_0 */, 0); /* 2 blocks of 34 bytes */
    put_tensor(&w, "output.weight", 4, 3, 0 /* F32 */, 96);      /* 48 bytes */
    pad_and_data(&w, 96 + 48);
    return w;
}

/* The small model that fixtures/make_gguf.c writes as valid-v3.gguf. */
static gguf_writer tiny_model(uint32_t version)
{
    static const char *const tokens[] = {"<s>", "</s>", "hello"};
    gguf_writer w = {.version = version};
    gguf_put_header(&w, 1, 7);
    gguf_put_kv_string(&w, "general.architecture", "llama");
    gguf_put_kv_string(&w, "general.name", "Tiny Test");
    gguf_put_kv_string(&w, "general.size_label", "1B");
    gguf_put_kv_u32(&w, "general.file_type", 7);
    gguf_put_kv_u32(&w, "llama.context_length", 4096);
    gguf_put_kv_strings(&w, "tokenizer.ggml.tokens", tokens, 3);
    gguf_put_kv_u64(&w, "general.parameter_count", 1235814400u);
    put_tensor(&w, "token_embd.weight", 4, 3, 0, 0);
    pad_and_data(&w, 48);
    return w;
}

static int read_file_verdict(const char *path, cm_gguf_info_t *info, char *err, size_t errlen)
{
    memset(err, 0x5A, errlen); /* the reader must write a terminated message */
    err[errlen - 1] = '\0';
    return cm_gguf_read(path, info, err, errlen);
}

static void assert_verdict(const char *name, const void *data, size_t len, int expected_rc,
                           const char *msg_part)
{
    char *path = save(name, data, len);
    cm_gguf_info_t info;
    char err[512];
    int rc = read_file_verdict(path, &info, err, sizeof(err));
    if (rc != expected_rc || strstr(err, msg_part) == NULL) {
        print_error("%s: rc %d (want %d), message '%s' (want '%s')\n", name, rc, expected_rc, err,
                    msg_part);
        fail();
    }
    assert_true(strncmp(err, path, strlen(path)) == 0);
    free(path);
}

/* Sparse files: 16 GiB that take a few KiB of disk.  A header that claims
 * 2^30 empty strings over the zeros made the reader read 8 GiB of them
 * (minutes per model); it stops at the 32 MiB header bound.  A file longer
 * than its header says is not a model as written either. */
static void test_sparse_and_oversized_files(void **state)
{
    (void)state;
    const uint64_t huge = (uint64_t)16 << 30;
    gguf_writer w = {.version = 3};
    gguf_put_header(&w, 0, 1);
    gguf_put_string(&w, "tokenizer.ggml.tokens");
    gguf_put_u32(&w, 9); /* array */
    gguf_put_u32(&w, 8); /* of strings */
    gguf_put_u64(&w, (uint64_t)1 << 30);
    char *path = save("sparse-strings.gguf", w.data, w.len);
    free(w.data);
    assert_int_equal(truncate(path, (off_t)huge), 0);
    cm_gguf_info_t info;
    char err[512];
    int rc = read_file_verdict(path, &info, err, sizeof err);
    free(path);
    /* The bound, not the file's end, stopped it (the time: bench/). */
    if (rc != CM_GGUF_INVALID || strstr(err, "metadata goes on past 32 MiB") == NULL) {
        print_error("sparse file: rc %d, '%s'\n", rc, err);
        fail();
    }

    /* A valid tiny model with 16 GiB of (sparse) zeros after its data. */
    w = tiny_model(3);
    path = save("oversized.gguf", w.data, w.len);
    free(w.data);
    assert_int_equal(truncate(path, (off_t)huge), 0);
    rc = read_file_verdict(path, &info, err, sizeof err);
    free(path);
    if (rc != CM_GGUF_INVALID || strstr(err, "its header does not describe it") == NULL) {
        print_error("oversized file: rc %d, '%s'\n", rc, err);
        fail();
    }
}

static void test_valid_files(void **state)
{
    (void)state;
    for (uint32_t version = 2; version <= 3; version++) {
        gguf_writer w = tiny_model(version);
        char *path = save("tiny.gguf", w.data, w.len);
        cm_gguf_info_t info;
        char err[512];
        assert_int_equal(cm_gguf_read(path, &info, err, sizeof(err)), 0);
        assert_int_equal(info.version, version);
        assert_int_equal(info.tensor_count, 1);
        assert_int_equal(info.kv_count, 7);
        assert_int_equal(info.size, w.len);
        assert_string_equal(info.architecture, "llama");
        assert_string_equal(info.name, "Tiny Test");
        assert_string_equal(info.size_label, "1B");
        assert_int_equal(info.file_type, 7);
        assert_string_equal(info.quantization, "Q8_0");
        assert_int_equal(info.context_length, 4096);
        free(path);
        free(w.data);
    }

    gguf_writer w = rich_model(3);
    char *path = save("rich.gguf", w.data, w.len);
    cm_gguf_info_t info;
    char err[512];
    int rc = cm_gguf_read(path, &info, err, sizeof(err));
    if (rc != 0) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(info.kv_count, 16);
    assert_int_equal(info.tensor_count, 2);
    assert_string_equal(info.name, "Rich Test");
    assert_string_equal(info.quantization, "Q4_K_M");
    assert_int_equal(info.context_length, 131072);
    free(path);
    free(w.data);

    /* Absent metadata stays absent. */
    gguf_writer bare = {.version = 3};
    gguf_put_header(&bare, 0, 0);
    path = save("bare.gguf", bare.data, bare.len);
    assert_int_equal(cm_gguf_read(path, &info, err, sizeof(err)), 0);
    assert_string_equal(info.architecture, "");
    assert_int_equal(info.file_type, -1);
    assert_string_equal(info.quantization, "");
    assert_int_equal(info.context_length, -1);
    free(path);
    free(bare.data);
}

/* A "<arch>.context_length" key whose <arch> is longer than any architecture
 * the reader keeps (63 bytes) can never be the model's: it must not take one
 * of the few candidate slots (nor be copied into one, which would overrun
 * it), so the real key after eight such keys still counts. */
static void test_overlong_context_keys_take_no_slot(void **state)
{
    (void)state;
    char key[128];
    memset(key, 'a', 70);
    strcpy(key + 70, ".context_length");
    gguf_writer w = {.version = 3};
    gguf_put_header(&w, 0, 10);
    for (int i = 0; i < 8; i++) {
        key[0] = (char)('a' + i); /* eight different keys */
        gguf_put_kv_u32(&w, key, 111);
    }
    gguf_put_kv_u32(&w, "llama.context_length", 4096);
    gguf_put_kv_string(&w, "general.architecture", "llama");
    char *path = save("long-keys.gguf", w.data, w.len);
    cm_gguf_info_t info;
    char err[512];
    int rc = cm_gguf_read(path, &info, err, sizeof(err));
    if (rc != 0) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(info.context_length, 4096);
    free(path);
    free(w.data);
}

static void test_file_type_names(void **state)
{
    (void)state;
    char buf[32];
    static const struct {
        int64_t type;
        const char *name;
    } cases[] = {{0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},
                 {8, "Q5_0"},    {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"},
                 {13, "Q3_K_L"}, {14, "Q4_K_S"}, {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"},
                 {18, "Q6_K"},   {30, "IQ4_XS"}, {32, "BF16"},   {4, "type 4"},  {99, "type 99"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_string_equal(cm_gguf_file_type_name(cases[i].type, buf, sizeof(buf)), cases[i].name);
}

static void test_broken_files_are_named(void **state)
{
    (void)state;
    gguf_writer w = tiny_model(3);

    assert_verdict("empty.gguf", "", 0, CM_GGUF_INVALID, "not a GGUF file (empty)");
    assert_verdict("short.gguf", "GG", 2, CM_GGUF_INVALID, "not a GGUF file (2 bytes)");
    assert_verdict("zip.gguf", "PK\x03\x04rest", 8, CM_GGUF_INVALID,
                   "not a GGUF file (magic \"PK\\x03\\x04\")");

    gguf_writer v = tiny_model(1);
    assert_verdict("v1.gguf", v.data, v.len, CM_GGUF_INVALID, "unsupported GGUF version 1");
    free(v.data);
    uint8_t copy[4096];
    memcpy(copy, w.data, w.len);
    copy[4] = 7;
    assert_verdict("v7.gguf", copy, w.len, CM_GGUF_INVALID, "unknown GGUF version 7");
    copy[4] = 0;
    copy[7] = 3;
    assert_verdict("be.gguf", copy, w.len, CM_GGUF_INVALID, "big-endian GGUF file (version 3)");

    assert_verdict("cut.gguf", w.data, 20, CM_GGUF_INVALID,
                   "truncated at byte 20 while reading the metadata count");
    assert_verdict("cut-data.gguf", w.data, w.len - 1, CM_GGUF_INVALID,
                   "(an incomplete download?)");

    gguf_writer count = {.version = 3};
    gguf_put_header(&count, 0, (uint64_t)1 << 60);
    assert_verdict("count.gguf", count.data, count.len, CM_GGUF_INVALID,
                   "absurd metadata count 1152921504606846976");
    free(count.data);

    gguf_writer tensors = {.version = 3};
    gguf_put_header(&tensors, (uint64_t)1 << 40, 0);
    assert_verdict("tensors.gguf", tensors.data, tensors.len, CM_GGUF_INVALID,
                   "absurd tensor count 1099511627776");
    free(tensors.data);

    gguf_writer str = {.version = 3};
    gguf_put_header(&str, 0, 1);
    gguf_put_u64(&str, (uint64_t)1 << 40);
    gguf_put_bytes(&str, "general.architecture", 20);
    assert_verdict("string.gguf", str.data, str.len, CM_GGUF_INVALID,
                   "string length 1099511627776 exceeds the file");
    free(str.data);

    gguf_writer arr = {.version = 3};
    gguf_put_header(&arr, 0, 1);
    gguf_put_string(&arr, "tokenizer.ggml.tokens");
    gguf_put_u32(&arr, 9);
    gguf_put_u32(&arr, 8);
    gguf_put_u64(&arr, (uint64_t)1 << 62);
    assert_verdict("array.gguf", arr.data, arr.len, CM_GGUF_INVALID,
                   "array of 4611686018427387904 elements exceeds the file");
    free(arr.data);

    gguf_writer type = {.version = 3};
    gguf_put_header(&type, 0, 1);
    gguf_put_string(&type, "x.y");
    gguf_put_u32(&type, 13);
    gguf_put_u32(&type, 0);
    assert_verdict("type.gguf", type.data, type.len, CM_GGUF_INVALID,
                   "unknown value type 13 for 'x.y'");
    free(type.data);

    gguf_writer deep = {.version = 3};
    gguf_put_header(&deep, 0, 1);
    gguf_put_string(&deep, "x.deep");
    gguf_put_u32(&deep, 9);
    for (int i = 0; i < 10; i++) {
        gguf_put_u32(&deep, 9);
        gguf_put_u64(&deep, 1);
    }
    gguf_put_u32(&deep, 4);
    gguf_put_u64(&deep, 0);
    gguf_put_bytes(&deep, "padding padding padding padding", 32);
    assert_verdict("deep.gguf", deep.data, deep.len, CM_GGUF_INVALID,
                   "arrays nested too deeply in the value of 'x.deep'");
    free(deep.data);

    gguf_writer align = {.version = 3};
    gguf_put_header(&align, 0, 1);
    gguf_put_kv_u32(&align, "general.alignment", 24);
    assert_verdict("align.gguf", align.data, align.len, CM_GGUF_INVALID,
                   "general.alignment 24 is not a power of two");
    free(align.data);

    gguf_writer dims = {.version = 3};
    gguf_put_header(&dims, 1, 0);
    gguf_put_string(&dims, "t");
    gguf_put_u32(&dims, 5);
    for (int i = 0; i < 5; i++)
        gguf_put_u64(&dims, 1);
    gguf_put_u32(&dims, 0);
    gguf_put_u64(&dims, 0);
    pad_and_data(&dims, 64);
    assert_verdict("dims.gguf", dims.data, dims.len, CM_GGUF_INVALID,
                   "tensor 't' has 5 dimensions");
    free(dims.data);

    gguf_writer rows = {.version = 3};
    gguf_put_header(&rows, 1, 0);
    put_tensor(&rows, "q", 33, 1, 2 /* Q4_0 */, 0);
    pad_and_data(&rows, 64);
    assert_verdict("rows.gguf", rows.data, rows.len, CM_GGUF_INVALID,
                   "tensor 'q' has rows of 33 elements");
    free(rows.data);

    gguf_writer mis = {.version = 3};
    gguf_put_header(&mis, 1, 0);
    put_tensor(&mis, "m", 4, 1, 0, 3);
    pad_and_data(&mis, 64);
    assert_verdict("misaligned.gguf", mis.data, mis.len, CM_GGUF_INVALID,
                   "tensor 'm' is not aligned to 32 bytes");
    free(mis.data);

    cm_gguf_info_t info;
    char err[512];
    assert_int_equal(cm_gguf_read(dir, &info, err, sizeof(err)), EISDIR);
    assert_non_null(strstr(err, "is a directory"));
    char *missing = cmt_path(dir, "missing.gguf");
    assert_int_equal(cm_gguf_read(missing, &info, err, sizeof(err)), ENOENT);
    assert_non_null(strstr(err, "No such file or directory"));
    free(missing);
    char *fifo = cmt_path(dir, "fifo.gguf");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(cm_gguf_read(fifo, &info, err, sizeof(err)), CM_GGUF_INVALID);
    assert_non_null(strstr(err, "not a regular file"));
    free(fifo);
    free(w.data);
}

/* The samples make-gguf writes (when the fixture program is built). */
static void test_fixture_samples(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int rc;
        const char *msg;
    } samples[] = {
        {"gguf/valid-v3.gguf", 0, ""},
        {"gguf/valid-v2.gguf", 0, ""},
        {"gguf/v1.gguf", CM_GGUF_INVALID, "unsupported GGUF version 1"},
        {"gguf/truncated.gguf", CM_GGUF_INVALID, "truncated at byte"},
        {"gguf/wrong-magic.gguf", CM_GGUF_INVALID, "not a GGUF file (magic \"GGML\")"},
        {"gguf/absurd-count.gguf", CM_GGUF_INVALID, "absurd metadata count 1152921504606846976"},
        {"gguf/absurd-string.gguf", CM_GGUF_INVALID,
         "string length 1099511627776 exceeds the file"},
        {"gguf/empty.gguf", CM_GGUF_INVALID, "not a GGUF file (empty)"},
    };
    char *probe = cmt_fixture("gguf/valid-v3.gguf");
    int present = access(probe, F_OK) == 0;
    free(probe);
    if (!present) {
        print_message("fixtures/gguf not built: samples skipped\n");
        skip();
    }
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        char *path = cmt_fixture(samples[i].file);
        cm_gguf_info_t info;
        char err[512];
        int rc = read_file_verdict(path, &info, err, sizeof(err));
        if (rc != samples[i].rc || (rc != 0 && strstr(err, samples[i].msg) == NULL)) {
            print_error("%s: rc %d, '%s'\n", samples[i].file, rc, err);
            fail();
        }
        if (rc == 0) {
            assert_string_equal(info.architecture, "llama");
            assert_string_equal(info.name, "Tiny Test");
            assert_string_equal(info.quantization, "Q8_0");
            assert_int_equal(info.context_length, 4096);
        }
        free(path);
    }
}

/* Every proper prefix of a valid file is refused with a message. */
static void test_every_truncation_is_refused(void **state)
{
    (void)state;
    gguf_writer w = rich_model(3);
    char *path = cmt_path(dir, "prefix.gguf");
    for (size_t len = 0; len < w.len; len++) {
        free(save("prefix.gguf", w.data, len));
        cm_gguf_info_t info;
        char err[512];
        int rc = read_file_verdict(path, &info, err, sizeof(err));
        if (rc != CM_GGUF_INVALID || strlen(err) <= strlen(path) + 2) {
            print_error("prefix of %zu bytes: rc %d '%s'\n", len, rc, err);
            fail();
        }
    }
    free(path);
    free(w.data);
}

/* A small deterministic generator, so failures reproduce. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_random_mutations_never_crash(void **state)
{
    (void)state;
    gguf_writer w = rich_model(3);
    uint8_t *buf = malloc(w.len + 64);
    char *path = cmt_path(dir, "mutant.gguf");
    uint64_t seed = 0x9E3779B97F4A7C15u;
    int accepted = 0;
    for (int round = 0; round < 2000; round++) {
        size_t len = w.len;
        memcpy(buf, w.data, len);
        int edits = 1 + (int)(next_random(&seed) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(next_random(&seed) % len);
            switch (next_random(&seed) % 4) {
            case 0:
                buf[at] = (uint8_t)next_random(&seed);
                break;
            case 1:
                buf[at] ^= (uint8_t)(1u << (next_random(&seed) % 8));
                break;
            case 2: /* a huge little-endian length or count */
                for (size_t k = at; k < at + 8 && k < len; k++)
                    buf[k] = 0xFF;
                break;
            default:
                len = at + 1;
                break;
            }
        }
        free(save("mutant.gguf", buf, len));
        cm_gguf_info_t info;
        char err[512];
        int rc = read_file_verdict(path, &info, err, sizeof(err));
        assert_true(rc == 0 || rc == CM_GGUF_INVALID);
        if (rc == 0) {
            accepted++;
            assert_true(strlen(info.architecture) < sizeof(info.architecture));
            assert_true(strlen(info.name) < sizeof(info.name));
        } else {
            assert_true(strlen(err) > strlen(path) + 2);
        }
    }
    print_message("%d of 2000 mutants still read as valid\n", accepted);
    free(path);
    free(buf);
    free(w.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_files),
        cmocka_unit_test(test_overlong_context_keys_take_no_slot),
        cmocka_unit_test(test_file_type_names),
        cmocka_unit_test(test_broken_files_are_named),
        cmocka_unit_test(test_fixture_samples),
        cmocka_unit_test(test_every_truncation_is_refused),
        cmocka_unit_test(test_random_mutations_never_crash),
        cmocka_unit_test(test_sparse_and_oversized_files),
    };
    return cmocka_run_group_tests_name("gguf", tests, setup, teardown);
}
