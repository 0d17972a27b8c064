/*
 * File work shared by the config writer (config.c), the GGUF reader and
 * cm.* (lua_*.c): errno names, whole writes, and replacing a file
 * atomically.
 */
#ifndef CM_FSUTIL_H
#define CM_FSUTIL_H

#include <errno.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* The name of an errno value ("ENOENT"); the name of every errno glibc
 * knows, "error" otherwise.  Static string.  The one errno namer: every
 * "nil, msg, code" failure from a system call uses it for the code. */
const char *cm_errno_code(int err);

/* errno of cm_open_regular and cm_read_file for a path that exists but is
 * neither a regular file nor a directory (a FIFO, a socket, a device). */
#define CM_ENOTREG EINVAL

/* The one safe way to open a file to read: the open cannot block (a FIFO at
 * the path), and only a regular file is accepted (EISDIR for a directory,
 * CM_ENOTREG for anything else).  Fills *st when st is not NULL.  Returns
 * the descriptor (blocking again, close-on-exec), or -1 with errno set. */
int cm_open_regular(const char *path, struct stat *st);

/* The one whole-file reader, on top of cm_open_regular: at most `max` bytes
 * (EFBIG when the file holds more, whatever its size claims: /proc files
 * say 0).  Returns a malloc'd buffer with a NUL after the *len bytes, or
 * NULL with errno set. */
char *cm_read_file(const char *path, size_t max, size_t *len);

/* The one lock primitive: opens (creating it 0600) the lock file `path` and
 * tries once, without waiting, to flock it with `op` (LOCK_EX or LOCK_SH).
 * An existing lock file on a read-only directory or file system still
 * locks (opened read-only).  Returns the descriptor (closing it releases
 * the lock), or -1 with errno set: EWOULDBLOCK when another process holds
 * it, and then *fd_out (when not NULL) keeps the open descriptor so that
 * the caller can try again later with cm_flock_now. */
int cm_lock_now(const char *path, int op, int *fd_out);

/* One flock(fd, op | LOCK_NB) across EINTR: 0, or -1 with errno set. */
int cm_flock_now(int fd, int op);

/* Writes all len bytes to fd, across short writes and EINTR.  Returns 0, or
 * -1 with errno set. */
int cm_write_all(int fd, const void *data, size_t len);

/* Replaces the file `target` by data, atomically: the bytes go to a hidden
 * temp file beside it (".<name>.tmp.<pid>", created O_EXCL; a leftover of
 * that name from a crashed process is replaced), which gets `mode` without
 * its setuid, setgid and sticky bits (and the
 * owner uid/gid unless uid is (uid_t)-1), is fsynced when `sync`, and is
 * renamed over target; with `sync` the directory is fsynced too.  The file
 * is always either the old or the new content.  Returns 0, or -1 with errno
 * set and `what` naming the failed step ("creating /dir/.f.tmp.42"); target
 * is then untouched and the temp file gone. */
int cm_replace_file(const char *target, const void *data, size_t len, mode_t mode, uid_t uid,
                    gid_t gid, int sync, char *what, size_t whatlen);

#endif
