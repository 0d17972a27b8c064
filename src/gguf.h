/*
 * GGUF model headers: what the llamacpp backend reports about a model file
 * (architecture, name, size, quantisation, context length) and whether the
 * file is a GGUF file at all.
 *
 * Only the header and the metadata are read, with small buffered reads;
 * tensor data is never touched, so a 40 GB model costs a few kilobytes of
 * I/O.  Every count and length in the file is untrusted and checked against
 * the file's size before it is used.
 */
#ifndef CM_GGUF_H
#define CM_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* cm_gguf_read's result for a file that is not a valid GGUF file (OS errors
 * return their positive errno instead). */
#define CM_GGUF_INVALID (-1)

typedef struct cm_gguf_info {
    uint32_t version;        /* 2 or 3 */
    uint64_t tensor_count;   /* tensors the header announces */
    uint64_t kv_count;       /* metadata pairs */
    uint64_t size;           /* the file's size in bytes */
    char architecture[64];   /* general.architecture, "" when absent */
    char name[256];          /* general.name (cut to fit), "" when absent */
    char size_label[64];     /* general.size_label ("7B"), "" when absent */
    int64_t file_type;       /* general.file_type, -1 when absent */
    char quantization[32];   /* its name ("Q4_K_M", "type 99"), "" when absent */
    int64_t context_length;  /* <architecture>.context_length, -1 when absent */
    int64_t parameter_count; /* general.parameter_count, -1 when absent */
} cm_gguf_info_t;

/* Reads the header and metadata of the GGUF file at `path` into *out.
 * Returns 0; CM_GGUF_INVALID when the file is not a valid GGUF file of
 * version 2 or 3; or a positive errno when it cannot be read (EISDIR for a
 * directory).  On failure err receives "<path>: <why>", for example "not a
 * GGUF file (magic \"GGML\")", "unsupported GGUF version 1", "truncated at
 * byte N while reading <what>", "absurd metadata count N", "string length N
 * exceeds the file".  Never crashes, whatever the bytes. */
int cm_gguf_read(const char *path, cm_gguf_info_t *out, char *err, size_t errlen);

/* The name of a general.file_type value ("Q4_K_M"; "type N" for values
 * without a name) written into buf.  Returns buf. */
const char *cm_gguf_file_type_name(int64_t file_type, char *buf, size_t len);

#endif
