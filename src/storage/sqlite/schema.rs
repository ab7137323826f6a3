//! The chat database's schema: its migrations, in order (`PRAGMA user_version` counts those
//! applied; a database from a newer release is refused).

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the chat schema.
    "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE members (
        conversation TEXT NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (conversation, user)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user, conversation);
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        conversation TEXT NOT NULL,
        sender TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages (conversation, seq);
    -- state: 0 pending, 1 in_flight (claimed_at set), 2 delivered, 3 dead-lettered.
    CREATE TABLE deliveries (
        recipient TEXT NOT NULL,
        message_seq INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        claimed_at INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (recipient, message_seq)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_in_flight ON deliveries (claimed_at) WHERE state = 1;
    CREATE TABLE dead_letters (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        payload TEXT NOT NULL,
        at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: how far an external search engine has indexed (the embedded index keeps its own).
    "CREATE TABLE search_progress (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: SFU rooms an operator opened to every authenticated user (`POST /admin/rooms`).
    "CREATE TABLE rooms (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 4: a recipient's undelivered records without reading past the delivered ones (backlog
    // replays, the delivery backstop): nearly all of a long-lived user's records are delivered.
    // Queries name it (`INDEXED BY`: without statistics the planner takes the primary key, which
    // reads the delivered records too) and `state IN (0, 1)` literally, as a partial index needs.
    "CREATE INDEX deliveries_undelivered ON deliveries (recipient, message_seq) WHERE state IN (0, 1);",
    // 5: which instance runs each open SFU room (one process on SQLite, but the same contract
    // as on a shared MongoDB).
    "CREATE TABLE room_leases (
        room TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        address TEXT NOT NULL,
        token TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
];
