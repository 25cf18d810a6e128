-- Delete the in-progress record owned by a token. Runs after owned.lua, which found it.
--
-- KEYS[1]  the record     ARGV[1]  the owner's token (16 bytes)
--
-- Replies: 1 released; 0 the token does not own an in-progress record (a completed record
--          cannot be released); -1 the value is not one of our records.
redis.call('DEL', KEYS[1])
return 1
