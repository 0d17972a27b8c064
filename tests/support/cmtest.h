/*
 * Test support shared by the cmocka suites: temporary directories, files,
 * running the real binary with a bounded wait, and running Lua snippets on a
 * fresh runtime.  Include <stdarg.h> <stddef.h> <setjmp.h> <cmocka.h> first.
 */
#ifndef CMTEST_H
#define CMTEST_H

#include <stddef.h>
#include <sys/types.h>

/* The value of a variable set by tests/CMakeLists.txt (fails the test if unset). */
const char *cmt_env(const char *name);

/* Path helpers: results are malloc'd, caller frees. */
char *cmt_path(const char *dir, const char *name);
char *cmt_fixture(const char *name); /* $CM_FIXTURES/name */
char *cmt_source(const char *rel);   /* $CM_SOURCE_DIR/rel */

/* A new empty directory under /tmp; cmt_rmtree removes it and all below. */
char *cmt_tempdir(void);
void cmt_rmtree(const char *path);

/* Whole-file helpers; cmt_read_file returns NULL when the file is missing. */
void cmt_write_file(const char *path, const char *data);
char *cmt_read_file(const char *path, size_t *len);

typedef struct cmt_result {
    int code;  /* exit code, or 128+signal, or -1 when it timed out */
    char *out; /* stdout, NUL-terminated */
    char *err; /* stderr, NUL-terminated */
    double ms; /* wall time */
} cmt_result_t;

/* Prints a long diagnostic to stderr whole (cmocka's print_error keeps
 * only the first 1024 bytes of a message). */
void cmt_print_long(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* assert_int_equal on a command's exit code that, when it fails, first
 * prints what the command said (so a failure in CI explains itself). */
#define assert_cmt_code(r, want)                                                            \
    do {                                                                                    \
        if ((r).code != (want))                                                             \
            cmt_print_long("the command exited %d, not %d; it said:\n%s\n%s\n", (r).code, \
                           (int)(want), (r).out ? (r).out : "", (r).err ? (r).err : "");   \
        assert_int_equal((r).code, (want));                                                 \
    } while (0)

/* Runs argv (argv[0] a path) with extra "K=V" environment entries (NULL
 * terminated, may be NULL), waits at most timeout_ms (then SIGKILLs the
 * child's group).  The child runs in its own process group. */
cmt_result_t cmt_run(const char *const argv[], const char *const env[], int timeout_ms);
/* The same from the directory cwd (NULL: the current one). */
cmt_result_t cmt_run_in(const char *cwd, const char *const argv[], const char *const env[],
                        int timeout_ms);
void cmt_result_free(cmt_result_t *r);

/* Runs the binary under test: cmt_cm(root, env, timeout, "status", "--json", NULL). */
cmt_result_t cmt_cm(const char *root, const char *const env[], int timeout_ms, ...);

/* Starts a background process in its own process group; returns its pid. */
pid_t cmt_spawn(const char *const argv[], const char *const env[], const char *out_path);
/* Waits (bounded) for a child we started to exit; returns its wait status,
 * or -1 when it is still running at the deadline. */
int cmt_wait_child(pid_t pid, int timeout_ms);
/* Kills the group we started and reaps the leader (bounded). */
void cmt_kill_group(pid_t pgid);

/* Waits (bounded) until `pid` has exec'd `path` (its /proc/PID/exe) and its
 * new environment can be read (/proc/PID/environ): a forked child carries
 * the environment it was given only from then on.  Returns 0 on success. */
int cmt_wait_exec(pid_t pid, const char *path, int timeout_ms);
/* Waits (bounded) until `pid` holds a descriptor whose /proc link reads
 * `target` ("anon_inode:inotify": it watches files).  Returns 0 on success. */
int cmt_wait_fd_to(pid_t pid, const char *target, int timeout_ms);

/* Waits until path exists and is non-empty (bounded); returns 0 on success. */
int cmt_wait_file(const char *path, int timeout_ms);
/* Waits until a TCP connect to 127.0.0.1:port succeeds (bounded). */
int cmt_wait_port(int port, int timeout_ms);
/* A port that was free a moment ago, below the ephemeral range (so no bind
 * to port 0 or outgoing connection takes it meanwhile); never the same one
 * twice in a process. */
int cmt_free_port(void);

/* A TCP socket bound to 127.0.0.1 on a kernel-chosen port (*port), listening
 * when backlog >= 0; no SO_REUSEADDR, so it keeps others off the port. */
int cmt_bound_loopback(int backlog, int *port);

/* A loopback port where a TCP connect never completes (a listener whose
 * accept queue is full, so Linux drops new SYNs).  Returns the port with the
 * sockets to close in fds (CMT_BLACKHOLE_MAX_FDS), or -1 when the kernel
 * does not behave so. */
#define CMT_BLACKHOLE_MAX_FDS 16
int cmt_blackhole_port(int *fds, int *nfds);

/* Runs a Lua chunk as the main task of a fresh runtime (with `cm` loaded).
 * Returns the exit code (0 when the chunk returns nothing); on an error the
 * message and traceback are printed. */
int cmt_lua(const char *code);

/* Upper bounds on wall-clock time scale with how busy the machine is: the
 * floor is what running /bin/true costs now (median of five, measured at
 * each call, right after what it bounds), the slack that floor over what it costs on an idle
 * machine (CMT_FLOOR_NOMINAL_MS), at least 1.  cmt_bound_ms(n) is n times the slack; Lua chunks run
 * by cmt_lua see it as the global SLACK.  Lower bounds, and bounds that prove two waits overlapped
 * (less than their sum), are not scaled.  Timing targets belong in bench/. */
#define CMT_FLOOR_NOMINAL_MS 1.0
double cmt_slack(void);
double cmt_bound_ms(double nominal_ms);

/* Milliseconds on the monotonic clock. */
double cmt_now_ms(void);

/* Alive and not a zombie (a killed process may wait a while for its
 * reaper). */
int cmt_pid_alive(int pid);
/* Waits (bounded) until cmt_pid_alive is false; returns 1 when it is. */
int cmt_wait_dead(int pid, int timeout_ms);

#endif
