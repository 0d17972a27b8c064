/*
 * The HTTP engine: curl's multi interface driven by libuv (see http.h).
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * wake it up (CURLMOPT_TIMERFUNCTION); we keep one uv_poll_t per socket and
 * one uv_timer_t per engine, hand every event back with
 * curl_multi_socket_action and then drain curl_multi_info_read for finished
 * transfers.  This is the shape of curl's docs/examples/multi-uv.c, plus what
 * the example leaves out: the transfer's own result is checked, a poll error
 * is reported to curl as CURL_CSELECT_ERR, and everything can be torn down
 * while transfers are still in flight.
 *
 * There is one engine per loop, created on the first GET and kept in a short
 * list keyed by the loop (a process has a handful of loops at most: one per
 * runtime, and the tests make them one after another).
 */
#include "http.h"

#include "curl_api.h"

#include "owner.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* libcurl's functions, loaded on first use (curl_api.h). */
static const cm_curl_api_t *api;

#ifndef CM_VERSION
#define CM_VERSION "0.1.0"
#endif

typedef struct http_engine http_engine_t;
typedef struct http_socket http_socket_t;
typedef struct http_transfer http_transfer_t;

struct http_engine {
    cm_owner_t owner;           /* first: the timer's data (runtime.h ownership rule) */
    uv_loop_t *loop;            /* the loop this engine runs on (its key) */
    CURLM *multi;               /* NULL once shut down */
    uv_timer_t timer;           /* curl's single timeout */
    http_transfer_t *transfers; /* in flight, doubly linked */
    http_socket_t *sockets;     /* polled sockets, doubly linked */
    int closing;                /* shutdown began: curl callbacks change nothing */
    http_engine_t *next;        /* in the list of engines */
};

struct http_socket {
    cm_owner_t owner; /* first: the poll's data */
    uv_poll_t poll;
    curl_socket_t fd;
    http_engine_t *engine;
    http_socket_t *prev, *next;
};

struct http_transfer {
    http_engine_t *engine;
    CURL *easy;
    cm_http_cb cb;
    void *data;
    char *body; /* NUL-terminated, grows up to max_bytes + 1 */
    size_t body_len;
    size_t body_cap;
    size_t max_bytes;
    int too_large;              /* the write callback refused more data */
    struct curl_slist *headers; /* request headers (a POST's Content-Type) */
    char errbuf[CURL_ERROR_SIZE];
    char message[CURL_ERROR_SIZE + 128];
    http_transfer_t *prev, *next;
};

static http_engine_t *engines; /* every live engine, one per loop */

static void engine_teardown(cm_owner_t *owner);
static void socket_teardown(cm_owner_t *owner);

/* ---- small helpers ----------------------------------------------------- */

const char *cm_http_error_name(cm_http_error_t error)
{
    switch (error) {
    case CM_HTTP_OK:
        return NULL;
    case CM_HTTP_REFUSED:
        return "refused";
    case CM_HTTP_DNS:
        return "dns";
    case CM_HTTP_CONNECT_TIMEOUT:
        return "connect_timeout";
    case CM_HTTP_TIMEOUT:
        return "timeout";
    case CM_HTTP_CLOSED:
        return "closed";
    case CM_HTTP_TOO_LARGE:
        return "too_large";
    case CM_HTTP_SSL:
        return "ssl";
    case CM_HTTP_URL:
        return "url";
    case CM_HTTP_ERROR:
        return "error";
    }
    return "error";
}

static void transfer_link(http_engine_t *e, http_transfer_t *t)
{
    t->prev = NULL;
    t->next = e->transfers;
    if (e->transfers != NULL) e->transfers->prev = t;
    e->transfers = t;
}

static void transfer_unlink(http_engine_t *e, http_transfer_t *t)
{
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        e->transfers = t->next;
    if (t->next != NULL) t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Frees a transfer that is no longer in the multi handle. */
static void transfer_free(http_transfer_t *t)
{
    if (t->easy != NULL) api->easy_cleanup(t->easy);
    if (t->headers != NULL) api->slist_free_all(t->headers);
    free(t->body);
    free(t);
}

/* ---- sockets ------------------------------------------------------------ */

static void socket_close_cb(uv_handle_t *handle)
{
    free(handle->data);
}

/* Stops watching a socket and unlinks it; the memory goes in the close
 * callback.  curl calls CURL_POLL_REMOVE before it closes the descriptor, so
 * the poll is always stopped while the fd is still ours (stopping it later
 * could remove a reused fd number from epoll). */
static void socket_close(http_socket_t *s)
{
    http_engine_t *e = s->engine;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else if (e->sockets == s)
        e->sockets = s->next;
    if (s->next != NULL) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    if (!uv_is_closing((uv_handle_t *)&s->poll)) uv_close((uv_handle_t *)&s->poll, socket_close_cb);
}

/* The runtime's teardown walk found one of our polls open: curl still owns
 * the socket, so the whole engine goes down at once (idempotent). */
static void socket_teardown(cm_owner_t *owner)
{
    http_engine_t *e = ((http_socket_t *)owner)->engine;
    if (!e->closing) cm_http_shutdown(e->loop);
}

static void check_multi_info(http_engine_t *e);

/* A watched socket is ready (or failed): tell curl, then collect what ended. */
static void on_poll(uv_poll_t *poll, int status, int events)
{
    http_socket_t *s = poll->data;
    http_engine_t *e = s->engine;
    int flags = 0;
    int running = 0;
    if (e->closing) return;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    /* `s` may be closed by curl inside this call (CURL_POLL_REMOVE): do not
     * touch it afterwards. */
    api->multi_socket_action(e->multi, s->fd, flags, &running);
    check_multi_info(e);
}

/* CURLMOPT_SOCKETFUNCTION: curl says what to watch on socket `fd`. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    http_engine_t *e = userp;
    http_socket_t *s = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            socket_close(s);
            api->multi_assign(e->multi, fd, NULL);
        }
        return 0;
    }
    if (e->closing) return 0;

    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL) return -1;
        if (uv_poll_init_socket(e->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->owner.teardown = socket_teardown;
        s->poll.data = s;
        s->fd = fd;
        s->engine = e;
        s->next = e->sockets;
        if (e->sockets != NULL) e->sockets->prev = s;
        e->sockets = s;
        api->multi_assign(e->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
    if (uv_poll_start(&s->poll, events, on_poll) != 0) return -1;
    return 0;
}

/* ---- the timer ---------------------------------------------------------- */

static void on_timer(uv_timer_t *timer)
{
    http_engine_t *e = timer->data;
    int running = 0;
    if (e->closing) return;
    api->multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(e);
}

/* CURLMOPT_TIMERFUNCTION: -1 removes the timeout; 0 asks for a call as soon
 * as possible, which a 0 ms libuv timer gives on the next loop iteration
 * (curl forbids calling socket_action from inside this callback). */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    http_engine_t *e = userp;
    if (e->closing) return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&e->timer);
    else
        cm_timer_start(&e->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- finished transfers ------------------------------------------------- */

static int is_ssl_error(CURLcode code)
{
    switch (code) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
        return 1;
    default:
        return 0;
    }
}

/* Sorts a curl failure into the codes the Lua API promises. */
static cm_http_error_t classify(http_transfer_t *t, CURLcode code)
{
    if (t->too_large || code == CURLE_FILESIZE_EXCEEDED) return CM_HTTP_TOO_LARGE;
    switch (code) {
    case CURLE_OK:
        return CM_HTTP_OK;
    case CURLE_COULDNT_CONNECT:
        return CM_HTTP_REFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return CM_HTTP_DNS;
    case CURLE_OPERATION_TIMEDOUT: {
        /* The same code covers "never connected" and "connected but the
         * answer was too slow"; only the connect time tells them apart. */
        curl_off_t connect_us = 0;
        api->easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
        return connect_us == 0 ? CM_HTTP_CONNECT_TIMEOUT : CM_HTTP_TIMEOUT;
    }
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
        return CM_HTTP_CLOSED;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return CM_HTTP_URL;
    default:
        return is_ssl_error(code) ? CM_HTTP_SSL : CM_HTTP_ERROR;
    }
}

/* Fills t->message for a failed transfer. */
static void describe(http_transfer_t *t, CURLcode code, cm_http_error_t error)
{
    if (error == CM_HTTP_TOO_LARGE) {
        snprintf(t->message, sizeof t->message, "response larger than %zu bytes", t->max_bytes);
    } else if (error == CM_HTTP_REFUSED) {
        snprintf(t->message, sizeof t->message, "connection refused");
    } else if (t->errbuf[0] != '\0') {
        snprintf(t->message, sizeof t->message, "%s (%s)", api->easy_strerror(code), t->errbuf);
    } else {
        snprintf(t->message, sizeof t->message, "%s", api->easy_strerror(code));
    }
}

/* Takes one finished transfer out of the multi handle and reports it. */
static void finish(http_engine_t *e, http_transfer_t *t, CURLcode code)
{
    cm_http_result_t r;
    memset(&r, 0, sizeof r);
    r.curl_code = code;
    r.error = classify(t, code);
    r.message = "";
    if (r.error != CM_HTTP_OK) {
        describe(t, code, r.error);
        r.message = t->message;
    } else {
        api->easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &r.status);
        char *ctype = NULL;
        api->easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &ctype);
        r.content_type = ctype;
    }
    curl_off_t total_us = 0;
    api->easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total_us);
    r.ms = (double)total_us / 1000.0;
    r.body = "";
    if (r.error == CM_HTTP_OK && t->body != NULL) {
        r.body = t->body;
        r.body_len = t->body_len;
    }

    api->multi_remove_handle(e->multi, t->easy);
    transfer_unlink(e, t);
    /* The callback may start new transfers (it resumes Lua code): the multi
     * handle is consistent here, and we are not inside a curl callback. */
    t->cb(&r, t->data);
    transfer_free(t);
}

static void check_multi_info(http_engine_t *e)
{
    CURLMsg *msg;
    int pending = 0;
    while (!e->closing && (msg = api->multi_info_read(e->multi, &pending)) != NULL) {
        if (msg->msg != CURLMSG_DONE) continue;
        char *priv = NULL;
        api->easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        /* Read the result before anything else: msg is only valid until the
         * next call into the multi handle. */
        CURLcode code = msg->data.result;
        if (priv != NULL) finish(e, (http_transfer_t *)priv, code);
    }
}

/* ---- transfers ---------------------------------------------------------- */

/* CURLOPT_WRITEFUNCTION: appends to the body, refusing past max_bytes (a
 * short count makes curl abort the transfer with CURLE_WRITE_ERROR). */
static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    http_transfer_t *t = userdata;
    size_t n = size * nmemb;
    if (n > t->max_bytes - t->body_len) {
        t->too_large = 1;
        return 0;
    }
    if (t->body_len + n + 1 > t->body_cap) {
        size_t cap = t->body_cap ? t->body_cap : 16384;
        while (cap < t->body_len + n + 1)
            cap *= 2;
        if (cap > t->max_bytes + 1) cap = t->max_bytes + 1;
        char *grown = realloc(t->body, cap);
        if (grown == NULL) return 0;
        t->body = grown;
        t->body_cap = cap;
    }
    memcpy(t->body + t->body_len, ptr, n);
    t->body_len += n;
    t->body[t->body_len] = '\0';
    return n;
}

static http_engine_t *engine_find(uv_loop_t *loop)
{
    for (http_engine_t *e = engines; e != NULL; e = e->next)
        if (e->loop == loop) return e;
    return NULL;
}

static http_engine_t *engine_get(uv_loop_t *loop)
{
    http_engine_t *e = engine_find(loop);
    if (e != NULL) return e;
    e = calloc(1, sizeof *e);
    if (e == NULL) return NULL;
    e->multi = api->multi_init();
    if (e->multi == NULL) {
        free(e);
        return NULL;
    }
    e->owner.teardown = engine_teardown;
    e->loop = loop;
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
    api->multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    api->multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    api->multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    api->multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
    e->next = engines;
    engines = e;
    return e;
}

/* Why the last cm_http_get returned UV_ENOTSUP (an option libcurl refused). */
static char setup_error[192];

const char *cm_http_setup_error(void)
{
    return setup_error;
}

/* Sets every option of a transfer; returns the first failure (its option
 * named in setup_error).  TLS options are set for https:// only: a libcurl
 * built without TLS refuses them, and plain HTTP does not need them. */
static CURLcode configure(http_transfer_t *t, const char *url, const cm_http_opts_t *o)
{
    CURL *h = t->easy;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK && (rc = api->easy_setopt(h, opt, val)) != CURLE_OK)                    \
            snprintf(setup_error, sizeof setup_error, "libcurl refused %s: %s", #opt,              \
                     api->easy_strerror(rc));                                                      \
    } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PRIVATE, (void *)t);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)t);
    SET(CURLOPT_ERRORBUFFER, t->errbuf);
    /* Signals belong to libuv; curl must not install SIGALRM/SIGPIPE tricks. */
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, o->timeout_ms);
    if (strncasecmp(url, "https://", 8) == 0) {
        SET(CURLOPT_SSL_VERIFYPEER, o->insecure ? 0L : 1L);
        SET(CURLOPT_SSL_VERIFYHOST, o->insecure ? 0L : 2L);
    }
    /* A proxy from the environment must never sit between us and a backend
     * on this machine. */
    SET(CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_USERAGENT, "chat-manager/" CM_VERSION);
    /* Known too large from Content-Length: fail before reading any of it. */
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_bytes);
    if (o->post != NULL) {
        char header[256];
        snprintf(header, sizeof header, "Content-Type: %s",
                 o->content_type != NULL ? o->content_type : "application/json");
        t->headers = api->slist_append(NULL, header);
        if (t->headers == NULL) return CURLE_OUT_OF_MEMORY;
        SET(CURLOPT_HTTPHEADER, t->headers);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->post_len);
        SET(CURLOPT_COPYPOSTFIELDS, o->post); /* copied: the caller's buffer may go */
    }
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
#undef SET
    return rc;
}

int cm_http_get(uv_loop_t *loop, const char *url, const cm_http_opts_t *opts, cm_http_cb cb,
                void *data)
{
    if (loop == NULL || url == NULL || cb == NULL) return UV_EINVAL;
    cm_http_opts_t o = {0};
    if (opts != NULL) o = *opts;
    if (o.connect_timeout_ms <= 0) o.connect_timeout_ms = CM_HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    if (o.timeout_ms <= 0) o.timeout_ms = CM_HTTP_DEFAULT_TIMEOUT_MS;
    if (o.max_bytes == 0) o.max_bytes = CM_HTTP_DEFAULT_MAX_BYTES;
    /* The body buffer holds max_bytes + 1 and grows by doubling: keep both
     * far from overflowing. */
    if (o.max_bytes > SIZE_MAX / 4) o.max_bytes = SIZE_MAX / 4;

    if (api == NULL && (api = cm_curl_api(NULL, 0)) == NULL) return UV_ENOSYS;
    http_engine_t *e = engine_get(loop);
    if (e == NULL) return UV_ENOMEM;
    if (e->closing) return UV_ECANCELED;

    http_transfer_t *t = calloc(1, sizeof *t);
    if (t == NULL) return UV_ENOMEM;
    t->engine = e;
    t->cb = cb;
    t->data = data;
    t->max_bytes = o.max_bytes;
    t->easy = api->easy_init();
    if (t->easy == NULL) {
        transfer_free(t);
        return UV_ENOMEM;
    }
    if (configure(t, url, &o) != CURLE_OK) {
        transfer_free(t);
        return UV_ENOTSUP;
    }
    /* Adding only schedules a 0 ms timeout: the transfer begins on the loop,
     * so the callback never runs before this function returns. */
    if (api->multi_add_handle(e->multi, t->easy) != CURLM_OK) {
        transfer_free(t);
        return UV_ENOMEM;
    }
    transfer_link(e, t);
    return 0;
}

/* ---- shutdown ----------------------------------------------------------- */

static void engine_close_cb(uv_handle_t *handle)
{
    free(handle->data);
}

void cm_http_shutdown(uv_loop_t *loop)
{
    http_engine_t *e = engine_find(loop);
    if (e == NULL || e->closing) return;
    e->closing = 1;
    for (http_engine_t **p = &engines; *p != NULL; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    while (e->transfers != NULL) {
        http_transfer_t *t = e->transfers;
        api->multi_remove_handle(e->multi, t->easy);
        transfer_unlink(e, t);
        cm_http_result_t r;
        memset(&r, 0, sizeof r);
        r.curl_code = CURLE_ABORTED_BY_CALLBACK;
        r.body = "";
        r.error = CM_HTTP_ERROR;
        r.message = "cancelled: the event loop is closing";
        r.cancelled = 1;
        t->cb(&r, t->data);
        transfer_free(t);
    }
    /* Closing the cached connections reports CURL_POLL_REMOVE for their
     * sockets, which closes their polls; any left are closed after. */
    api->multi_cleanup(e->multi);
    e->multi = NULL;
    while (e->sockets != NULL)
        socket_close(e->sockets);
    uv_close((uv_handle_t *)&e->timer, engine_close_cb);
}

/* The runtime's teardown walk found our timer open: shut the engine down. */
static void engine_teardown(cm_owner_t *owner)
{
    http_engine_t *e = (http_engine_t *)owner;
    if (!e->closing) cm_http_shutdown(e->loop);
}
