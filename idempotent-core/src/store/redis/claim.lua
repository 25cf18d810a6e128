-- Claim a key in one round trip.
--
-- KEYS[1]  the record
-- ARGV[1]  the head of a new in-progress record: 'idem1P' .. fresh token (16 bytes) ..
--          the caller's fingerprint (32 bytes)
-- ARGV[2]  lease (ms)
-- ARGV[3]  grace (ms): how long an in-progress record outlives its lease, so a late owner
--          can still complete when nobody took it over
--
-- Replies
--   0 / 1               acquired a free key / took over a record whose lease had passed
--   {record, ms}        in progress under a live lease; ms = lease left
--   record (a string)   anything else: a completed record (the replay path: one GET, a
--                       length and a byte test), or a value that is not ours (the client
--                       decodes it and reports a corrupt record)
--   -1                  the key holds another Redis type
--
-- Record layout (binary): 'idem1' kind(P|C) token(16) fingerprint(32) time(15 ASCII digits,
-- ms since the epoch by the server's clock: lease_until for P, expires_at for C), then the
-- output (C only). An in-progress record is exactly 69 bytes.
local record = redis.pcall('GET', KEYS[1])
local took_over = 0
if record then
  if type(record) == 'table' then return -1 end
  -- 80 is 'P'.
  if #record ~= 69 or string.byte(record, 6) ~= 80 or string.sub(record, 1, 5) ~= 'idem1' then
    return record
  end
  local lease_until = string.sub(record, 55, 69)
  if not string.find(lease_until, '^%d+$') then return record end
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local left = tonumber(lease_until) - now
  if left > 0 then return {record, left} end
  took_over = 1
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1] .. string.format('%015d', now + lease),
  'PX', lease + tonumber(ARGV[3]))
return took_over
