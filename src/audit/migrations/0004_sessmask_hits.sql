-- How many secrets were masked in a session (output and command), set when
-- the session ends; the hits themselves are rows of mask_hits.
ALTER TABLE sessions ADD COLUMN mask_hits INTEGER NOT NULL DEFAULT 0;
-- `sessions show` lists a session's approvals.
CREATE INDEX approvals_session ON approvals(session_id);
