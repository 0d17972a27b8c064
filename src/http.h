/*
 * HTTP GET on the libuv loop: one curl multi handle per loop, driven by the
 * loop's own polls and timer (curl's docs/examples/multi-uv.c model), so any
 * number of transfers run at once without threads or blocking.
 *
 * The engine knows nothing about Lua: a transfer ends by calling a C
 * callback with a cm_http_result_t.  lua_http.c turns that into the
 * `cm.http.get` primitive.
 */
#ifndef CM_HTTP_H
#define CM_HTTP_H

#include <curl/curl.h>
#include <stddef.h>
#include <uv.h>

/* Why a transfer failed; CM_HTTP_OK whenever an HTTP answer arrived, whatever
 * its status (4xx and 5xx are answers, not failures). */
typedef enum cm_http_error {
    CM_HTTP_OK = 0,
    CM_HTTP_REFUSED,         /* nobody listens on the port */
    CM_HTTP_DNS,             /* the host name did not resolve */
    CM_HTTP_CONNECT_TIMEOUT, /* no connection within the (connect) timeout */
    CM_HTTP_TIMEOUT,         /* connected, but no full answer in time */
    CM_HTTP_CLOSED,          /* the peer closed or sent an incomplete answer */
    CM_HTTP_TOO_LARGE,       /* the body is larger than max_bytes */
    CM_HTTP_SSL,             /* TLS handshake or certificate failure */
    CM_HTTP_URL,             /* malformed URL or a scheme other than http(s) */
    CM_HTTP_ERROR            /* anything else */
} cm_http_error_t;

/* Options of one transfer; zero fields take the defaults below. */
typedef struct cm_http_opts {
    long connect_timeout_ms;  /* CURLOPT_CONNECTTIMEOUT_MS (default 5000) */
    long timeout_ms;          /* whole transfer, CURLOPT_TIMEOUT_MS (default 10000) */
    size_t max_bytes;         /* body cap (default CM_HTTP_DEFAULT_MAX_BYTES) */
    int insecure;             /* 1: do not verify the peer's certificate and name */
    const char *post;         /* non-NULL: a POST with this body (copied), else a GET */
    size_t post_len;          /* the body's length in bytes */
    const char *content_type; /* the POST body's Content-Type (default application/json) */
} cm_http_opts_t;

#define CM_HTTP_DEFAULT_CONNECT_TIMEOUT_MS 5000L
#define CM_HTTP_DEFAULT_TIMEOUT_MS 10000L
#define CM_HTTP_DEFAULT_MAX_BYTES ((size_t)4 << 20)

/* The outcome of one transfer.  Every pointer is owned by the engine and
 * valid only during the callback: copy what you keep. */
typedef struct cm_http_result {
    CURLcode curl_code;       /* CURLE_OK when an answer arrived */
    long status;              /* HTTP status code, 0 when there was no answer */
    const char *body;         /* the body, NUL-terminated (never NULL) */
    size_t body_len;          /* its length in bytes (without the NUL) */
    double ms;                /* total time of the transfer */
    const char *content_type; /* Content-Type header, or NULL */
    cm_http_error_t error;    /* CM_HTTP_OK, or why it failed */
    const char *message;      /* human-readable failure ("" on success) */
    int cancelled;            /* 1: aborted by cm_http_shutdown (runtime closing) */
} cm_http_result_t;

typedef void (*cm_http_cb)(const cm_http_result_t *result, void *data);

/* Starts a GET of `url` on `loop` (opts may be NULL for the defaults), or a
 * POST when opts->post is set.
 * Returns 0 when the transfer started: `cb` is then called exactly once, from
 * a loop callback (never from inside this call).  When cm_http_shutdown
 * aborts the transfer, `cb` still runs (so `data` can be freed) with
 * `cancelled` set and error CM_HTTP_ERROR; it must then not call into Lua.
 * Returns a negative libuv error code (UV_ENOMEM, UV_EINVAL, UV_ECANCELED,
 * UV_ENOTSUP: libcurl refused an option the transfer needs, named by
 * cm_http_setup_error) when it could not start; `cb` is then never called.
 * Transfers on one loop share a connection cache. */
int cm_http_get(uv_loop_t *loop, const char *url, const cm_http_opts_t *opts, cm_http_cb cb,
                void *data);

/* After cm_http_get returned UV_ENOTSUP: which option libcurl refused and why. */
const char *cm_http_setup_error(void);

/* Aborts every transfer on `loop` (their callbacks run from this call with
 * `cancelled` set), cleans up the curl multi handle and closes the engine's
 * handles (the close callbacks free them, so the loop must run once more).
 * Must run before the loop closes; a loop without an engine is fine.
 * Idempotent; a later cm_http_get on the loop starts a fresh engine. */
void cm_http_shutdown(uv_loop_t *loop);

/* "refused", "dns", "connect_timeout", "timeout", "closed", "too_large",
 * "ssl", "url", "error" (NULL for CM_HTTP_OK): the codes of cm.http.get. */
const char *cm_http_error_name(cm_http_error_t error);

#endif
