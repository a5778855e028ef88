-- Stop a batch (cancel it, or fail it when its ingest cannot go on): lines not yet
-- fed and fed entries no worker has started are counted under the final state and
-- never reach the model; entries already running finish and stay downloadable.
--
-- KEYS[1]   the batch hash        KEYS[2]   its in-flight hash  KEYS[3]   the bulk lane stream
-- KEYS[4]   the settled outbox    KEYS[5]   the active set
-- ARGV[1]   final state: 'cancelled' or 'failed'
-- ARGV[2]   the packed result for stopped entries              ARGV[3]   retention, seconds
-- ARGV[4]   why (kept as the batch's error; '' for none)
-- returns   the batch's status after the call, or false for an unknown batch
local b = redis.call('HMGET', KEYS[1], 'status', 'total', 'fed', 'id')
if not b[1] then
  return false
end
if b[1] ~= 'validating' and b[1] ~= 'running' then
  return b[1]
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = ARGV[1]
local stopped = tonumber(b[2]) - tonumber(b[3] or 0)
local inflight = redis.call('HGETALL', KEYS[2])
for i = 1, #inflight, 2 do
  local record, id = inflight[i], inflight[i + 1]
  if redis.call('HGET', record, 'st') == 'queued' then
    stopped = stopped + tonumber(redis.call('HGET', record, 'n'))
    redis.call('HSET', record, 'st', state, 'res', ARGV[2])
    redis.call('EXPIRE', record, tonumber(ARGV[3]))
    redis.call('XDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[2], record)
  end
end
redis.call('HSET', KEYS[1], 'status', state)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[4])
end
redis.call('HINCRBY', KEYS[1], state, stopped)
if redis.call('HINCRBY', KEYS[1], 'settled', stopped) == tonumber(b[2]) then
  -- settle: the last item is final (same steps in complete.lua and batch_feed.lua)
  redis.call('HSET', KEYS[1], 'finished_at', now)
  redis.call('SREM', KEYS[5], b[4])
  redis.call('SADD', KEYS[4], b[4])
end
return state
