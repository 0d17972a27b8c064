/*
 * Process facts from /proc, signal names, PATH lookup and pidfds (see
 * proc.h).  Everything here is synchronous and cheap: a /proc scan reads one
 * small file per process, a few hundred on a desktop.
 */
#include "proc.h"
#include "fsutil.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture */
#endif

/* /proc files (an environment, a cmdline) are read whole up to this size. */
#define PROC_FILE_MAX (16u * 1024 * 1024)

int cm_proc_parse_stat(const char *line, cm_proc_stat_t *st)
{
    /* "pid (comm) state ppid pgrp session ..." where comm is whatever the
     * process called itself: "a (b) c" and "x) y" are both valid, so the
     * comm ends at the LAST ')' of the line (no later field has one). */
    const char *open = strchr(line, '(');
    const char *close = strrchr(line, ')');
    if (open == NULL || close == NULL || close < open) return -1;

    memset(st, 0, sizeof *st);
    char *end;
    long pid = strtol(line, &end, 10);
    if (end == line || pid <= 0) return -1;
    st->pid = (pid_t)pid;

    size_t n = (size_t)(close - open - 1);
    if (n >= sizeof st->name) n = sizeof st->name - 1;
    memcpy(st->name, open + 1, n);
    st->name[n] = '\0';

    /* Fields after the comm, numbered as in proc(5): state is field 3. */
    const char *p = close + 1;
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ')
            p++;
        if (*p == '\0' || *p == '\n') return -1;
        switch (field) {
        case 3:
            st->state = *p;
            break;
        case 4:
            st->ppid = (pid_t)strtol(p, NULL, 10);
            break;
        case 5:
            st->pgid = (pid_t)strtol(p, NULL, 10);
            break;
        case 6:
            st->sid = (pid_t)strtol(p, NULL, 10);
            break;
        case 22:
            st->start_time = strtoull(p, NULL, 10);
            break;
        default:
            break;
        }
        while (*p != ' ' && *p != '\0' && *p != '\n')
            p++;
    }
    return 0;
}

int cm_proc_read_stat(pid_t pid, cm_proc_stat_t *st)
{
    char path[64], buf[1024];
    if (pid <= 0) return -ESRCH;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    int err = errno;
    close(fd);
    /* A process that died between open and read gives ESRCH or 0 bytes. */
    if (n < 0) return err == ESRCH ? -ENOENT : -err;
    if (n == 0) return -ENOENT;
    buf[n] = '\0';
    return cm_proc_parse_stat(buf, st) == 0 ? 0 : -EINVAL;
}

static int state_is_live(char state)
{
    return state != 'Z' && state != 'X' && state != 'x';
}

int cm_proc_alive(pid_t pid)
{
    cm_proc_stat_t st;
    return cm_proc_read_stat(pid, &st) == 0 && state_is_live(st.state);
}

typedef struct group_scan {
    pid_t pgid;
    pid_t lowest; /* 0 while none found */
} group_scan_t;

static int group_scan_visit(pid_t pid, void *arg)
{
    group_scan_t *g = arg;
    cm_proc_stat_t st;
    if (g->lowest != 0 && pid > g->lowest) return 0;
    if (cm_proc_read_stat(pid, &st) != 0) return 0;
    if (st.pgid == g->pgid && state_is_live(st.state)) g->lowest = pid;
    return 0;
}

pid_t cm_proc_group_lowest(pid_t pgid)
{
    group_scan_t g = {pgid, 0};
    if (pgid <= 0) return 0;
    /* No process at all in the group (the usual answer once an app is
     * over): one syscall, no scan of /proc. */
    if (kill(-pgid, 0) != 0 && errno == ESRCH) return 0;
    /* A group our children made is among our descendants (a subreaper keeps
     * them all): look there first, then everywhere. */
    if (cm_proc_foreach_descendant(group_scan_visit, &g, 1) == 0 && g.lowest != 0) return g.lowest;
    g.lowest = 0;
    cm_proc_foreach(group_scan_visit, &g);
    return g.lowest;
}

int cm_proc_group_alive(pid_t pgid)
{
    return cm_proc_group_lowest(pgid) != 0;
}

char *cm_proc_read_file(pid_t pid, const char *what, size_t *len)
{
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, what);
    return cm_read_file(path, PROC_FILE_MAX, len);
}

int cm_proc_uid(pid_t pid, uid_t *uid)
{
    size_t len;
    char *status = cm_proc_read_file(pid, "status", &len);
    if (status == NULL) return -errno;
    int rc = -EINVAL;
    for (char *line = status; line != NULL && *line != '\0';) {
        if (strncmp(line, "Uid:", 4) == 0) {
            *uid = (uid_t)strtoul(line + 4, NULL, 10);
            rc = 0;
            break;
        }
        line = strchr(line, '\n');
        if (line != NULL) line++;
    }
    free(status);
    return rc;
}

int cm_proc_has_marker(pid_t pid, const char *name, const char *value)
{
    if (pid <= 0) return 0;
    size_t len, nlen = strlen(name), vlen = strlen(value);
    char *env = cm_proc_read_file(pid, "environ", &len);
    if (env == NULL) return 0;
    int found = 0;
    /* Entries are "K=V\0"; compare whole entries so that a marker never
     * matches a prefix ("ID=ab" must not accept "ID=abc"). */
    for (size_t at = 0; at < len && !found;) {
        const char *entry = env + at;
        size_t elen = strnlen(entry, len - at);
        found = elen == nlen + 1 + vlen && memcmp(entry, name, nlen) == 0 && entry[nlen] == '=' &&
                memcmp(entry + nlen + 1, value, vlen) == 0;
        at += elen + 1;
    }
    free(env);
    return found;
}

int cm_proc_foreach(int (*fn)(pid_t pid, void *arg), void *arg)
{
    DIR *dir = opendir("/proc");
    if (dir == NULL) return -errno;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(dir)) != NULL) {
        const char *s = de->d_name;
        if (!isdigit((unsigned char)s[0])) continue;
        char *end;
        long pid = strtol(s, &end, 10);
        if (*end != '\0' || pid <= 0) continue;
        rc = fn((pid_t)pid, arg);
    }
    closedir(dir);
    return rc;
}

/* Appends the children of every thread of pid to *q.  0, or -errno when
 * pid's task directory or its first children file cannot be read (gone, or
 * a kernel without CONFIG_PROC_CHILDREN). */
static int add_children(pid_t pid, pid_t **q, size_t *n, size_t *cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    if (dir == NULL) return -errno;
    int rc = -ENOENT;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (!isdigit((unsigned char)de->d_name[0])) continue;
        char what[64];
        snprintf(what, sizeof what, "task/%.20s/children", de->d_name);
        size_t len;
        char *text = cm_proc_read_file(pid, what, &len);
        if (text == NULL) continue;
        rc = 0;
        for (char *p = text, *end; *p != '\0'; p = end) {
            long child = strtol(p, &end, 10);
            if (end == p) break;
            if (child <= 0) continue;
            if (*n == *cap) {
                size_t grown = *cap ? *cap * 2 : 64;
                pid_t *bigger = realloc(*q, grown * sizeof *bigger);
                if (bigger == NULL) {
                    free(text);
                    closedir(dir);
                    return -ENOMEM;
                }
                *q = bigger;
                *cap = grown;
            }
            (*q)[(*n)++] = (pid_t)child;
        }
        free(text);
    }
    closedir(dir);
    return rc;
}

int cm_proc_foreach_descendant(int (*fn)(pid_t pid, void *arg), void *arg, int all)
{
    pid_t *q = NULL;
    size_t n = 0, cap = 0;
    int rc = add_children(getpid(), &q, &n, &cap);
    /* A bound far above any real tree: /proc changes while it is read. */
    for (size_t at = 0; rc == 0 && at < n && at < 65536; at++) {
        rc = fn(q[at], arg);
        if (rc == 0 && all) add_children(q[at], &q, &n, &cap); /* gone meanwhile: fine */
    }
    free(q);
    return rc;
}

int cm_proc_signal_number(const char *name)
{
    static const struct {
        const char *name;
        int sig;
    } names[] = {
        {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"HUP", SIGHUP},   {"USR1", SIGUSR1},
        {"USR2", SIGUSR2}, {"INT", SIGINT},   {"STOP", SIGSTOP}, {"CONT", SIGCONT},
        {"QUIT", SIGQUIT}, {"ALRM", SIGALRM}, {"0", 0},
    };
    if (strncmp(name, "SIG", 3) == 0) name += 3;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0) return names[i].sig;
    return -1;
}

int cm_proc_find_program(const char *name, const char *path, const char *cwd, char *out,
                         size_t outsz)
{
    int rc = -ENOENT;
    size_t nlen = strlen(name);
    if (nlen == 0) return -ENOENT;
    for (const char *p = path;; p++) {
        const char *sep = strchr(p, ':');
        size_t dlen = sep != NULL ? (size_t)(sep - p) : strlen(p);
        int n;
        if (dlen == 0)
            n = cwd != NULL ? snprintf(out, outsz, "%s/%s", cwd, name)
                            : snprintf(out, outsz, "%s", name);
        else if (p[0] != '/' && cwd != NULL)
            n = snprintf(out, outsz, "%s/%.*s/%s", cwd, (int)dlen, p, name);
        else
            n = snprintf(out, outsz, "%.*s/%s", (int)dlen, p, name);
        if (n < 0 || (size_t)n >= outsz) {
            if (rc == -ENOENT) rc = -ENAMETOOLONG;
        } else {
            struct stat st;
            if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
                if (access(out, X_OK) == 0) {
                    /* "./name" keeps a current-directory hit a path, so the
                     * exec does not search again. */
                    if (dlen == 0 && cwd == NULL) {
                        if (nlen + 3 > outsz) return -ENAMETOOLONG;
                        snprintf(out, outsz, "./%s", name);
                    }
                    return 0;
                }
                rc = -EACCES; /* like execvp: remember it, keep looking */
            }
        }
        if (sep == NULL) break;
        p = sep;
    }
    return rc;
}

int cm__proc_pidfd_disabled = 0;

int cm_proc_pidfd_open(pid_t pid)
{
    if (cm__proc_pidfd_disabled) {
        errno = ENOSYS;
        return -1;
    }
    return (int)syscall(SYS_pidfd_open, (int)pid, 0);
}
