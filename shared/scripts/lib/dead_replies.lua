-- lib/dead_replies: replies dead-lettered although WhatsApp may have them (their last attempt
-- went to WAHA and got no answer), noted in their conversation's history meta. Their echo may
-- come after the send's in-flight marker lapsed (it lives the echo wait, 60 s), and would then
-- be taken for a person writing from the business's phone (which pauses the bot): the note
-- lets outbox_dead_delivered.lua find the reply by the echo's text, in one field, for as long
-- as dead letters are kept.
-- The field holds a JSON array, oldest first, of at most DEAD_REPLIES_MAX notes {mid, at (when
-- it was dead-lettered), try (when its last attempt began), sha1 (of its text), letter (the
-- dead letter exactly as stored, removed by value)}: bounded however many replies die unseen.
-- Its name has no ':', so history_trim.lua's compaction (it drops `<mid>:<fact>` fields of
-- trimmed messages) keeps it; it goes with the meta hash (its expiry, an erase).
local DEAD_REPLIES_FIELD = 'dead_replies'
local DEAD_REPLIES_MAX = 16

-- dead_replies(meta_key, min_at): the conversation's notes dead-lettered at `min_at` or later
-- (older ones are past the dead letters' retention).
local function dead_replies(meta_key, min_at)
  local ok, notes = pcall(cjson.decode, redis.call('HGET', meta_key, DEAD_REPLIES_FIELD) or '[]')
  local kept = {}
  if ok and type(notes) == 'table' then
    for _, note in ipairs(notes) do
      if type(note) == 'table' and (tonumber(note['at']) or 0) >= min_at then
        kept[#kept + 1] = note
      end
    end
  end
  return kept
end

-- store_dead_replies(meta_key, notes): write `notes` back (none: the field goes; an empty Lua
-- table would encode as an object).
local function store_dead_replies(meta_key, notes)
  if #notes == 0 then
    redis.call('HDEL', meta_key, DEAD_REPLIES_FIELD)
  else
    redis.call('HSET', meta_key, DEAD_REPLIES_FIELD, cjson.encode(notes))
  end
end

-- note_dead_reply(meta_key, note, min_at): add `note`, dropping the expired and, past the
-- bound, the oldest.
local function note_dead_reply(meta_key, note, min_at)
  local notes = dead_replies(meta_key, min_at)
  notes[#notes + 1] = note
  while #notes > DEAD_REPLIES_MAX do
    table.remove(notes, 1)
  end
  store_dead_replies(meta_key, notes)
end
