"""The schema's numbered migrations, oldest first: the SQL only.

`storage.db.init_db` applies each one not yet applied, in order, inside one transaction
each. A database never runs a migration it has applied again, so a released one never
changes: a change to the schema is a new migration.
"""

from storage.first_schema import FIRST_SCHEMA

# The rating that counts for an answer: a curator's (or admin's, or the local owner's) over
# any user's, the latest among equals; a disabled user's ratings do not count. The score is the
# latest one given. These recount one answer's judgement from its ratings, corrections and flags
# (a handful of rows, by index): triggers run them in the transaction that changed them.
_COUNTING = """
    UPDATE judgements SET
        (rating, by_curator, reasons, rated_at) = (
            SELECT r.rating, (r.rater_id IS NULL OR u.role IN ('curator', 'admin')) AS curator,
                   r.reasons, r.created_at
            FROM ratings r LEFT JOIN users u ON u.id = r.rater_id
            WHERE r.message_id = judgements.message_id AND r.rating IS NOT NULL
                  AND NOT COALESCE(u.disabled, 0)
            ORDER BY curator DESC, r.id DESC LIMIT 1),
        score = (
            SELECT r.score FROM ratings r LEFT JOIN users u ON u.id = r.rater_id
            WHERE r.message_id = judgements.message_id AND r.score IS NOT NULL
                  AND NOT COALESCE(u.disabled, 0)
            ORDER BY r.id DESC LIMIT 1)"""
_RECOUNT = {
    "recount_ratings": _COUNTING,
    "recount_correction": """
    UPDATE judgements SET correction_id =
        (SELECT MAX(id) FROM corrections WHERE message_id = judgements.message_id)""",
    "recount_flags": """
    UPDATE judgements SET flags = (SELECT group_concat(kind, ',') FROM
        (SELECT DISTINCT kind FROM flags WHERE message_id = judgements.message_id ORDER BY kind))""",  # noqa: E501
}

MIGRATIONS: list[str] = [
    FIRST_SCHEMA,  # 1: the whole first schema.
    # 2: what the server did with each promoted adapter (swapped in, or refused and why).
    """
    CREATE TABLE adapter_events (
        id INTEGER PRIMARY KEY,
        adapter_id TEXT NOT NULL REFERENCES adapters(id),
        event TEXT NOT NULL CHECK (event IN ('served', 'refused')),
        detail TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX adapter_events_adapter ON adapter_events(adapter_id);
    CREATE INDEX api_keys_user ON api_keys(user_id);
    """,
    # 3: signed-in browser sessions, and curators' side-by-side picks.
    """
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE comparisons (
        id INTEGER PRIMARY KEY,
        prompt_id TEXT NOT NULL REFERENCES messages(id),   -- the user turn both answered
        answer_a TEXT NOT NULL REFERENCES messages(id),
        answer_b TEXT NOT NULL REFERENCES messages(id),
        winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie')),
        curator_id INTEGER REFERENCES users(id),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX flags_message ON flags(message_id);
    """,
    # 4: a training run's live progress and starting point; A/B splits of new conversations.
    """
    ALTER TABLE training_runs ADD COLUMN progress TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE training_runs ADD COLUMN start_from TEXT;  -- NULL: the base model; else an adapter
    CREATE TABLE ab_tests (
        id INTEGER PRIMARY KEY,
        candidate_id TEXT NOT NULL REFERENCES adapters(id),
        share REAL NOT NULL CHECK (share > 0 AND share < 1),
        started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        ended_at TEXT,
        reason TEXT
    );
    -- At most one split runs at a time.
    CREATE UNIQUE INDEX ab_tests_one_running ON ab_tests((ended_at IS NULL)) WHERE ended_at IS NULL;
    CREATE INDEX ratings_created ON ratings(created_at);
    """,
    # 5: a year of feedback. Each answer's latest judgement (the rating that counts, score,
    # correction, flags) kept current by triggers in the writing transaction, so the review
    # queue and the trainer read one row per answer instead of scanning every rating; daily
    # thumbs per adapter for the plots; a conversation's last activity for its list; indexes
    # for keyset paging and retention.
    """
    ALTER TABLE conversations ADD COLUMN updated_at TEXT;
    UPDATE conversations SET updated_at = COALESCE(
        (SELECT MAX(created_at) FROM messages WHERE conversation_id = conversations.id),
        created_at);
    CREATE INDEX conversations_recent ON conversations(user_id, updated_at DESC, id DESC)
        WHERE deleted_at IS NULL;
    CREATE INDEX conversations_updated ON conversations(updated_at);
    CREATE TRIGGER conversations_touch_new AFTER INSERT ON conversations
        WHEN NEW.updated_at IS NULL BEGIN
        UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.id;
    END;
    CREATE TRIGGER messages_touch AFTER INSERT ON messages BEGIN
        UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.conversation_id;
    END;

    CREATE TABLE judgements (
        message_id TEXT PRIMARY KEY REFERENCES messages(id),
        conversation_id TEXT NOT NULL,
        parent_id TEXT,
        adapter_id TEXT,
        created_at TEXT NOT NULL,           -- the answer's
        rating TEXT,                        -- the rating that counts (see _COUNTING below)
        by_curator INTEGER,
        reasons TEXT,
        rated_at TEXT,
        score INTEGER,                      -- the latest 1-5 score
        correction_id INTEGER,              -- the latest correction
        flags TEXT,                         -- 'no_consent,pii': sorted, NULL when none
        reviewed INTEGER GENERATED ALWAYS AS
            (score IS NOT NULL OR correction_id IS NOT NULL OR flags IS NOT NULL) VIRTUAL,
        rank INTEGER GENERATED ALWAYS AS                      -- the review queue's order
            (CASE rating WHEN 'down' THEN 0 WHEN 'up' THEN 2 ELSE 1 END) VIRTUAL
    ) WITHOUT ROWID;
    INSERT INTO judgements (message_id, conversation_id, parent_id, adapter_id, created_at)
        SELECT id, conversation_id, parent_id, adapter_id, created_at FROM messages
        WHERE role = 'assistant';
    CREATE INDEX ratings_rater ON ratings(rater_id);
    {recount_ratings} WHERE message_id IN (SELECT message_id FROM ratings);
    {recount_correction} WHERE message_id IN (SELECT message_id FROM corrections);
    {recount_flags} WHERE message_id IN (SELECT message_id FROM flags);
    -- Queue pages: one index per filter combination, each in the queue's order.
    CREATE INDEX judgements_queue ON judgements(rank, created_at DESC, message_id DESC);
    CREATE INDEX judgements_queue_adapter
        ON judgements(rank, adapter_id, created_at DESC, message_id DESC);
    CREATE INDEX judgements_queue_reviewed
        ON judgements(rank, reviewed, created_at DESC, message_id DESC);
    CREATE INDEX judgements_queue_adapter_reviewed
        ON judgements(rank, adapter_id, reviewed, created_at DESC, message_id DESC);
    -- A time window of answers (the A/B report); the trainer's stream of judged answers;
    -- answers to one question that were rated (liked vs disliked pairs).
    CREATE INDEX judgements_window ON judgements(created_at, adapter_id, rating);
    CREATE INDEX judgements_judged ON judgements(created_at, message_id)
        WHERE rating IS NOT NULL OR score IS NOT NULL OR correction_id IS NOT NULL;
    CREATE INDEX judgements_rated_siblings ON judgements(parent_id, rating)
        WHERE rating IS NOT NULL;

    CREATE TABLE thumbs_daily (
        adapter TEXT NOT NULL,              -- '' for the bare base model
        day TEXT NOT NULL,                  -- the answers' day, YYYY-MM-DD (UTC)
        answers INTEGER NOT NULL DEFAULT 0,
        up INTEGER NOT NULL DEFAULT 0,
        down INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (adapter, day)
    ) WITHOUT ROWID;
    INSERT INTO thumbs_daily (adapter, day, answers, up, down)
        SELECT COALESCE(adapter_id, ''), substr(created_at, 1, 10), COUNT(*),
               SUM(rating IS 'up'), SUM(rating IS 'down')
        FROM judgements GROUP BY 1, 2;

    CREATE TRIGGER messages_judgement AFTER INSERT ON messages
        WHEN NEW.role = 'assistant' BEGIN
        INSERT INTO judgements (message_id, conversation_id, parent_id, adapter_id, created_at)
            VALUES (NEW.id, NEW.conversation_id, NEW.parent_id, NEW.adapter_id, NEW.created_at);
        INSERT INTO thumbs_daily (adapter, day, answers)
            VALUES (COALESCE(NEW.adapter_id, ''), substr(NEW.created_at, 1, 10), 1)
            ON CONFLICT (adapter, day) DO UPDATE SET answers = answers + 1;
    END;
    CREATE TRIGGER ratings_judgement AFTER INSERT ON ratings BEGIN
        {recount_ratings} WHERE message_id = NEW.message_id;
    END;
    CREATE TRIGGER ratings_gone AFTER DELETE ON ratings BEGIN
        {recount_ratings} WHERE message_id = OLD.message_id;
    END;
    CREATE TRIGGER corrections_judgement AFTER INSERT ON corrections BEGIN
        {recount_correction} WHERE message_id = NEW.message_id;
    END;
    CREATE TRIGGER corrections_gone AFTER DELETE ON corrections BEGIN
        {recount_correction} WHERE message_id = OLD.message_id;
    END;
    CREATE TRIGGER flags_judgement AFTER INSERT ON flags BEGIN
        {recount_flags} WHERE message_id = NEW.message_id;
    END;
    CREATE TRIGGER flags_gone AFTER DELETE ON flags BEGIN
        {recount_flags} WHERE message_id = OLD.message_id;
    END;
    -- A new role or a disabled account changes which of that user's ratings count.
    CREATE TRIGGER users_judgements AFTER UPDATE OF role, disabled ON users BEGIN
        {recount_ratings}
            WHERE message_id IN (SELECT message_id FROM ratings WHERE rater_id = NEW.id);
    END;
    CREATE TRIGGER judgements_thumbs AFTER UPDATE OF rating ON judgements
        WHEN OLD.rating IS NOT NEW.rating BEGIN
        UPDATE thumbs_daily SET up = up - (OLD.rating IS 'up') + (NEW.rating IS 'up'),
                                down = down - (OLD.rating IS 'down') + (NEW.rating IS 'down')
            WHERE adapter = COALESCE(NEW.adapter_id, '') AND day = substr(NEW.created_at, 1, 10);
    END;
    CREATE TRIGGER judgements_gone AFTER DELETE ON judgements BEGIN
        UPDATE thumbs_daily SET answers = answers - 1, up = up - (OLD.rating IS 'up'),
                                down = down - (OLD.rating IS 'down')
            WHERE adapter = COALESCE(OLD.adapter_id, '') AND day = substr(OLD.created_at, 1, 10);
    END;

    ALTER TABLE training_runs ADD COLUMN examples INTEGER;  -- the manifest's count, unparsed
    UPDATE training_runs SET examples = json_extract(manifest, '$.count');
    CREATE INDEX training_runs_started ON training_runs(started_at, id);
    CREATE INDEX adapters_created ON adapters(created_at, id);
    CREATE INDEX adapter_events_refused ON adapter_events(event, adapter_id);
    CREATE INDEX comparisons_prompt ON comparisons(prompt_id);
    CREATE INDEX sessions_expiry ON sessions(expires_at);
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE INDEX api_keys_user_id ON api_keys(user_id, id);
    """.format(**_RECOUNT),
    # 6: answers being generated, written as they stream (at a bounded rate), so a server
    # killed mid-answer keeps what it had: the next start stores them as `interrupted`.
    """
    CREATE TABLE partial_answers (
        id TEXT PRIMARY KEY,                  -- the answer's message id, chosen up front
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        parent_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        content TEXT NOT NULL DEFAULT '',
        model TEXT,
        adapter_id TEXT,
        params TEXT,
        prompt_tokens INTEGER,
        started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    """,
    # 7: blind side-by-side picks: "both bad" kept apart from a tie, the curator's reason, and
    # which answer was shown first (to see a position bias). SQLite cannot change a CHECK in
    # place, so the table is rebuilt, as its documentation describes.
    """
    CREATE TABLE comparisons_new (
        id INTEGER PRIMARY KEY,
        prompt_id TEXT NOT NULL REFERENCES messages(id),
        answer_a TEXT NOT NULL REFERENCES messages(id),
        answer_b TEXT NOT NULL REFERENCES messages(id),
        winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
        reason TEXT,
        shown_first TEXT CHECK (shown_first IN ('a', 'b')),
        curator_id INTEGER REFERENCES users(id),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    INSERT INTO comparisons_new (id, prompt_id, answer_a, answer_b, winner, curator_id,
                                 created_at)
        SELECT id, prompt_id, answer_a, answer_b, winner, curator_id, created_at
        FROM comparisons;
    DROP TABLE comparisons;
    ALTER TABLE comparisons_new RENAME TO comparisons;
    CREATE INDEX comparisons_prompt ON comparisons(prompt_id);
    """,
    # 8: feedback given per day, of each kind, kept current on write like thumbs_daily: the
    # admin's plots read a few hundred rows whatever the history. Counts only (no text, no
    # user), so they stay when a conversation is erased: the day's work was done.
    """
    CREATE TABLE feedback_daily (
        day TEXT NOT NULL,                  -- the day it was given, YYYY-MM-DD (UTC)
        kind TEXT NOT NULL CHECK (kind IN ('thumbs', 'score', 'correction', 'comparison')),
        count INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, kind)
    ) WITHOUT ROWID;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'thumbs', COUNT(*) FROM ratings
        WHERE rating IS NOT NULL GROUP BY 1;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'score', COUNT(*) FROM ratings
        WHERE score IS NOT NULL GROUP BY 1;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'correction', COUNT(*) FROM corrections GROUP BY 1;
    INSERT INTO feedback_daily (day, kind, count)
        SELECT substr(created_at, 1, 10), 'comparison', COUNT(*) FROM comparisons GROUP BY 1;
    CREATE TRIGGER ratings_daily AFTER INSERT ON ratings BEGIN
        INSERT INTO feedback_daily (day, kind, count)
            SELECT substr(NEW.created_at, 1, 10), 'thumbs', 1 WHERE NEW.rating IS NOT NULL
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
        INSERT INTO feedback_daily (day, kind, count)
            SELECT substr(NEW.created_at, 1, 10), 'score', 1 WHERE NEW.score IS NOT NULL
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER corrections_daily AFTER INSERT ON corrections BEGIN
        INSERT INTO feedback_daily (day, kind, count)
            VALUES (substr(NEW.created_at, 1, 10), 'correction', 1)
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER comparisons_daily AFTER INSERT ON comparisons BEGIN
        INSERT INTO feedback_daily (day, kind, count)
            VALUES (substr(NEW.created_at, 1, 10), 'comparison', 1)
            ON CONFLICT (day, kind) DO UPDATE SET count = count + 1;
    END;
    CREATE INDEX promotions_created ON promotions(created_at);
    """,
    # 9: deleted conversations, found without reading the others (the queue's counts leave
    # their answers out; there are few, as `flywheel prune` erases them nightly).
    """
    CREATE INDEX conversations_deleted ON conversations(deleted_at) WHERE deleted_at IS NOT NULL;
    """,
    # 10: the words of every message, for the conversation list's search (storage/chat.py
    # `list_conversations`), tagged with the owner of its conversation ("u17", "unone" for
    # the local owner), so FTS5 itself intersects a person's messages with the words and a
    # common word costs what that person wrote, not what everyone did. Contentless: the text
    # stays in `messages` only; triggers keep the index current in the writer's transaction
    # (a delete must repeat what was indexed, and messages go before their conversation).
    # Messages keep their rowids: nothing here VACUUMs, and `flywheel backup` copies pages.
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, owner, content='', tokenize='unicode61 remove_diacritics 2');
    INSERT INTO messages_fts (rowid, content, owner)
        SELECT m.rowid, m.content, 'u' || COALESCE(c.user_id, 'none')
        FROM messages m JOIN conversations c ON c.id = m.conversation_id;
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content, owner) VALUES (NEW.rowid, NEW.content,
            (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
             WHERE id = NEW.conversation_id));
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content, owner) VALUES ('delete',
            OLD.rowid, OLD.content, (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
                                     WHERE id = OLD.conversation_id));
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content, owner) VALUES ('delete',
            OLD.rowid, OLD.content, (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
                                     WHERE id = OLD.conversation_id));
        INSERT INTO messages_fts (rowid, content, owner) VALUES (NEW.rowid, NEW.content,
            (SELECT 'u' || COALESCE(user_id, 'none') FROM conversations
             WHERE id = NEW.conversation_id));
    END;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
