/*
 * fuzz_gguf: the GGUF header reader (src/gguf.c) on arbitrary bytes.
 *
 * cm_gguf_read takes a path, so each input is written to a memfd and read
 * back through /proc/self/fd/N: an ordinary regular file to open(2) and
 * fstat(2), with no disk I/O.  The reader promises never to crash whatever
 * the bytes; on top of that the target checks its contract (gguf.h):
 *  - the result is 0 or CM_GGUF_INVALID (an in-memory file has no OS errors);
 *  - a refusal comes with "<path>: <why>";
 *  - an accepted file has version 2 or 3, its real size, NUL-terminated
 *    strings, a quantisation name exactly when it has a file type, and no
 *    context length without an architecture;
 *  - a short error buffer is never overrun (a second read into a heap buffer
 *    of 1..48 bytes, so AddressSanitizer sees any overrun).
 */
#include "gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int input_fd = -1;
static char input_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    input_fd = memfd_create("fuzz_gguf", MFD_CLOEXEC);
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

static int terminated(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_input(data, size);

    cm_gguf_info_t info;
    char err[256];
    int rc = cm_gguf_read(input_path, &info, err, sizeof(err));
    if (rc != 0 && rc != CM_GGUF_INVALID) fprintf(stderr, "rc %d: %s\n", rc, err);
    CHECK(rc == 0 || rc == CM_GGUF_INVALID);
    if (rc == CM_GGUF_INVALID) {
        size_t n = strlen(input_path);
        CHECK(strncmp(err, input_path, n) == 0 && err[n] == ':' && err[n + 2] != '\0');
    } else {
        CHECK(err[0] == '\0');
        CHECK(info.version == 2 || info.version == 3);
        CHECK(info.size == size);
        CHECK(terminated(info.architecture, sizeof(info.architecture)));
        CHECK(terminated(info.name, sizeof(info.name)));
        CHECK(terminated(info.size_label, sizeof(info.size_label)));
        CHECK(terminated(info.quantization, sizeof(info.quantization)));
        CHECK((info.file_type >= 0) == (info.quantization[0] != '\0'));
        CHECK(info.architecture[0] != '\0' || info.context_length == -1);
    }

    /* The same read into a short message buffer gives the same verdict. */
    size_t short_len = 1 + (size > 0 ? data[size - 1] % 48 : 0);
    char *short_err = malloc(short_len);
    CHECK(short_err != NULL);
    cm_gguf_info_t again;
    CHECK(cm_gguf_read(input_path, &again, short_err, short_len) == rc);
    CHECK(strnlen(short_err, short_len) < short_len);
    free(short_err);
    return 0;
}
