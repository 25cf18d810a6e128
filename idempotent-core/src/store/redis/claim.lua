-- Claim a key in one round trip.
--
-- KEYS[1]  the record
-- ARGV[1]  a fresh token (16 bytes)      ARGV[2]  the caller's fingerprint (32 bytes)
-- ARGV[3]  lease (ms)                    ARGV[4]  grace (ms): how long an in-progress record
--                                                 outlives its lease, so a late owner can
--                                                 still complete when nobody took it over
--
-- Replies
--   0 / 1               acquired a free key / took over a record whose lease had passed
--   {record, ms}        in progress under a live lease; ms = lease left
--   record (a string)   anything else: a completed record, or a value that is not ours
--                       (the client decodes it and reports a corrupt record)
--   -1                  the key holds another Redis type
--
-- Record layout (binary): 'idem1' kind(P|C) token(16) fingerprint(32) time(15 ASCII digits,
-- ms since the epoch: lease_until for P, expires_at for C) [output, C only].
local record = redis.pcall('GET', KEYS[1])
local now
local took_over = 0
if record then
  if type(record) == 'table' then return -1 end
  if string.sub(record, 1, 6) ~= 'idem1P' or #record ~= 69 then return record end
  local lease_until = string.sub(record, 55, 69)
  if not string.find(lease_until, '^%d+$') then return record end
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local left = tonumber(lease_until) - now
  if left > 0 then return {record, left} end
  took_over = 1
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local lease = tonumber(ARGV[3])
redis.call('SET', KEYS[1], 'idem1P' .. ARGV[1] .. ARGV[2] .. string.format('%015d', now + lease),
  'PX', lease + tonumber(ARGV[4]))
return took_over
