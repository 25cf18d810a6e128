-- Compare-and-set of a mark (producer-sequence deduplication): a small value apart from the
-- records, replaced whole when it still holds what the caller read.
--
-- KEYS[1]  the mark       ARGV[1]  '1' when a value is expected, '0' when there must be none
-- ARGV[2]  the expected value       ARGV[3]  the new value       ARGV[4]  its TTL (ms)
--
-- Replies: 1 replaced; 0 the mark holds something else (nothing changed).
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
    if current ~= ARGV[2] then
        return 0
    end
elseif current then
    return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
