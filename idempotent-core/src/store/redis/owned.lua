-- The first lines of release.lua and renew.lua: find the in-progress record that the token
-- owns, or reply for them.
--
-- KEYS[1]  the record     ARGV[1]  the owner's token (16 bytes)
--
-- Replies (only when the token does not own the record): 0 no in-progress record of this
-- token (none, a completed one, another owner's); -1 the value is not one of our records.
-- Otherwise `record` holds the owner's record and the script goes on.
local record = redis.pcall('GET', KEYS[1])
if not record then return 0 end
if type(record) == 'table' then return -1 end
local kind = string.sub(record, 1, 6)
if not ((kind == 'idem1P' and #record == 69) or (kind == 'idem1C' and #record >= 69))
    or not string.find(string.sub(record, 55, 69), '^%d+$') then
  return -1
end
if kind ~= 'idem1P' or string.sub(record, 7, 22) ~= ARGV[1] then return 0 end
