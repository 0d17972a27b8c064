/*
 * TCP checks: a bounded connect attempt on the libuv loop, and synchronous
 * port probes (can we bind it, is anything listening, who listens) read from
 * the kernel's own tables in /proc.  Nothing here keeps a connection open:
 * these are the readiness and safety checks of the supervisor.
 */
#ifndef CM_NET_H
#define CM_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* Called once when a connect attempt ends: status 0 (connected, and already
 * closed again), UV_ECONNREFUSED, UV_ETIMEDOUT (no answer within the
 * timeout), UV_ECANCELED (the loop is closing: do not call into Lua), or
 * another libuv error (UV_ENETUNREACH, UV_EAI_NONAME...). */
typedef void (*cm_net_connect_cb)(int status, void *data);

/* Starts a TCP connect to host:port that gives up after timeout_ms (which
 * covers name resolution too).  `host` is a numeric IPv4 or IPv6 address,
 * "localhost" (taken as 127.0.0.1, never looked up), or a name resolved with
 * uv_getaddrinfo (first address).  Returns 0 when started, then `cb` runs
 * exactly once from a loop callback, never from inside this call; returns a
 * negative libuv error (UV_EINVAL, UV_ENOMEM) when it could not start, and
 * `cb` never runs. */
int cm_net_connect(uv_loop_t *loop, const char *host, int port, uint64_t timeout_ms,
                   cm_net_connect_cb cb, void *data);

/* Parses a numeric address (or "localhost" as 127.0.0.1) with the port into
 * *addr.  Returns 0, or UV_EINVAL when host is not numeric. */
int cm_net_parse_addr(const char *host, int port, struct sockaddr_storage *addr);

/* Whether a TCP socket could bind host:port right now (SO_REUSEADDR, so
 * connections in TIME_WAIT do not count).  Returns 1 free, 0 taken, or a
 * negative errno when the check itself failed (then the port is not known to
 * be free: EACCES for a privileged port, EADDRNOTAVAIL for a foreign host). */
int cm_net_port_free(const char *host, int port);

/* Whether a TCP socket (IPv4 or IPv6) is in LISTEN state on `port`, from
 * /proc/net/tcp and /proc/net/tcp6.  Returns 1, 0, or a negative errno when
 * neither table could be read. */
int cm_net_port_listening(int port);

/* Finds the process holding the listening socket on `port`: the socket's
 * inode from /proc/net/tcp{,6}, then the process whose /proc/PID/fd has a
 * link to "socket:[inode]".  On success returns 1 and sets *pid and name
 * (its /proc/PID/comm, NUL-terminated, truncated to name_size).  Returns 0
 * when nothing listens, and -EACCES when something listens but its process
 * is not visible to us (another user's process). */
int cm_net_port_owner(int port, pid_t *pid, char *name, size_t name_size);

/* The TCP ports (IPv4 and IPv6) on which the processes of group `pgid`
 * listen, ascending and without duplicates: the LISTEN sockets of
 * /proc/net/tcp{,6}, then the /proc/PID/fd links of the group's members.
 * Stores at most `max` in `ports` and returns how many, or a negative errno
 * when neither table can be read. */
int cm_net_group_ports(pid_t pgid, int *ports, int max);

#endif
