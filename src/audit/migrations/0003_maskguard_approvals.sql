-- Approvals are polled by id and listed by status in creation order; with
-- 10,000 pending requests both must stay index lookups.
CREATE INDEX approvals_status_created ON approvals(status, created_at, id);
CREATE INDEX events_session ON events(session_id);
