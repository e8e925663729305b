-- tokenbridge policy store (PostgreSQL): bindings, deny list, audit log.
-- Every write locks and bumps store_state.revision first (serialising
-- writers), and sends NOTIFY with the new revision in the same transaction;
-- the new revision is the etag of what it wrote.

CREATE TABLE store_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO store_state (id, revision) VALUES (1, 0);

-- spec: the binding as JSON text, byte for byte as written (name,
-- service_accounts, role_arns, durations, conditions, session_policy,
-- managed_policy_arns).
CREATE TABLE bindings (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- service_account: a unique ID or a lower-case email.
CREATE TABLE denied_service_accounts (
    service_account TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revision BIGINT NOT NULL
);

-- before_json / after_json: the object before and after the change; NULL
-- when it did not exist (text, so the audit keeps exactly what was written;
-- cast to jsonb to query it).
CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    revision BIGINT NOT NULL,
    before_json TEXT,
    after_json TEXT
);
CREATE INDEX audit_log_by_target ON audit_log (target, id);
