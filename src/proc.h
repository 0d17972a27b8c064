/*
 * Process facts read from /proc, signal names, PATH lookup and pidfds: the
 * plain-C half of cm.proc (no Lua, no libuv), so that the Lua bindings in
 * lua_proc.c stay about the event loop and the tests can check the parsing
 * directly.
 *
 * Zombies count as dead everywhere in this file: a zombie holds a PID but
 * runs nothing, and for a supervisor "is the app still there" means "does
 * any of its code still run".
 */
#ifndef CM_PROC_H
#define CM_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* The fields of /proc/PID/stat that the manager uses. */
typedef struct cm_proc_stat {
    pid_t pid;
    pid_t ppid;
    pid_t pgid;
    pid_t sid;
    char state;                    /* R S D Z T t X I ... */
    char name[64];                 /* comm: up to 15 bytes, may hold spaces and ')' */
    unsigned long long start_time; /* field 22: clock ticks after boot */
} cm_proc_stat_t;

/* Parses one stat line (the content of /proc/PID/stat).  The comm field is
 * delimited by the FIRST '(' and the LAST ')', since comm itself may contain
 * both.  Returns 0, or -1 when the line is malformed. */
int cm_proc_parse_stat(const char *line, cm_proc_stat_t *st);

/* Reads and parses /proc/PID/stat.  Returns 0, or -errno (-ENOENT when the
 * process does not exist). */
int cm_proc_read_stat(pid_t pid, cm_proc_stat_t *st);

/* True when pid exists and is not a zombie (or dead, 'X'). */
int cm_proc_alive(pid_t pid);

/* The pid of a live (non-zombie) process whose process group is pgid, or 0
 * when there is none: the lowest among our descendants when one is there,
 * else the lowest on the machine.  kill(-pgid, 0) alone cannot answer this
 * (it succeeds while only zombies are left in the group), but its ESRCH
 * spares the scan when nobody is left. */
pid_t cm_proc_group_lowest(pid_t pgid);

/* True when some live process is in process group pgid. */
int cm_proc_group_alive(pid_t pgid);

/* Reads /proc/PID/<what> whole ("cmdline", "environ", "status").  Returns a
 * malloc'd buffer (NUL-terminated one byte past *len) or NULL with errno
 * set.  These files are NUL-separated lists, so use *len, not strlen. */
char *cm_proc_read_file(pid_t pid, const char *what, size_t *len);

/* The real uid of pid (the "Uid:" line of /proc/PID/status); 0 on success,
 * -errno on failure. */
int cm_proc_uid(pid_t pid, uid_t *uid);

/* True when the initial environment of pid has exactly "name=value".  False
 * when it does not, when the process is gone, or when we may not read it
 * (another user's process): a marker we cannot see proves nothing. */
int cm_proc_has_marker(pid_t pid, const char *name, const char *value);

/* Calls fn(pid, arg) for every numeric entry of /proc, in directory order,
 * until fn returns non-zero (which is then returned).  Returns 0 after a
 * full scan, -errno when /proc cannot be opened. */
int cm_proc_foreach(int (*fn)(pid_t pid, void *arg), void *arg);

/* Calls fn(pid, arg) for every child of this process (all: and their
 * descendants, breadth first), read from /proc/PID/task/TID/children
 * without scanning /proc, until fn returns non-zero (which is returned).
 * Returns 0 after the walk, -errno when the children cannot be listed
 * (then nothing was called: scan with cm_proc_foreach instead). */
int cm_proc_foreach_descendant(int (*fn)(pid_t pid, void *arg), void *arg, int all);

/* The signal number for "TERM", "SIGTERM", "KILL", "HUP", "USR1", "USR2",
 * "INT", "STOP", "CONT", "QUIT", "ALRM" or "0"; -1 when unknown. */
int cm_proc_signal_number(const char *name);

/* Finds an executable regular file `name` (no '/') on the ':'-separated
 * `path` the way execvp would (an empty entry means the current directory;
 * relative entries are taken relative to `cwd` when it is given, since the
 * child resolves them after its chdir).  Writes the path into out and
 * returns 0, or returns -ENOENT (nothing found), -EACCES (found only files
 * we may not execute) or -ENAMETOOLONG. */
int cm_proc_find_program(const char *name, const char *path, const char *cwd, char *out,
                         size_t outsz);

/* pidfd_open(2) through syscall(2) (glibc 2.36 has no wrapper before it).
 * Returns the close-on-exec fd, or -1 with errno: ESRCH when the process is
 * gone, ENOSYS on kernels before 5.3. */
int cm_proc_pidfd_open(pid_t pid);

/* Tests set this to make cm_proc_pidfd_open fail with ENOSYS, so that the
 * fallback of the waits (a 10 ms re-check) runs on kernels with pidfds. */
extern int cm__proc_pidfd_disabled;

#endif
