/*
 * cm.proc waits: wait_exit and wait_group (pidfds on uv_poll, a re-check
 * tick where pidfds are missing), and pipes (pipe, close_fd, read_fd).
 */
#include "lua_proc.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define FALLBACK_TICK_MS 10

/* ---- wait_exit and wait_group ---------------------------------------------- */

typedef struct pid_watch {
    uv_poll_t poll; /* first; data: the job */
    int pidfd;
} pid_watch_t;

typedef struct wait_job {
    job_t job; /* first */
    uv_timer_t deadline;
    uv_timer_t tick;    /* FALLBACK_TICK_MS re-checks when pidfds are missing */
    pid_watch_t *watch; /* the process being polled, or NULL */
    pid_t id;           /* the pid, or the pgid when `group` */
    int group;
} wait_job_t;

static void watch_close_cb(uv_handle_t *h)
{
    pid_watch_t *w = (pid_watch_t *)h;
    job_t *job = h->data;
    close(w->pidfd); /* only now: libuv must stop polling an fd before it closes */
    free(w);
    job_release(job);
}

static void wait_drop_watch(wait_job_t *wj)
{
    if (wj->watch == NULL) return;
    uv_close((uv_handle_t *)&wj->watch->poll, watch_close_cb);
    wj->watch = NULL;
}

static void wait_close_all(wait_job_t *wj)
{
    wj->job.finished = 1;
    wait_drop_watch(wj);
    job_close(&wj->deadline);
    job_close(&wj->tick);
}

static void wait_teardown(cm_owner_t *owner)
{
    wait_close_all((wait_job_t *)owner);
}

static void wait_finish(wait_job_t *wj, int gone)
{
    if (wj->job.finished) return;
    wait_close_all(wj);
    lua_State *T = cm_waiter_thread(&wj->job.waiter);
    if (T != NULL) lua_pushboolean(T, gone);
    cm_waiter_resume(&wj->job.waiter, 1);
}

static int wait_still_there(const wait_job_t *wj)
{
    return wj->group ? cm_proc_group_alive(wj->id) : cm_proc_alive(wj->id);
}

static void wait_poll_cb(uv_poll_t *h, int status, int events);

static void wait_tick_cb(uv_timer_t *t)
{
    wait_job_t *wj = t->data;
    if (!wait_still_there(wj)) wait_finish(wj, 1);
}

/* Starts watching the next process the wait depends on: the pid itself, or
 * the lowest live member of the group.  Returns 1 when there is none left
 * (the wait is over), 0 when a pidfd poll or the fallback tick is armed. */
static int wait_arm(wait_job_t *wj)
{
    for (int tries = 0; tries < 100; tries++) {
        pid_t pid = wj->group ? cm_proc_group_lowest(wj->id) : (cm_proc_alive(wj->id) ? wj->id : 0);
        if (pid == 0) return 1;
        int fd = cm_proc_pidfd_open(pid);
        if (fd < 0 && errno == ESRCH) continue; /* gone meanwhile: look again */
        if (fd < 0) break;                      /* no pidfds here (ENOSYS, a sandbox) */
        /* The pidfd pins one process; make sure it is the one the scan saw
         * (a pid may be reused between the scan and the open). */
        cm_proc_stat_t st;
        if (cm_proc_read_stat(pid, &st) != 0 || st.state == 'Z' || st.state == 'X' ||
            (wj->group && st.pgid != wj->id)) {
            close(fd);
            continue;
        }
        pid_watch_t *w = malloc(sizeof *w);
        if (w == NULL) {
            close(fd);
            break;
        }
        w->pidfd = fd;
        if (uv_poll_init(wj->deadline.loop, &w->poll, fd) != 0) {
            close(fd);
            free(w);
            break;
        }
        job_adopt(&wj->job, &w->poll);
        wj->watch = w;
        uv_poll_start(&w->poll, UV_READABLE, wait_poll_cb);
        return 0;
    }
    if (!uv_is_active((uv_handle_t *)&wj->tick))
        cm_timer_start(&wj->tick, wait_tick_cb, FALLBACK_TICK_MS, FALLBACK_TICK_MS);
    return 0;
}

static void wait_poll_cb(uv_poll_t *h, int status, int events)
{
    wait_job_t *wj = h->data;
    (void)status;
    (void)events;
    /* A pidfd turns readable when its process has exited (an error means
     * the same for us): look at what is left. */
    wait_drop_watch(wj);
    if (wait_arm(wj)) wait_finish(wj, 1);
}

static void wait_deadline_cb(uv_timer_t *t)
{
    wait_finish(t->data, 0);
}

static int do_wait(lua_State *L, int group)
{
    lua_Integer id = luaL_checkinteger(L, 1);
    uint64_t timeout = cm_ms(L, 2, luaL_checknumber(L, 2));
    cm_waiter_t w;
    cm_waiter_begin(L, &w);
    if (id <= 0 || id > INT_MAX)
        return cm_fail(L, "EINVAL", "invalid %s: %d", group ? "process group" : "pid", (int)id);

    wait_job_t probe = {.id = (pid_t)id, .group = group};
    if (!wait_still_there(&probe)) { /* already gone: no need to park */
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!(timeout > 0)) {
        lua_pushboolean(L, 0);
        return 1;
    }

    wait_job_t *wj = calloc(1, sizeof *wj);
    if (wj == NULL) return cm_fail(L, "ENOMEM", "out of memory");
    wj->job.owner.teardown = wait_teardown;
    wj->job.waiter = w;
    wj->id = (pid_t)id;
    wj->group = group;
    uv_timer_init(cm_loop(L), &wj->deadline);
    job_adopt(&wj->job, &wj->deadline);
    uv_timer_init(cm_loop(L), &wj->tick);
    job_adopt(&wj->job, &wj->tick);
    if (wait_arm(wj)) { /* it went while we looked */
        wait_close_all(wj);
        lua_pushboolean(L, 1);
        return 1;
    }
    cm_timer_start(&wj->deadline, wait_deadline_cb, timeout, 0);
    return cm_waiter_yield(L);
}

/* wait_exit(pid, timeout) -> true (gone) | false (timed out)  (waits) */
int l_wait_exit(lua_State *L)
{
    return do_wait(L, 0);
}

/* wait_group(pgid, timeout) -> true | false  (waits) */
int l_wait_group(lua_State *L)
{
    return do_wait(L, 1);
}

/* ---- pipes and fds ------------------------------------------------------- */

int l_pipe(lua_State *L)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return fail_errno(L, errno, "pipe");
    lua_pushinteger(L, fds[0]);
    lua_pushinteger(L, fds[1]);
    return 2;
}

int l_close_fd(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    if (fd < 0 || fd > INT_MAX) return cm_fail(L, "EBADF", "bad file descriptor: %d", (int)fd);
    /* On Linux the fd is gone even when close reports EINTR. */
    if (close((int)fd) != 0 && errno != EINTR) return fail_errno(L, errno, "close");
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct read_job {
    job_t job; /* first */
    uv_pipe_t pipe;
    uv_timer_t deadline;
    char chunk[READ_CHUNK];
} read_job_t;

static void read_teardown(cm_owner_t *owner)
{
    read_job_t *rj = (read_job_t *)owner;
    rj->job.finished = 1;
    job_close(&rj->pipe);
    job_close(&rj->deadline);
}

static void read_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    read_job_t *rj = h->data;
    (void)suggested;
    buf->base = rj->chunk;
    buf->len = sizeof rj->chunk;
}

/* Ends the read: `nread` bytes of data, 0 for EOF, or a negative libuv error
 * (UV_ETIMEDOUT for our own deadline). */
static void read_finish(read_job_t *rj, ssize_t nread)
{
    if (rj->job.finished) return;
    uv_read_stop((uv_stream_t *)&rj->pipe);
    read_teardown(&rj->job.owner);
    lua_State *T = cm_waiter_thread(&rj->job.waiter);
    int n = 1;
    if (T != NULL) {
        if (nread > 0)
            lua_pushlstring(T, rj->chunk, (size_t)nread); /* the chunk outlives the close */
        else if (nread == 0)
            lua_pushnil(T);
        else if (nread == UV_ETIMEDOUT)
            n = cm_fail(T, "timeout", "timeout");
        else
            n = cm_fail(T, uv_err_name((int)nread), "read: %s", uv_strerror((int)nread));
    }
    cm_waiter_resume(&rj->job.waiter, n);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread == 0) return; /* EAGAIN */
    read_finish(s->data, nread == UV_EOF ? 0 : nread);
}

static void read_deadline_cb(uv_timer_t *t)
{
    read_finish(t->data, UV_ETIMEDOUT);
}

/* read_fd(fd, timeout) -> data | nil (EOF) | nil, "timeout", "timeout"  (waits)
 * Reads from a dup of fd, so the caller's fd stays open; note that the pipe
 * becomes non-blocking (the flag belongs to the shared open file). */
int l_read_fd(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    uint64_t timeout = cm_ms(L, 2, luaL_checknumber(L, 2));
    cm_waiter_t w;
    cm_waiter_begin(L, &w);
    if (fd < 0 || fd > INT_MAX) return cm_fail(L, "EBADF", "bad file descriptor: %d", (int)fd);
    int copy = fcntl((int)fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) return fail_errno(L, errno, "read_fd");

    read_job_t *rj = calloc(1, sizeof *rj);
    if (rj == NULL) {
        close(copy);
        return cm_fail(L, "ENOMEM", "out of memory");
    }
    rj->job.owner.teardown = read_teardown;
    rj->job.waiter = w;
    uv_pipe_init(cm_loop(L), &rj->pipe, 0);
    job_adopt(&rj->job, &rj->pipe);
    uv_timer_init(cm_loop(L), &rj->deadline);
    job_adopt(&rj->job, &rj->deadline);
    int rc = uv_pipe_open(&rj->pipe, copy);
    if (rc != 0) {
        close(copy); /* not adopted by the pipe */
        read_teardown(&rj->job.owner);
        return cm_fail(L, uv_err_name(rc), "read_fd %d: %s", (int)fd, uv_strerror(rc));
    }
    rc = uv_read_start((uv_stream_t *)&rj->pipe, read_alloc_cb, read_cb);
    if (rc != 0) {
        read_teardown(&rj->job.owner);
        return cm_fail(L, uv_err_name(rc), "read_fd %d: %s", (int)fd, uv_strerror(rc));
    }
    cm_timer_start(&rj->deadline, read_deadline_cb, timeout, 0);
    return cm_waiter_yield(L);
}
