-- tokenbridge policy store (SQLite): bindings, deny list, audit log.
-- Every write bumps store_state.revision in the same transaction; the new
-- revision is the etag of what it wrote, and replicas poll it for changes.

CREATE TABLE store_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO store_state (id, revision) VALUES (1, 0);

-- spec: the binding as JSON (name, service_accounts, role_arns, durations,
-- conditions, session_policy, managed_policy_arns).
CREATE TABLE bindings (
    name TEXT PRIMARY KEY NOT NULL,
    spec TEXT NOT NULL,
    revision INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- service_account: a unique ID or a lower-case email.
CREATE TABLE denied_service_accounts (
    service_account TEXT PRIMARY KEY NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL
);

-- before_json / after_json: the object before and after the change; NULL
-- when it did not exist.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    revision INTEGER NOT NULL,
    before_json TEXT,
    after_json TEXT
);
CREATE INDEX audit_log_by_target ON audit_log (target, id);
