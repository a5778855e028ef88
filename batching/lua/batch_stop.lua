-- Stop a batch (cancel it, or fail it when its ingest cannot go on): its status becomes
-- final at once, so no further chunk is fed, and lines not yet fed are counted under the
-- final state. Its fed entries are finished by the caller through finish.lua (the one
-- step that finishes a record) in mode 'stop': queued ones never reach the model, running
-- ones finish (or are dead-lettered) and settle the batch then, and a record left final
-- but uncounted is counted. So a stopped batch always settles.
--
-- KEYS[1]   the batch hash        KEYS[2]   its in-flight hash
-- KEYS[3]   the settled outbox    KEYS[4]   the active set
-- ARGV[1]   final state: 'cancelled' or 'failed'
-- ARGV[2]   why (kept as the batch's error; '' for none)
-- returns   {the batch's status after the call, its in-flight hash as HGETALL gives it
--           (job record key, entry id, ...) when this call stopped it}, or false for an
--           unknown batch
-- @include settle
local b = redis.call('HMGET', KEYS[1], 'status', 'total', 'fed')
if not b[1] then
  return false
end
if b[1] ~= 'validating' and b[1] ~= 'running' then
  return {b[1], {}}
end
local state = ARGV[1]
redis.call('HSET', KEYS[1], 'status', state)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[2])
end
settle(KEYS[1], KEYS[4], KEYS[3], {{state, tonumber(b[2]) - tonumber(b[3] or 0)}})
return {state, redis.call('HGETALL', KEYS[2])}
