//! Guards on what runs: splitting exec commands and typed lines into simple
//! commands ([`CommandLine`]), tracking the line a user types in a pty shell,
//! and just-in-time approvals. Matching against rules is the policy's job
//! (`policy::Policy::exec`).
//!
//! - [`parse`]: exec command strings -> [`CommandLine`].
//! - [`line`]: the line a user is about to submit in a pty shell.
//! - [`approval`]: pending just-in-time approval requests and waiting on them.

pub mod approval;
pub mod line;
pub mod parse;

/// A command as the guard understood it: every simple command it contains
/// (after unwrapping `sh -c`, `env`, `sudo`, `$(..)`, ...), each as argv with
/// the program name normalised (basename of absolute paths).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandLine {
    /// The original text (as received; mask before storing it).
    pub raw: String,
    /// Each simple command's argv.
    pub simple: Vec<Vec<String>>,
    /// Constructs the parser cannot see into (`eval`, decoded pipes into a
    /// shell, unbalanced quotes), one reason each: strict roles deny these.
    /// Reasons may quote up to 80 bytes of the command: mask before storing.
    pub opaque: Vec<String>,
}
