#!lua
-- release_conversation: the holder ends its turn. A conversation with messages left goes back
-- to the ready list — at the back after a normal turn (fairness: a chat with a long backlog
-- gets at most one batch per turn), at the front when handed back unhandled (shutdown). One
-- with none left becomes idle: its meta is deleted (the fence lives on in the shard's counter).
-- KEYS[1..5]: as release_turn (lib/turn_end.lua) reads them.
-- ARGV: the conversation's token, the holder's fence, 'front' or 'back'.
-- Returns 1 released; 0 not ours any more (fenced out, or already released by a retried call).
--#include turn_end

return release_turn(ARGV[1], ARGV[2], ARGV[3] == 'front')
