-- sallyport audit schema, version 1. Append-only by convention: rows are
-- inserted and (for open things: connections, sessions, forwards, approvals)
-- closed once with their end facts; nothing is deleted.

CREATE TABLE connections (
    id           TEXT PRIMARY KEY,            -- uuid v7
    peer         TEXT NOT NULL,               -- ip:port
    started_at   TEXT NOT NULL,               -- RFC 3339 UTC
    ended_at     TEXT,
    user         TEXT,                        -- login name once authenticated
    identity     TEXT,                        -- Identity JSON once authenticated
    key_id       TEXT,
    serial       INTEGER,
    end_reason   TEXT
);

CREATE TABLE auth_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    connection_id TEXT,
    peer         TEXT NOT NULL,
    user         TEXT NOT NULL,
    method       TEXT NOT NULL,               -- publickey | certificate | none ...
    fingerprint  TEXT,                        -- SHA256:... of the key
    key_id       TEXT,
    serial       INTEGER,
    result       TEXT NOT NULL,               -- accepted | rejected
    reason       TEXT NOT NULL
);
CREATE INDEX auth_attempts_at ON auth_attempts(at);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,           -- uuid v7, also SALLYPORT_SESSION_ID
    connection_id TEXT NOT NULL,
    channel       INTEGER NOT NULL,
    user          TEXT NOT NULL,
    identity      TEXT NOT NULL,              -- Identity JSON
    subject       TEXT NOT NULL,
    on_behalf_of  TEXT,
    kind          TEXT NOT NULL,              -- shell | exec
    command       TEXT,                       -- masked
    pty           INTEGER NOT NULL DEFAULT 0,
    term          TEXT,
    cols          INTEGER,
    rows          INTEGER,
    started_at    TEXT NOT NULL,
    ended_at      TEXT,
    exit_status   INTEGER,
    exit_signal   TEXT,
    bytes_in      INTEGER NOT NULL DEFAULT 0,
    bytes_out     INTEGER NOT NULL DEFAULT 0,
    recording     TEXT,                       -- path of the asciicast file
    end_reason    TEXT
);
CREATE INDEX sessions_started ON sessions(started_at);

-- Anything notable inside a session or connection: denied requests
-- (agent/x11/subsystem/-R), blocked or approved commands, env refused,
-- recording failures.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    connection_id TEXT,
    session_id    TEXT,
    kind          TEXT NOT NULL,              -- e.g. request-denied, command-blocked, command-allowed, recording-failed
    subject       TEXT,
    detail        TEXT NOT NULL,              -- masked
    decision      TEXT,                       -- allow | approve | deny
    reason        TEXT                        -- policy reason
);
CREATE INDEX events_kind ON events(kind, at);

CREATE TABLE mask_hits (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    session_id    TEXT,
    source        TEXT NOT NULL,              -- output | input | command | kube-body
    detector      TEXT NOT NULL,
    offset        INTEGER NOT NULL            -- byte offset in the stream
);
CREATE INDEX mask_hits_session ON mask_hits(session_id);

CREATE TABLE certificates (
    serial        INTEGER PRIMARY KEY,
    issued_at     TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    issuer        TEXT NOT NULL,
    identity      TEXT NOT NULL,              -- Identity JSON
    principals    TEXT NOT NULL,              -- JSON array
    valid_after   TEXT NOT NULL,
    valid_before  TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,              -- of the certified public key
    token_jti     TEXT,
    token_iat     INTEGER,
    source        TEXT                        -- ip of the requester, or 'cli'
);
CREATE INDEX certificates_subject ON certificates(subject);
CREATE INDEX certificates_key_id ON certificates(key_id);

CREATE TABLE revocations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    serial        INTEGER,                    -- exactly one of serial / key_id / subject
    key_id        TEXT,
    subject       TEXT,
    reason        TEXT
);
CREATE INDEX revocations_serial ON revocations(serial);

CREATE TABLE forwards (
    id            TEXT PRIMARY KEY,
    connection_id TEXT NOT NULL,
    subject       TEXT,
    kind          TEXT NOT NULL,              -- local | remote | agent | x11 | streamlocal
    target        TEXT NOT NULL,              -- as requested host:port
    resolved      TEXT,                       -- address actually used
    decision      TEXT NOT NULL,
    reason        TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    ended_at      TEXT,
    bytes_up      INTEGER NOT NULL DEFAULT 0,
    bytes_down    INTEGER NOT NULL DEFAULT 0,
    end_reason    TEXT
);

CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    created_at    TEXT NOT NULL,
    requester     TEXT NOT NULL,              -- Identity JSON
    subject       TEXT NOT NULL,
    on_behalf_of  TEXT,
    session_id    TEXT,
    kind          TEXT NOT NULL,              -- exec | line | forward | kube
    request       TEXT NOT NULL,              -- masked command / target
    reason        TEXT NOT NULL,              -- policy rule that asked for approval
    status        TEXT NOT NULL,              -- pending | approved | denied | expired | withdrawn
    decided_at    TEXT,
    decided_by    TEXT,
    decision_note TEXT,
    expires_at    TEXT NOT NULL
);
CREATE INDEX approvals_status ON approvals(status);

CREATE TABLE kube_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    connection_id TEXT,
    subject       TEXT,
    identity      TEXT,
    verb          TEXT NOT NULL,
    api_group     TEXT,
    resource      TEXT,
    subresource   TEXT,
    namespace     TEXT,
    name          TEXT,
    path          TEXT NOT NULL,
    decision      TEXT NOT NULL,
    reason        TEXT NOT NULL,
    status        INTEGER,
    bytes_in      INTEGER NOT NULL DEFAULT 0,
    bytes_out     INTEGER NOT NULL DEFAULT 0,
    latency_ms    INTEGER,
    secret_read   INTEGER NOT NULL DEFAULT 0,
    body          TEXT                        -- masked request body of writes
);

CREATE TABLE api_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    peer          TEXT NOT NULL,
    route         TEXT NOT NULL,
    subject       TEXT,
    status        INTEGER NOT NULL,
    reason        TEXT NOT NULL
);
