-- A token bucket per API key: ``rate`` tokens a second up to ``burst``; each request
-- takes one. Atomic, on the server's clock, so every API process shares one bucket.
--
-- KEYS[1]   the key's bucket (hash: tokens, at)
-- ARGV[1]   rate (tokens per second)    ARGV[2]   burst (bucket size)
-- returns   0 when the request may go, else the milliseconds until a token is there
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
