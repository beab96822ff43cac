-- wrk script: a Twilio "create Message" POST with a new recipient on every request.
-- The recipient is also sent as X-To, so nginx limit_req can key on it ($http_x_to).
-- At the end, prints one JSON line with the latency percentiles (µs) and counts.
--
-- Recipients are valid GB mobiles +44 71/72/73 xx xxxxxx (3·10^8 of them), distinct per
-- thread, per request and per run: WRK_SEED (0..149, one per wrk run) picks a disjoint
-- block of 500,000 numbers per thread (at most 4 threads), so no number repeats across
-- rounds or targets, and a multiplicative hash spreads consecutive requests over the
-- whole space (as real traffic is, rather than walking one range).

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
local seed = tonumber(os.getenv("WRK_SEED") or "0")
local SPACE = 300000000 -- 3 * 10^8
local MULT = 9999991 -- prime, coprime to SPACE; k * MULT < 2^53 stays exact in doubles

function init(args)
    counter = 0
end

function request()
    counter = counter + 1
    local k = ((seed * 4 + id) * 500000 + counter) % SPACE
    local n = (k * MULT) % SPACE
    local to = string.format("+447%d%08d", 1 + math.floor(n / 100000000), n % 100000000)
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
