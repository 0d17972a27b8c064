/*
 * File writing shared by the config writer (config.c) and cm.fs (lua_fs.c):
 * whole writes, and replacing a file atomically.
 */
#ifndef CM_FSUTIL_H
#define CM_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Writes all len bytes to fd, across short writes and EINTR.  Returns 0, or
 * -1 with errno set. */
int cm_write_all(int fd, const void *data, size_t len);

/* Replaces the file `target` by data, atomically: the bytes go to a hidden
 * temp file beside it (".<name>.tmp.<pid>", created O_EXCL; a leftover of
 * that name from a crashed process is replaced), which gets `mode` (and the
 * owner uid/gid unless uid is (uid_t)-1), is fsynced when `sync`, and is
 * renamed over target; with `sync` the directory is fsynced too.  The file
 * is always either the old or the new content.  Returns 0, or -1 with errno
 * set and `what` naming the failed step ("creating /dir/.f.tmp.42"); target
 * is then untouched and the temp file gone. */
int cm_replace_file(const char *target, const void *data, size_t len, mode_t mode, uid_t uid,
                    gid_t gid, int sync, char *what, size_t whatlen);

#endif
