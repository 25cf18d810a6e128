-- Complete the record owned by a token.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner's token (16 bytes)   ARGV[2]  ttl (ms)   ARGV[3]  the output
--
-- Replies: 1 completed; 2 already completed by this token (a retried complete, unchanged);
--          0 the token does not own the record; -1 the value is not one of our records.
-- A lease that passed without a takeover still counts as owned: the record is kept `grace`
-- past its lease for that reason (see claim.lua).
local record = redis.pcall('GET', KEYS[1])
if not record then return 0 end
if type(record) == 'table' then return -1 end
local kind = string.sub(record, 1, 6)
if not ((kind == 'idem1P' and #record == 69) or (kind == 'idem1C' and #record >= 69))
    or not string.find(string.sub(record, 55, 69), '^%d+$') then
  return -1
end
if string.sub(record, 7, 22) ~= ARGV[1] then return 0 end
if kind == 'idem1C' then return 2 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1],
  'idem1C' .. string.sub(record, 7, 54) .. string.format('%015d', now + ttl) .. ARGV[3],
  'PX', ttl)
return 1
