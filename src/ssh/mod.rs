//! The SSH server: accept loop (pre-auth deadline, unauthenticated-connection
//! cap, per-source limits), a thin russh handler, and one task per connection
//! that owns the session state.
