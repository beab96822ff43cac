-- wrk script: a Twilio "create Message" POST with a new recipient on every request.
-- The recipient is also sent as X-To, so nginx limit_req can key on it ($http_x_to).
-- At the end, prints one JSON line with the latency percentiles (µs) and counts.

local threads = {}
local next_id = 0

function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
    table.insert(threads, thread)
end

local path = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
local counter = 0
local pace = tonumber(os.getenv("WRK_DELAY_MS") or "0")

function init(args)
    counter = 0
end

function request()
    counter = counter + 1
    -- +44 740x xxxxxx: valid GB mobiles, distinct per thread and request.
    local n = (id * 1000003 + counter) % 10000000
    local to = string.format("+44740%07d", n)
    local body = "To=%2B" .. string.sub(to, 2)
        .. "&From=%2B15005550006&Body=Your+verification+code+is+123456."
    local headers = {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["Authorization"] = "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjpzZWNyZXQ=",
        ["X-To"] = to,
    }
    return wrk.format("POST", path, headers, body)
end

if pace > 0 then
    function delay()
        return pace
    end
end

function done(summary, latency, requests)
    io.write(string.format(
        '{"requests":%d,"duration_us":%d,"errors_status":%d,"errors_connect":%d,' ..
        '"errors_read":%d,"errors_write":%d,"errors_timeout":%d,' ..
        '"p50":%d,"p99":%d,"p999":%d,"max":%d}\n',
        summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
        summary.errors.read, summary.errors.write, summary.errors.timeout,
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
