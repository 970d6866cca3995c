//! Child processes for session channels: shells and exec under a pty
//! (portable-pty, blocking reads on threads) or as plain pipes, with an
//! environment built from scratch.
