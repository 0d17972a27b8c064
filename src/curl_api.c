/*
 * Loads libcurl on first use (see curl_api.h for why).
 */
#include "curl_api.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static cm_curl_api_t api;
static int loaded;           /* 1 once the table is complete */
static char load_error[256]; /* why it could not be loaded */

/* Resolves one symbol into a table slot; returns 0 when it is missing. */
static int resolve(void *lib, void *slot, const char *name)
{
    void *sym = dlsym(lib, name);
    if (sym == NULL) {
        snprintf(load_error, sizeof load_error, "libcurl has no %s", name);
        return 0;
    }
    /* POSIX guarantees function pointers round-trip through void *. */
    memcpy(slot, &sym, sizeof sym);
    return 1;
}

static int load(void)
{
    void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        snprintf(load_error, sizeof load_error, "cannot load libcurl: %s", dlerror());
        return 0;
    }
    int ok = resolve(lib, &api.global_init, "curl_global_init") &&
             resolve(lib, &api.easy_init, "curl_easy_init") &&
             resolve(lib, &api.easy_setopt, "curl_easy_setopt") &&
             resolve(lib, &api.easy_getinfo, "curl_easy_getinfo") &&
             resolve(lib, &api.easy_cleanup, "curl_easy_cleanup") &&
             resolve(lib, &api.easy_strerror, "curl_easy_strerror") &&
             resolve(lib, &api.multi_init, "curl_multi_init") &&
             resolve(lib, &api.multi_setopt, "curl_multi_setopt") &&
             resolve(lib, &api.multi_add_handle, "curl_multi_add_handle") &&
             resolve(lib, &api.multi_remove_handle, "curl_multi_remove_handle") &&
             resolve(lib, &api.multi_socket_action, "curl_multi_socket_action") &&
             resolve(lib, &api.multi_info_read, "curl_multi_info_read") &&
             resolve(lib, &api.multi_assign, "curl_multi_assign") &&
             resolve(lib, &api.multi_cleanup, "curl_multi_cleanup") &&
             resolve(lib, &api.version, "curl_version") &&
             resolve(lib, &api.slist_append, "curl_slist_append") &&
             resolve(lib, &api.slist_free_all, "curl_slist_free_all");
    /* (fixtures/curl_without_tls.c forwards each of these: add new ones there.) */
    /* The library stays loaded for the life of the process (curl keeps
     * global state), so a failure leaves it mapped too: harmless. */
    if (!ok) return 0;
    /* curl_global_init is not thread-safe and must come before the first
     * easy handle; curl_global_cleanup is never called, so its state stays
     * reachable and another runtime in the same process can use it. */
    if (api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(load_error, sizeof load_error, "curl_global_init failed");
        return 0;
    }
    return 1;
}

const cm_curl_api_t *cm_curl_api(char *err, size_t errlen)
{
    static int tried;
    if (!tried) {
        tried = 1;
        loaded = load();
    }
    if (loaded) return &api;
    if (err != NULL) snprintf(err, errlen, "%s", load_error);
    return NULL;
}
