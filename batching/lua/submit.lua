-- Admit one submission: refuse it when the model's queue is full, else XADD the entry
-- (all its rows) and create its job record, atomically, so that no entry exists
-- without a record and a refused submission leaves nothing behind. A synchronous
-- submission (``/v2`` infer: its caller waits on the submitting API process) gets no
-- record: its entry carries the reply channel ('r') and finish.lua publishes its result.
--
-- KEYS[1]        the model's outcome counters (a refusal counts as 'rejected')
-- KEYS[2]        the stream of the chosen priority level
-- KEYS[3..]      the streams of every level of the model (for the queue depth)
-- ARGV[1]        job record key prefix ("fs:{model}:job:")
-- ARGV[2]        rows in the entry
-- ARGV[3]        the packed input tensors
-- ARGV[4]        reply channel of the submitting API process, for a synchronous entry
--                (a record's readers register their own through watch.lua)
-- ARGV[5]        priority level
-- ARGV[6]        max_queue_size in entries (0: unbounded)
-- ARGV[7]        deadline, unix ms: past it the entry is expired, never run
-- ARGV[8]        model version asked for (0: the newest loaded when it runs)
-- ARGV[9]        the pinned-version counter key prefix ("fs:{model}:pinned:")
-- ARGV[10]       the set of versions that may be asked for by number
-- ARGV[11]       the Idempotency-Key's Redis key, or '' without one
-- ARGV[12]       what it remembers, before the entry reference ('<fingerprint>\n<rows>')
-- ARGV[13]       how long it remembers, seconds
-- ARGV[14]       the API key (tenant) that owns the job, or '' with access control off
-- ARGV[15]       '1' for a synchronous submission (no record), else '0'
-- ARGV[16]       a generation request's parameters (JSON, the entry's 'g'), or ''
-- returns        the entry id, false when the queue is full, the error
--                "version_unavailable" for a version being unloaded, or, when the
--                Idempotency-Key was used before, {what it remembers}: nothing is added
--
-- Entry ids are unique per stream only, so a record is named by its reference,
-- '<entry id>-<priority level>', unique per model.
if ARGV[11] ~= '' then
  local prior = redis.call('GET', ARGV[11])
  if prior then
    return {prior}
  end
end
if ARGV[8] ~= '0' and redis.call('SISMEMBER', ARGV[10], ARGV[8]) == 0 then
  return redis.error_reply('version_unavailable')
end
local max_queue = tonumber(ARGV[6])
if max_queue > 0 then
  local depth = 0
  for i = 3, #KEYS do
    depth = depth + redis.call('XLEN', KEYS[i])
  end
  if depth >= max_queue then
    redis.call('HINCRBY', KEYS[1], 'rejected', 1)
    return false
  end
end
local fields = {'n', ARGV[2], 'd', ARGV[7], 'v', ARGV[8], 'x', ARGV[3]}
if ARGV[16] ~= '' then
  table.insert(fields, 'g')
  table.insert(fields, ARGV[16])
end
local id
if ARGV[15] == '1' then
  table.insert(fields, 'r')
  table.insert(fields, ARGV[4])
  id = redis.call('XADD', KEYS[2], '*', unpack(fields))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(fields))
  local record = ARGV[1] .. id .. '-' .. ARGV[5]
  redis.call('HSET', record, 'st', 'queued', 'n', ARGV[2], 'pr', ARGV[5])
  if ARGV[14] ~= '' then
    redis.call('HSET', record, 'tn', ARGV[14])
  end
end
if ARGV[8] ~= '0' then
  redis.call('INCR', ARGV[9] .. ARGV[8])
end
if ARGV[11] ~= '' then
  redis.call('SET', ARGV[11], ARGV[12] .. '\n' .. id .. '-' .. ARGV[5], 'EX', tonumber(ARGV[13]))
end
return id
