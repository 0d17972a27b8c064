/*
 * make_gguf_seeds: writes the GGUF seeds of corpus/gguf/ that the fixture
 * samples (fixtures/make_gguf.c) do not cover: every value type, nested
 * arrays, general.alignment, a context length given before the
 * architecture, quantised tensors, and the same file with its tensor data
 * cut short (an incomplete download).
 *
 * usage: make_gguf_seeds OUTDIR   (built by tests/fuzz/CMakeLists.txt; the
 * seeds are checked in, so it only runs when they are to be changed)
 */
#include "gguf_writer.h"

#include <stdio.h>

enum {
    T_U8 = 0,
    T_I8,
    T_U16,
    T_I16,
    T_U32,
    T_I32,
    T_F32,
    T_BOOL,
    T_STRING,
    T_ARRAY,
    T_U64,
    T_I64,
    T_F64
};

static void save(const char *dir, const char *name, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *file = fopen(path, "wb");
    if (file == NULL || fwrite(data, 1, len, file) != len || fclose(file) != 0) {
        perror(path);
        exit(1);
    }
}

/* A key and the type of the value that follows. */
static void put_key(gguf_writer *w, const char *key, uint32_t type)
{
    gguf_put_string(w, key);
    gguf_put_u32(w, type);
}

static void put_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *dims,
                       uint32_t type, uint64_t offset)
{
    gguf_put_string(w, name);
    gguf_put_u32(w, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        gguf_put_u64(w, dims[d]);
    gguf_put_u32(w, type);
    gguf_put_u64(w, offset);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_gguf_seeds OUTDIR\n");
        return 2;
    }
    gguf_writer w = {.version = 3};
    gguf_put_header(&w, 2, 14);
    put_key(&w, "qwen2.context_length", T_I32); /* before the architecture */
    gguf_put_u32(&w, 32768);
    gguf_put_kv_string(&w, "general.architecture", "qwen2");
    put_key(&w, "general.alignment", T_U32);
    gguf_put_u32(&w, 64);
    put_key(&w, "general.file_type", T_I64);
    gguf_put_u64(&w, 15); /* Q4_K_M */
    put_key(&w, "x.u8", T_U8);
    gguf_put_bytes(&w, "\x01", 1);
    put_key(&w, "x.i8", T_I8);
    gguf_put_bytes(&w, "\xff", 1);
    put_key(&w, "x.u16", T_U16);
    gguf_put_bytes(&w, "\x01\x02", 2);
    put_key(&w, "x.i16", T_I16);
    gguf_put_bytes(&w, "\xfe\xff", 2);
    put_key(&w, "x.f32", T_F32);
    gguf_put_u32(&w, 0x3f800000u);
    put_key(&w, "x.bool", T_BOOL);
    gguf_put_bytes(&w, "\x01", 1);
    put_key(&w, "x.f64", T_F64);
    gguf_put_u64(&w, 0x3ff0000000000000u);
    put_key(&w, "general.size_label", T_STRING);
    gguf_put_string(&w, "0.5B");
    /* An array of two arrays of u8. */
    put_key(&w, "x.nested", T_ARRAY);
    gguf_put_u32(&w, T_ARRAY);
    gguf_put_u64(&w, 2);
    for (int i = 0; i < 2; i++) {
        gguf_put_u32(&w, T_U8);
        gguf_put_u64(&w, 3);
        gguf_put_bytes(&w, "abc", 3);
    }
    put_key(&w, "general.name", T_STRING);
    gguf_put_string(&w, "Seed");

    /* Q4_K (type 12): 256-element blocks of 144 bytes; then F16 (type 1). */
    const uint64_t q_dims[] = {256, 2}, h_dims[] = {8};
    put_tensor(&w, "blk.0.attn_q.weight", 2, q_dims, 12, 0);
    put_tensor(&w, "output_norm.weight", 1, h_dims, 1, 320);
    static const uint8_t zeros[400];
    gguf_put_bytes(&w, zeros, (64 - w.len % 64) % 64);
    size_t data_start = w.len;
    gguf_put_bytes(&w, zeros, 336);
    save(argv[1], "types-q4k.gguf", w.data, w.len);
    save(argv[1], "incomplete-download.gguf", w.data, data_start + 100);
    free(w.data);
    return 0;
}
