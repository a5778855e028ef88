-- Deliver new entries to this consumer, highest level first, until they hold ``budget``
-- rows (the last one may go past it): a worker takes what its next batch and one batch
-- of look-ahead run, counted in rows (an entry holds any number), never a count of
-- entries from every level. One entry at a time, so nothing past the budget is delivered.
--
-- KEYS[i]   the stream of level i to read, in priority order
-- ARGV[1]   consumer group          ARGV[2]   this consumer
-- ARGV[3]   budget, rows
-- returns   {stream index, entry id, fields} per delivered entry, in delivery order
local budget = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  while budget > 0 do
    local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[i], '>')
    if not reply or not reply[1] or not reply[1][2][1] then
      break
    end
    local entry = reply[1][2][1]
    local fields = entry[2]
    for f = 1, #fields, 2 do
      if fields[f] == 'n' then
        budget = budget - tonumber(fields[f + 1])
      end
    end
    table.insert(out, {i, entry[1], fields})
  end
end
return out
