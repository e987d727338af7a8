-- Conversations and their messages. PostgreSQL is the source of truth; Redis holds caches and the WAL stream.
CREATE TABLE conversations (
    id          text PRIMARY KEY,
    -- Set only for conversations keyed by their room name (not for ones named in room metadata), so a reused
    -- room name finds its own latest conversation and nothing else.
    room        text,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'interrupted', 'ended')),
    status_at   timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Newest message that reached PostgreSQL around Redis (Redis down, or a spool import). Resume trusts a
    -- Redis list only if it holds this message or is newer than it.
    bypass_id   uuid
);
CREATE INDEX conversations_room ON conversations (room, created_at DESC) WHERE room IS NOT NULL;

CREATE TABLE messages (
    conversation_id text NOT NULL,
    id              uuid NOT NULL,  -- UUIDv7, made by the writer: sorts by time, makes writes idempotent
    role            text NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    participant     text NOT NULL,
    content         text NOT NULL,
    created_at      timestamptz NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}',
    -- The key's index scanned backwards gives "the last N of a conversation".
    PRIMARY KEY (conversation_id, id)
);
