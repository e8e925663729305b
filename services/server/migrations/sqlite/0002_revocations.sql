-- Revocations of cached credentials (RevokeCachedCredentials): every replica
-- stops handing out the cached credentials of this service account (unique
-- ID), this role, or the pair, that it obtained before it loaded the
-- revision that wrote the row. Rows older than the longest credential
-- lifetime plus a margin match nothing still cached: loads skip them and the
-- next revocation deletes them (the audit log keeps them).

CREATE TABLE revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    unique_id TEXT,
    role_arn TEXT,
    revoked_at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    revision INTEGER NOT NULL,
    CHECK (unique_id IS NOT NULL OR role_arn IS NOT NULL)
);
CREATE INDEX revocations_by_time ON revocations (revoked_at_ms);
