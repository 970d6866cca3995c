//! asciicast v2 recording: one file per shell/exec channel, header plus "o",
//! "i", "r" and "m" events, each written and flushed as it happens.
