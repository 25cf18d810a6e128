-- Claim a key in one round trip: the script form of `SET key record NX GET PX lease`, for
-- servers older than Redis 7.0 (which refuse `NX` with `GET`). Same effect, same replies.
--
-- KEYS[1]  the record
-- ARGV[1]  a new in-progress record (62 bytes: 'P' token fingerprint lease_until)
-- ARGV[2]  lease (ms): the record's time to live, so Redis frees the key when it passes
--
-- Replies
--   0                   acquired (the key was free)
--   record (a string)   the key's record, unchanged (completed or in progress; the client
--                       decodes it and reports anything that is not ours as corrupt)
--   -1                  the key holds another Redis type
local record = redis.pcall('GET', KEYS[1])
if record then
  if type(record) == 'table' then return -1 end
  return record
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
