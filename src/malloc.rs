//! Process-wide allocator tuning for the data path, applied once when the
//! server starts.
//!
//! Why: profiling `ssh -L` bulk transfers (perf, bench/forward-vs-sshd.sh)
//! showed ~15% of the bastion's CPU in memset, page faults and page clearing
//! under glibc's malloc: packet-sized buffers above its mmap threshold are
//! mapped and unmapped on every allocation, and each fresh mapping is
//! faulted in and zeroed by the kernel. Keeping such blocks on the heap
//! (mmap threshold 16 MiB, trim threshold 64 MiB) cut sallyport's CPU per
//! forwarded byte from 1.44x to 1.12x of OpenSSH sshd's in the same run
//! (aes128-gcm, 512 MiB x 5; README, Benchmarks). Other libcs are left as
//! they are.

/// Apply the tuning (glibc only; a no-op elsewhere).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::tune();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    /// Blocks below this stay on the heap instead of their own mmap.
    const MMAP_THRESHOLD: libc::c_int = 16 * 1024 * 1024;
    /// Free heap top kept before it is returned to the kernel.
    const TRIM_THRESHOLD: libc::c_int = 64 * 1024 * 1024;

    pub fn tune() {
        // SAFETY: mallopt only sets allocator parameters; it is called once
        // at start-up, and glibc serialises it against allocations with the
        // arena locks. Failure (return 0) leaves glibc's defaults in place.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if !ok {
            tracing::warn!("mallopt refused the allocator tuning; glibc defaults stay");
        }
    }
}
