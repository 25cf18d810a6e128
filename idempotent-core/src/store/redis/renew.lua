-- Extend the lease of the in-progress record owned by a token to now + lease. Runs after
-- owned.lua, which found it.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner's token (16 bytes)   ARGV[2]  lease (ms)
--
-- Replies: 1 renewed; 0 the token does not own an in-progress record (or its lease passed and
--          Redis dropped it: renew before the lease ends); -1 the value is not one of our
--          records.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.sub(record, 1, 49) .. string.format('%013d', now + lease),
  'PX', lease)
return 1
