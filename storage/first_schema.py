"""Migration 1: the whole first schema, every table Flywheel started with.

Kept apart from the later migrations (storage/migrations.py) only for length; the text
is applied as written and, like every released migration, never changes.
"""

FIRST_SCHEMA = """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'curator', 'admin')),
        password_hash TEXT,
        consent INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        key_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        revoked_at TEXT
    );
    CREATE TABLE adapters (
        id TEXT PRIMARY KEY,
        base_model TEXT NOT NULL,
        method TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'candidate'
            CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
        parent_id TEXT REFERENCES adapters(id),
        run_id TEXT,
        metrics TEXT NOT NULL DEFAULT '{}',
        path TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    -- At most one adapter serves by default at any time.
    CREATE UNIQUE INDEX adapters_one_active ON adapters(status) WHERE status = 'active';
    CREATE TABLE promotions (
        id INTEGER PRIMARY KEY,
        adapter_id TEXT REFERENCES adapters(id),  -- NULL: back to the bare base model
        action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
        reason TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE training_runs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL DEFAULT 'running'
            CHECK (status IN ('running', 'succeeded', 'failed')),
        base_model TEXT NOT NULL,
        method TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '{}',
        manifest TEXT NOT NULL DEFAULT '{}',
        metrics TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        adapter_id TEXT REFERENCES adapters(id),
        started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        finished_at TEXT
    );
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        user_id INTEGER REFERENCES users(id),
        title TEXT,
        system_prompt TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        deleted_at TEXT
    );
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        parent_id TEXT REFERENCES messages(id),  -- siblings = regenerations or edited turns
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        model TEXT,
        adapter_id TEXT REFERENCES adapters(id),  -- NULL: the bare base model answered
        params TEXT,                              -- generation parameters, JSON
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_ms REAL,
        finish_reason TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX messages_conversation ON messages(conversation_id);
    CREATE INDEX messages_parent ON messages(parent_id);
    CREATE INDEX messages_adapter ON messages(adapter_id);
    CREATE TABLE ratings (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        rater_id INTEGER REFERENCES users(id),
        rating TEXT CHECK (rating IN ('up', 'down')),
        score INTEGER CHECK (score BETWEEN 1 AND 5),
        reasons TEXT NOT NULL DEFAULT '[]',
        comment TEXT,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX ratings_message ON ratings(message_id);
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        author_id INTEGER REFERENCES users(id),
        content TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX corrections_message ON corrections(message_id);
    CREATE TABLE flags (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        kind TEXT NOT NULL CHECK (kind IN ('pii', 'unsafe', 'no_consent')),
        author_id INTEGER REFERENCES users(id),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    """
