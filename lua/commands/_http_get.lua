-- _http_get URL [TIMEOUT_MS]: one HTTP GET, for the supervisor's readiness
-- probe (internal).  Prints the status; exit 0 for 2xx, 1 for another
-- status, 2 when there was no answer.  Run as a child so that libcurl never
-- loads into the long-lived supervisor.
return {
    name = "_http_get",
    usage = "_http_get URL [TIMEOUT_MS]",
    summary = "internal: one HTTP GET for the readiness probe",
    hidden = true,
    run = function(_, args)
        local url = args[1]
        local timeout = math.tointeger(tonumber(args[2] or "")) or 10000
        if not url or timeout < 1 then return 2 end
        local res, err = cm.http.get(url, { timeout = timeout,
            connect_timeout = math.min(timeout, 1000), max_bytes = 65536 })
        if not res then
            io.stdout:write(err, "\n")
            return 2
        end
        io.stdout:write(res.status, "\n")
        return (res.status >= 200 and res.status < 300) and 0 or 1
    end,
}
