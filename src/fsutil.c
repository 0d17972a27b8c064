/*
 * File writing shared by the config writer and cm.fs (see fsutil.h).
 */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

const char *cm_errno_code(int err)
{
    const char *name = strerrorname_np(err);
    return name != NULL ? name : "error";
}

int cm_open_regular(const char *path, struct stat *st)
{
    struct stat own;
    if (st == NULL) st = &own;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return -1;
    int err = 0;
    if (fstat(fd, st) != 0)
        err = errno;
    else if (S_ISDIR(st->st_mode))
        err = EISDIR;
    else if (!S_ISREG(st->st_mode))
        err = CM_ENOTREG;
    else if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0)
        err = errno;
    if (err != 0) {
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

char *cm_read_file(const char *path, size_t max, size_t *len)
{
    struct stat st;
    int fd = cm_open_regular(path, &st);
    if (fd < 0) return NULL;
    /* Start from the size it claims (plus one byte, which proves EOF or
     * growth), never beyond max + 1 (which proves it too large). */
    size_t cap = st.st_size > 0 && (size_t)st.st_size < max ? (size_t)st.st_size + 1 : 4096;
    if (cap > max + 1) cap = max + 1;
    size_t used = 0;
    char *buf = malloc(cap + 1);
    int err = buf == NULL ? ENOMEM : 0;
    while (err == 0) {
        if (used == cap) {
            if (cap > max) {
                err = EFBIG;
                break;
            }
            size_t ncap = cap * 2 < max + 1 ? cap * 2 : max + 1;
            char *nbuf = realloc(buf, ncap + 1);
            if (nbuf == NULL) {
                err = ENOMEM;
                break;
            }
            buf = nbuf;
            cap = ncap;
        }
        ssize_t got = read(fd, buf + used, cap - used);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) err = errno;
        if (got <= 0) break;
        used += (size_t)got;
    }
    close(fd);
    if (err == 0 && used > max) err = EFBIG;
    if (err != 0) {
        free(buf);
        errno = err;
        return NULL;
    }
    buf[used] = '\0';
    *len = used;
    return buf;
}

int cm_flock_now(int fd, int op)
{
    int rc;
    do
        rc = flock(fd, op | LOCK_NB);
    while (rc != 0 && errno == EINTR);
    return rc;
}

int cm_lock_now(const char *path, int op, int *fd_out)
{
    if (fd_out != NULL) *fd_out = -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0 && (errno == EROFS || errno == EACCES || errno == EPERM)) {
        int first = errno;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 && errno == ENOENT) errno = first; /* the real reason */
    }
    if (fd < 0) return -1;
    if (cm_flock_now(fd, op) == 0) return fd;
    int e = errno;
    if (e == EWOULDBLOCK && fd_out != NULL) {
        *fd_out = fd;
    } else {
        close(fd);
    }
    errno = e;
    return -1;
}

int cm_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Creates the temp file, replacing a stale one of the same name: the name
 * carries our pid, so such a file is a leftover of a crashed earlier
 * process.  (A directory, or anything unlink refuses, stays: we fail.) */
static int create_temp(const char *tmp)
{
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY;
    int fd = open(tmp, flags, 0600);
    if (fd < 0 && errno == EEXIST) {
        if (unlink(tmp) == 0)
            fd = open(tmp, flags, 0600);
        else
            errno = EEXIST;
    }
    return fd;
}

int cm_replace_file(const char *target, const void *data, size_t len, mode_t mode, uid_t uid,
                    gid_t gid, int sync, char *what, size_t whatlen)
{
    const char *slash = strrchr(target, '/');
    size_t dlen = slash == NULL ? 0 : (slash == target ? 1 : (size_t)(slash - target));
    const char *base = slash == NULL ? target : slash + 1;
    char *dir = slash == NULL ? strdup(".") : strndup(target, dlen);
    size_t tlen = strlen(target) + 32;
    char *tmp = malloc(tlen);
    if (dir == NULL || tmp == NULL) {
        free(dir);
        free(tmp);
        snprintf(what, whatlen, "preparing");
        errno = ENOMEM;
        return -1;
    }
    snprintf(tmp, tlen, "%s%s.%s.tmp.%ld", slash == NULL ? "" : dir,
             slash == NULL || strcmp(dir, "/") == 0 ? "" : "/", base, (long)getpid());

    int rc = -1, created = 0;
    const char *step = "creating";
    int fd = create_temp(tmp);
    if (fd >= 0) {
        created = 1;
        step = "writing";
        if (cm_write_all(fd, data, len) == 0) {
            step = "setting the mode of";
            /* Never setuid, setgid or sticky, whatever the original had. */
            if (fchmod(fd, mode & 0777) == 0) {
                /* Keeping the owner matters when root saves a user's file; it
                 * may fail for an ordinary user, who is then the owner. */
                if (uid != (uid_t)-1 && fchown(fd, uid, gid) != 0) {
                }
                step = "syncing";
                if (!sync || fsync(fd) == 0) rc = 0;
            }
        }
        int e = errno;
        if (close(fd) != 0 && rc == 0) {
            e = errno;
            step = "closing";
            rc = -1;
        }
        errno = e;
    }
    if (rc == 0 && rename(tmp, target) != 0) {
        step = "renaming";
        rc = -1;
    }
    if (rc != 0) {
        int e = errno;
        snprintf(what, whatlen, "%s %s", step, tmp);
        if (created) unlink(tmp);
        errno = e;
    } else if (sync) {
        /* The rename is durable once the directory is: best effort, since
         * the new contents are in place whatever happens here. */
        int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd >= 0) {
            (void)fsync(dir_fd);
            close(dir_fd);
        }
    }
    free(tmp);
    free(dir);
    return rc;
}
