/*
 * Test support for suites that drive the real Chat-O-Llama app (the
 * checkout named by $CM_REAL_APP, set by tests/CMakeLists.txt) with Debian's
 * /usr/bin/python3 and its python3-flask and python3-requests: a copy of the
 * app in a temporary root with the binary dropped in, as a user installs it.
 * The app never reaches the network: its config is made to listen on
 * 127.0.0.1, and its backends are on loopback.
 */
#ifndef CMREAL_H
#define CMREAL_H

#include "cmtest.h"

/* The environment every real-app command gets: Debian's python3 first on
 * PATH (it runs `python3 app.py`), no CHAT_MANAGER_ROOT, and VIRTUAL_ENV
 * set, as by an activated environment that has the app's packages: the
 * first start would otherwise create venv/ and pip-install the app, which
 * needs the network. */
extern const char *const cmr_env[];

/* Fails the test with a clear message when the real app or its Python
 * packages are missing (CI has both: scripts/deps installs them). */
void cmr_require(void);

/* A fresh temporary copy of the real app whose config.json says
 * server.port = port and server.host = 127.0.0.1 (every other byte as
 * shipped), with the binary under test copied in as <root>/chat-manager.
 * Free with cmr_remove. */
char *cmr_copy_app(int port);

/* Runs <root>/chat-manager by its path from the directory cwd, without
 * --root (the drop-in): cmr_cm(root, "/", 60000, "start", "3030", NULL). */
cmt_result_t cmr_cm(const char *root, const char *cwd, int timeout_ms, ...);

/* force-stop on the root (it kills only processes carrying that root's
 * marker), then removes the copy and frees root. */
void cmr_remove(char *root);

/* Writes `text` into the copy's config.json in place of its first
 * occurrence of `from` (the test fails when there is none). */
void cmr_edit_config(const char *root, const char *from, const char *text);

#endif
