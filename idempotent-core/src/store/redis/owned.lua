-- The first lines of release.lua and renew.lua: find the in-progress record that the token
-- owns, or reply for them.
--
-- KEYS[1]  the record     ARGV[1]  the owner's token (16 bytes)
--
-- Replies (only when the token does not own the record): 0 no in-progress record of this
-- token (none, a completed one, another owner's); -1 the value is not one of our records.
-- Otherwise `record` holds the owner's record and the script goes on.
--
-- The layout (record.rs): kind (1: 'P', 'C', 'Z'), token (16), fingerprint (32), time (13
-- digits), output.
local record = redis.pcall('GET', KEYS[1])
if not record then return 0 end
if type(record) == 'table' then return -1 end
local kind = string.sub(record, 1, 1)
if not ((kind == 'P' and #record == 62) or ((kind == 'C' or kind == 'Z') and #record >= 62))
    or not string.find(string.sub(record, 50, 62), '^%d+$') then
  return -1
end
if kind ~= 'P' or string.sub(record, 2, 17) ~= ARGV[1] then return 0 end
