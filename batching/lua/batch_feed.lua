-- Feed one chunk of a batch's lines: record the chunk (its line numbers, custom ids and
-- per-line errors), XADD its valid rows to the bulk lane as ONE entry with a job record
-- that points back at the batch, and advance the ingest offsets, all atomically. So a
-- crash between chunks loses nothing and a resumed ingest never feeds a line twice:
-- the chunk is refused unless the batch's offset is where the feeder started reading.
--
-- KEYS[1]   the batch hash        KEYS[2]   its chunks hash     KEYS[3]   its in-flight hash
-- KEYS[4]   the bulk lane stream  KEYS[5]   the settled outbox  KEYS[6]   the active set
-- ARGV[1]   lease owner           ARGV[2]   line offset the chunk starts after
-- ARGV[3]   line offset after it  ARGV[4]   byte offset after it
-- ARGV[5]   items in the chunk    ARGV[6]   of them valid (rows of the entry)
-- ARGV[7]   the packed chunk      ARGV[8]   the packed tensors ('' without rows)
-- ARGV[9]   job record prefix     ARGV[10]  bulk level
-- ARGV[11]  deadline, unix ms     ARGV[12]  most entries the bulk lane may hold
-- ARGV[13]  retention, seconds    ARGV[14]  lease length, ms (renewed here)
-- ARGV[15]  a generation model's per-row parameters (JSON list, the entry's 'g'), or ''
-- returns   'fed', 'full' (the lane is at its window: try again soon), 'stopped'
--           (cancelled or failed), 'lost' (another owner holds the lease) or 'stale'
--           (the offset moved: this chunk was fed already)
--
-- The entry carries its batch ('b', the batch hash's key, as the record's 'bt'), so the
-- worker that finishes it passes the batch's keys to finish.lua without a lookup.
-- @include settle
local b = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'fed_line', 'chunks', 'total', 'id')
if b[1] ~= 'validating' and b[1] ~= 'running' then
  return 'stopped'
end
if b[2] ~= ARGV[1] then
  return 'lost'
end
if b[3] ~= ARGV[2] then
  return 'stale'
end
local rows = tonumber(ARGV[6])
if rows > 0 and redis.call('XLEN', KEYS[4]) >= tonumber(ARGV[12]) then
  return 'full'
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local seq = b[4]
redis.call('HSET', KEYS[2], seq, ARGV[7])
if rows > 0 then
  local fields = {'n', rows, 'd', ARGV[11], 'v', '0', 'b', KEYS[1], 'x', ARGV[8]}
  if ARGV[15] ~= '' then
    table.insert(fields, 'g')
    table.insert(fields, ARGV[15])
  end
  local id = redis.call('XADD', KEYS[4], '*', unpack(fields))
  local ref = id .. '-' .. ARGV[10]
  local record = ARGV[9] .. ref
  redis.call('HSET', record, 'st', 'queued', 'n', rows, 'pr', ARGV[10], 'bt', KEYS[1], 'tt', ARGV[13])
  redis.call('HSET', KEYS[3], record, id)
  redis.call('HSET', KEYS[2], seq .. ':ref', ref)
end
redis.call('HSET', KEYS[1], 'fed_line', ARGV[3], 'fed_byte', ARGV[4], 'chunks', seq + 1,
  'lease_until', now + tonumber(ARGV[14]))
redis.call('HINCRBY', KEYS[1], 'fed', tonumber(ARGV[5]))
if b[1] == 'validating' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', now)
end
local invalid = tonumber(ARGV[5]) - rows
if invalid > 0 then
  settle(KEYS[1], KEYS[6], KEYS[5], {{'failed', invalid}})
end
return 'fed'
