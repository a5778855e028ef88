-- Take over entries another consumer left unacknowledged past the visibility timeout
-- (it crashed or hung), and report those delivered too often: the caller finishes them
-- as dead-lettered through finish.lua (the one step that finishes a record), so their
-- job fails with a clear reason instead of crashing workers forever.
--
-- KEYS[1]   the stream
-- ARGV[1]   consumer group          ARGV[2]   this consumer
-- ARGV[3]   min idle ms             ARGV[4]   most entries to claim
-- ARGV[5]   max deliveries
-- returns   {claimed entries as XREADGROUP gives them, entries over max deliveries}
local stream, group = KEYS[1], ARGV[1]
local claimed = redis.call('XAUTOCLAIM', stream, group, ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local keep, dead = {}, {}
for _, entry in ipairs(claimed[2]) do
  local id = entry[1]
  local pending = redis.call('XPENDING', stream, group, id, id, 1)
  local deliveries = pending[1] and tonumber(pending[1][4]) or 0
  if deliveries > tonumber(ARGV[5]) then
    table.insert(dead, entry)
  else
    table.insert(keep, entry)
  end
end
return {keep, dead}
