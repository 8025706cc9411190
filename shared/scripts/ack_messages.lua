#!lua
-- ack_messages: the lease holder's acks of several handled messages that committed nothing,
-- oldest first, in one call (QueueConsumer.ack_later). Each message is acked exactly as
-- ack_message.lua acks one without writes (ack_head in lib/ack.lua): fenced, within the lease,
-- only as the head, and "already acked" first, so repeating a call whose answer was lost is safe.
-- Returns one code per message id, in order, with ack_head's meanings (1 acked; 2 or 3 already
-- acked; 0 fenced out; -1 lease expired; -2 not the head); it stops at the first -1 or -2,
-- which is then the last code: the messages after it stay queued. It goes on past a 0: a
-- fenced-out holder can change nothing, and a later message's 3 (the reaper kept its ack)
-- tells the caller that every message before it was acked too (acks go head first, in order).
-- KEYS[1..6]: the conversation's queue keys (ack_queue in lib/ack.lua).
local fence = ARGV[1]
-- ARGV[2..]: the message ids, oldest first.
--#include clock
--#include ack

local queue = ack_queue()
local now_ms = redis_now_ms()
local codes = {}
for i = 2, #ARGV do
  local code = ack_head(queue, fence, ARGV[i], now_ms)
  codes[#codes + 1] = code
  if code < 0 then
    break
  end
end
return codes
