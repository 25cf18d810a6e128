-- Complete the record owned by a token.
--
-- KEYS[1]  the record
-- ARGV[1]  the owner's token (16 bytes)   ARGV[2]  ttl (ms)   ARGV[3]  the output
-- ARGV[4]  the owner's fingerprint (32 bytes)
-- ARGV[5]  '1' if the token's lease has passed (the client reads that from the token)
-- ARGV[6]  the completed record's kind: 'C', or 'Z' when ARGV[3] is compressed
--
-- Replies: 1 completed; 2 already completed by this token (a retried complete, unchanged);
--          0 another token holds the record; -1 the value is not one of our records.
--
-- No record, for a token whose lease has passed: Redis dropped the in-progress record with the
-- lease, and nobody claimed the key since (a claim would have written its own record). A lease
-- that passed without a takeover still counts as owned, so the output is stored. No record
-- for a token whose lease is still running: the record was removed; the token owns nothing.
local record = redis.pcall('GET', KEYS[1])
if record and type(record) == 'table' then return -1 end
local ttl = tonumber(ARGV[2])
local time = redis.call('TIME')
local expires_at = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + ttl
if not record then
  if ARGV[5] ~= '1' then return 0 end
  redis.call('SET', KEYS[1],
    ARGV[6] .. ARGV[1] .. ARGV[4] .. string.format('%013d', expires_at) .. ARGV[3], 'PX', ttl)
  return 1
end
-- The layout (record.rs): kind (1), token (16), fingerprint (32), time (13 digits), output.
local kind = string.sub(record, 1, 1)
if not ((kind == 'P' and #record == 62) or ((kind == 'C' or kind == 'Z') and #record >= 62))
    or not string.find(string.sub(record, 50, 62), '^%d+$') then
  return -1
end
if string.sub(record, 2, 17) ~= ARGV[1] then return 0 end
if kind ~= 'P' then return 2 end
redis.call('SET', KEYS[1],
  ARGV[6] .. string.sub(record, 2, 49) .. string.format('%013d', expires_at) .. ARGV[3],
  'PX', ttl)
return 1
