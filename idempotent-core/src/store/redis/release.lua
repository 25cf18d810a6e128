-- Delete the in-progress record owned by a token.
--
-- KEYS[1]  the record     ARGV[1]  the owner's token (16 bytes)
--
-- Replies: 1 released; 0 the token does not own an in-progress record (a completed record
--          cannot be released); -1 the value is not one of our records.
local record = redis.pcall('GET', KEYS[1])
if not record then return 0 end
if type(record) == 'table' then return -1 end
local kind = string.sub(record, 1, 6)
if not ((kind == 'idem1P' and #record == 69) or (kind == 'idem1C' and #record >= 69))
    or not string.find(string.sub(record, 55, 69), '^%d+$') then
  return -1
end
if kind ~= 'idem1P' or string.sub(record, 7, 22) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
