/*
 * Test support for suites that drive a supervised instance root end to end:
 * what the supervisor left on disk (run/state.json, run/lock, the session
 * logs), what /proc says about a process, and which processes carry an
 * instance's marker.  Every wait is bounded.  None of these asserts: they
 * return what they found, so callers may collect findings and report them
 * all at once.  Include <cjson/cJSON.h> for the state helpers.
 */
#ifndef CMINST_H
#define CMINST_H

#include <stddef.h>
#include <sys/types.h>

struct cJSON;

/* The instance id of a root (lua/instance.lua: FNV-1a over "DEV:INODE:PATH"
 * of the root, 16 hex digits); out must hold 17 bytes. */
void cmi_instance_id(const char *root, char out[17]);

/* run/state.json parsed, or NULL when missing or not JSON (cJSON_Delete it). */
struct cJSON *cmi_read_state(const char *root);
/* A field of it: "" / -1 when absent or of another type. */
const char *cmi_state_str(const struct cJSON *st, const char *key);
long long cmi_state_int(const struct cJSON *st, const char *key);
/* Waits until state.json says `want` (or timeout); returns its "pid" (0 when
 * it has none), or -1 on timeout. */
int cmi_wait_state(const char *root, const char *want, int timeout_ms);

/* The process state letter of /proc/PID/stat ('R', 'S', 'T', 'Z', ...), or
 * 0 when there is no such process. */
char cmi_proc_state(pid_t pid);
/* Alive and not a zombie. */
int cmi_pid_alive(pid_t pid);
/* Waits until pid is gone or a zombie; 1 when it is. */
int cmi_wait_dead(pid_t pid, int timeout_ms);
/* Field 22 of /proc/PID/stat (clock ticks since boot), or 0. */
unsigned long long cmi_start_time(pid_t pid);
/* /proc/PID/comm without the newline, into buf. */
void cmi_comm(pid_t pid, char *buf, size_t size);

/* Does /proc/PID/environ hold exactly `entry` ("NAME=value")? */
int cmi_environ_has(pid_t pid, const char *entry);
/* Does /proc/PID/environ hold CHAT_MANAGER_INSTANCE=id? */
int cmi_has_marker(pid_t pid, const char *id);
/* Every live (non-zombie) process carrying the marker; returns the count
 * (at most max pids are stored). */
int cmi_marked_pids(const char *id, pid_t *out, int max);

/* Is run/lock of the root held (a supervisor alive)? */
int cmi_lock_held(const char *root);
/* Waits until run/lock is released; 1 when it is. */
int cmi_wait_lock_released(const char *root, int timeout_ms);
/* The pid in run/supervisor.pid, or -1. */
pid_t cmi_supervisor_pid(const char *root);

/* All the session logs of the root (every logs/NAME.log, in name order) as one text,
 * malloc'd ("" when there are none). */
char *cmi_logs_text(const char *root);
/* How often needle occurs in them. */
int cmi_logs_count(const char *root, const char *needle);
/* Occurrences of needle in text. */
int cmi_count(const char *text, const char *needle);

/* Writes root/config.json: the fixture app (fake-app) on `port`, an Ollama
 * that refuses, no periodic checks, and `manager_extra` (JSON members, or
 * NULL) added to the manager section. */
void cmi_write_config(const char *root, int port, const char *manager_extra);

/* GET path from 127.0.0.1:port; the HTTP status, or -1 (bounded). */
int cmi_http_status(int port, const char *path, int timeout_ms);
/* METHOD path with an optional JSON body, read until the server closes
 * (Connection: close; bounded).  Returns the status or -1; *body gets the
 * malloc'd response body (raw: a chunked one keeps its chunk lines). */
int cmi_http(int port, const char *method, const char *path, const char *json, int timeout_ms,
             char **body);

#endif
