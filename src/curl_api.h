/*
 * libcurl, loaded on first use.
 *
 * Every command is a fresh process, and linking libcurl means the dynamic
 * loader maps and relocates its ~30 dependencies (two TLS stacks, Kerberos,
 * LDAP, ...) before main(): about 3.5 ms on the target machine, most of a
 * 5 ms `status`.  So the binary does not link it; src/http.c calls it through
 * this table, filled by dlopen("libcurl.so.4") the first time a transfer is
 * made.  Commands that do no HTTP never pay for it.
 */
#ifndef CM_CURL_API_H
#define CM_CURL_API_H

#include <curl/curl.h>

typedef struct cm_curl_api {
    CURLcode (*global_init)(long flags);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *easy, CURLoption option, ...);
    CURLcode (*easy_getinfo)(CURL *easy, CURLINFO info, ...);
    void (*easy_cleanup)(CURL *easy);
    const char *(*easy_strerror)(CURLcode code);
    CURLM *(*multi_init)(void);
    CURLMcode (*multi_setopt)(CURLM *multi, CURLMoption option, ...);
    CURLMcode (*multi_add_handle)(CURLM *multi, CURL *easy);
    CURLMcode (*multi_remove_handle)(CURLM *multi, CURL *easy);
    CURLMcode (*multi_socket_action)(CURLM *multi, curl_socket_t s, int ev_bitmask,
                                     int *running_handles);
    CURLMsg *(*multi_info_read)(CURLM *multi, int *msgs_in_queue);
    CURLMcode (*multi_assign)(CURLM *multi, curl_socket_t s, void *sockp);
    CURLMcode (*multi_cleanup)(CURLM *multi);
    char *(*version)(void); /* curl_version: "libcurl/7.88.1 OpenSSL/3.0 ..." */
    struct curl_slist *(*slist_append)(struct curl_slist *list, const char *string);
    void (*slist_free_all)(struct curl_slist *list);
} cm_curl_api_t;

/* Loads libcurl and runs curl_global_init once per process.  Returns the
 * table, or NULL with the reason in err. */
const cm_curl_api_t *cm_curl_api(char *err, size_t errlen);

#endif
