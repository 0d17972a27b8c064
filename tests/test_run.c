/*
 * `run`, the supervisor in the foreground, as systemd and containers use it:
 * every command sees and controls it like a detached one (its marker is in
 * /proc/PID/environ), each event is printed once, and with NOTIFY_SOCKET it
 * speaks the notify protocol.  A datagram socket in the test plays the
 * service manager and checks every message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cminst.h"
#include "cmtest.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct fixture {
    char *root;
    int port;
    int sock;          /* the fake service manager's notify socket */
    char address[108]; /* NOTIFY_SOCKET's value */
    /* A thread receives every message at once (as systemd would: a
     * listener that stops reading makes the sender's datagrams fail). */
    pthread_t reader;
    int reading;
    int stop_reader;
    pthread_mutex_t lock;
    char *seen;    /* every message received, each followed by "|" (lock) */
    size_t cursor; /* how far wait_message has looked */
} fixture_t;

static void *read_messages(void *arg)
{
    fixture_t *f = arg;
    while (!__atomic_load_n(&f->stop_reader, __ATOMIC_SEQ_CST)) {
        struct pollfd p = {.fd = f->sock, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        char buf[4096];
        ssize_t n = recv(f->sock, buf, sizeof buf - 1, 0);
        if (n < 0) continue;
        pthread_mutex_lock(&f->lock);
        size_t old = strlen(f->seen);
        f->seen = realloc(f->seen, old + (size_t)n + 2);
        memcpy(f->seen + old, buf, (size_t)n);
        strcpy(f->seen + old + n, "|");
        pthread_mutex_unlock(&f->lock);
    }
    return NULL;
}

/* A root running the fixture app, and a notify socket: a path in the root,
 * or (abstract) a name in the abstract namespace. */
static fixture_t *fixture_new(int abstract, int reading)
{
    fixture_t *f = calloc(1, sizeof *f);
    f->root = cmt_tempdir();
    f->port = cmt_free_port();
    f->seen = calloc(1, 1);
    cmi_write_config(f->root, f->port,
                     "\"start_timeout\": 10, \"stop_timeout\": 5, \"health_path\": \"/health\"");

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    socklen_t len;
    if (abstract) {
        snprintf(f->address, sizeof f->address, "@cm-test-notify-%d-%d", (int)getpid(), f->port);
        memcpy(addr.sun_path + 1, f->address + 1, strlen(f->address) - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(f->address));
    } else {
        snprintf(f->address, sizeof f->address, "%s/notify", f->root);
        snprintf(addr.sun_path, sizeof addr.sun_path, "%s", f->address);
        len = sizeof addr;
    }
    f->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(f->sock >= 0);
    assert_int_equal(bind(f->sock, (struct sockaddr *)&addr, len), 0);
    pthread_mutex_init(&f->lock, NULL);
    if (reading) assert_int_equal(pthread_create(&f->reader, NULL, read_messages, f), 0);
    f->reading = reading;
    return f;
}

/* Waits (bounded) until a message received after the last one found
 * contains `needle`; 1 when one does.  Every message is kept in f->seen. */
static int wait_message(fixture_t *f, const char *needle, int timeout_ms)
{
    double t0 = cmt_now_ms();
    do {
        pthread_mutex_lock(&f->lock);
        char *at = strstr(f->seen + f->cursor, needle);
        if (at != NULL) f->cursor = (size_t)(at - f->seen) + strlen(needle);
        pthread_mutex_unlock(&f->lock);
        if (at != NULL) return 1;
        usleep(5000);
    } while (cmt_now_ms() - t0 < timeout_ms);
    return 0;
}

/* The messages received so far (a copy). */
static char *seen(fixture_t *f)
{
    pthread_mutex_lock(&f->lock);
    char *copy = strdup(f->seen);
    pthread_mutex_unlock(&f->lock);
    return copy;
}

static void fixture_free(fixture_t *f)
{
    cmt_result_t r = cmt_cm(f->root, NULL, 30000, "force-stop", NULL);
    cmt_result_free(&r);
    __atomic_store_n(&f->stop_reader, 1, __ATOMIC_SEQ_CST);
    if (f->reading) pthread_join(f->reader, NULL);
    pthread_mutex_destroy(&f->lock);
    close(f->sock);
    cmt_rmtree(f->root);
    free(f->root);
    free(f->seen);
    free(f);
}

/* Every message received is one the protocol defines, in the form we send. */
static void check_every_message(fixture_t *f)
{
    static const char *const forms[] = {
        "READY=1\nSTATUS=running (pid ",
        "STATUS=", "RELOADING=1\nMONOTONIC_USEC=", "STOPPING=1\nSTATUS=", "WATCHDOG=1"};
    char *all = seen(f);
    int n = 0;
    char *save = NULL;
    for (char *m = strtok_r(all, "|", &save); m != NULL; m = strtok_r(NULL, "|", &save), n++) {
        int known = 0;
        for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++)
            if (strncmp(m, forms[i], strlen(forms[i])) == 0) known = 1;
        if (!known) fail_msg("unexpected notify message: \"%s\"", m);
    }
    assert_true(n >= 10);
    free(all);
}

/* The whole life of a `run` supervisor under a service manager. */
static void run_under_a_service_manager(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(0, 1);
    char notify[160];
    snprintf(notify, sizeof notify, "NOTIFY_SOCKET=%s", f->address);
    const char *env[] = {notify, "WATCHDOG_USEC=200000", "CHAT_MANAGER_INSTANCE=not-this-one",
                         NULL};
    char *out = cmt_path(f->root, "run.out");
    const char *argv[] = {cmt_env("CM_BINARY"), "--root", f->root, "run", NULL};
    pid_t run = cmt_spawn(argv, env, out);

    /* Ready: STATUS on each transition, READY=1 with running. */
    assert_true(wait_message(f, "READY=1\nSTATUS=running (pid ", 10000));
    char *all = seen(f);
    char *starting = strstr(all, "STATUS=starting");
    assert_non_null(starting);
    assert_true(starting < strstr(all, "READY=1"));
    free(all);
    int app = cmi_wait_state(f->root, "running", 2000);
    assert_true(app > 0);
    assert_int_equal(cmi_http_status(f->port, "/health", 2000), 200);

    /* The watchdog is fed at half of WATCHDOG_USEC (every 100 ms). */
    assert_true(wait_message(f, "WATCHDOG=1", 2000));
    assert_true(wait_message(f, "WATCHDOG=1", 2000));

    /* The marker is where other commands look for it: the process image's
     * environment, same PID as the one the service manager started. */
    char id[17];
    cmi_instance_id(f->root, id);
    assert_true(cmi_has_marker(run, id));
    assert_int_equal(cmi_supervisor_pid(f->root), run);

    /* status sees a supervised app. */
    cmt_result_t r = cmt_cm(f->root, NULL, 30000, "status", NULL);
    assert_cmt_code(r, 0);
    char want[64];
    snprintf(want, sizeof want, "Supervisor: %d", (int)run);
    assert_non_null(strstr(r.out, want));
    assert_null(strstr(r.out, "supervisor is gone"));
    cmt_result_free(&r);

    /* restart restarts the app inside the same supervisor: RELOADING=1,
     * then READY=1 again. */
    r = cmt_cm(f->root, NULL, 30000, "restart", NULL);
    if (r.code != 0) print_message("restart said:\n%s%s", r.out, r.err);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "restarted"));
    cmt_result_free(&r);
    assert_true(wait_message(f, "RELOADING=1\nMONOTONIC_USEC=", 5000));
    assert_true(wait_message(f, "READY=1", 5000));
    assert_true(cmt_pid_alive(run));
    int app2 = cmi_wait_state(f->root, "running", 2000);
    assert_true(app2 > 0 && app2 != app);
    assert_false(cmt_pid_alive(app));

    /* HUP, as `systemctl reload` sends it, does the same. */
    kill(run, SIGHUP);
    assert_true(wait_message(f, "RELOADING=1", 5000));
    assert_true(wait_message(f, "READY=1", 5000));

    /* stop ends it for good: STOPPING=1, exit 0, nothing restarted. */
    r = cmt_cm(f->root, NULL, 30000, "stop", NULL);
    assert_cmt_code(r, 0);
    assert_non_null(strstr(r.out, "Chat-O-Llama stopped"));
    cmt_result_free(&r);
    assert_true(wait_message(f, "STOPPING=1", 2000));
    int st = cmt_wait_child(run, 10000);
    check_every_message(f);
    assert_true(st != -1 && WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_true(cmi_wait_lock_released(f->root, 2000));
    assert_false(cmt_pid_alive(app2));
    r = cmt_cm(f->root, NULL, 30000, "status", NULL);
    assert_cmt_code(r, 3);
    cmt_result_free(&r);

    /* Each event printed once: three starts, three lines (and all of the
     * session log's lines, up to the supervisor's last).  A restart is the
     * table's stop that starts again once the app is gone. */
    char *text = cmt_read_file(out, NULL);
    assert_int_equal(cmi_count(text, "stopped -> starting on start"), 1);
    assert_int_equal(cmi_count(text, "stopping -> starting on exited"), 2);
    assert_int_equal(cmi_count(text, "fake-app listening on"), 3);
    assert_int_equal(cmi_count(text, "exiting (stopped)"), 1);
    free(text);
    free(out);
    fixture_free(f);
}

/* An abstract-namespace NOTIFY_SOCKET ("@name"), and the variables are not
 * passed on to the app. */
static void run_notifies_an_abstract_socket_and_hides_it_from_the_app(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(1, 1);
    char notify[160];
    snprintf(notify, sizeof notify, "NOTIFY_SOCKET=%s", f->address);
    const char *env[] = {notify, NULL};
    const char *argv[] = {cmt_env("CM_BINARY"), "--root", f->root, "run", NULL};
    pid_t run = cmt_spawn(argv, env, NULL);
    assert_true(wait_message(f, "READY=1", 10000));
    int app = cmi_wait_state(f->root, "running", 2000);
    assert_true(app > 0);
    assert_false(cmi_environ_has(app, notify));
    char *all = seen(f);
    assert_null(strstr(all, "WATCHDOG=1")); /* no WATCHDOG_USEC, no pings */
    free(all);
    kill(run, SIGTERM);
    assert_true(wait_message(f, "STOPPING=1", 5000));
    int st = cmt_wait_child(run, 10000);
    assert_true(st != -1 && WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    fixture_free(f);
}

/* A service manager that stops reading (its queue full) never freezes the
 * supervisor: messages are dropped, the loss is logged once, and commands
 * still get answers. */
static void a_stuck_listener_does_not_freeze_run(void **state)
{
    (void)state;
    fixture_t *f = fixture_new(0, 0);
    char notify[160];
    snprintf(notify, sizeof notify, "NOTIFY_SOCKET=%s", f->address);
    const char *env[] = {notify, "WATCHDOG_USEC=10000", NULL}; /* a ping every 5 ms */
    const char *argv[] = {cmt_env("CM_BINARY"), "--root", f->root, "run", NULL};
    pid_t run = cmt_spawn(argv, env, NULL);
    assert_true(cmi_wait_state(f->root, "running", 10000) > 0);
    double t0 = cmt_now_ms();
    while (cmi_logs_count(f->root, "cannot notify the service manager") == 0 &&
           cmt_now_ms() - t0 < 5000)
        usleep(10000);
    assert_int_equal(cmi_logs_count(f->root, "cannot notify the service manager"), 1);
    cmt_result_t r = cmt_cm(f->root, NULL, 30000, "restart", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    r = cmt_cm(f->root, NULL, 30000, "stop", NULL);
    assert_cmt_code(r, 0);
    cmt_result_free(&r);
    int st = cmt_wait_child(run, 10000);
    assert_true(st != -1 && WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    fixture_free(f);
}

/* Like start, run in a directory without an app fails and creates nothing. */
static void run_without_an_app_creates_nothing(void **state)
{
    (void)state;
    char *empty = cmt_tempdir();
    const char *argv[] = {cmt_env("CM_BINARY"), "--root", empty, "run", NULL};
    cmt_result_t r = cmt_run(argv, NULL, 30000);
    assert_cmt_code(r, 1);
    assert_non_null(strstr(r.err, "no Chat-O-Llama app in"));
    cmt_result_free(&r);
    char *run_dir = cmt_path(empty, "run");
    assert_false(access(run_dir, F_OK) == 0);
    free(run_dir);
    cmt_rmtree(empty);
    free(empty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(run_under_a_service_manager),
        cmocka_unit_test(run_notifies_an_abstract_socket_and_hides_it_from_the_app),
        cmocka_unit_test(a_stuck_listener_does_not_freeze_run),
        cmocka_unit_test(run_without_an_app_creates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
