//! The open-file limit (`RLIMIT_NOFILE`): every connection is a file descriptor, and the soft
//! limit most systems start processes with (1,024) is far below what a server facing many idle
//! keep-alive clients needs. Like Go's runtime, synchrod raises the soft limit to the hard limit
//! at startup ([`raise_nofile_limit`]); the HTTP edge sizes its connection cap from the result.
//!
//! This module holds the crate's only `unsafe` code: one function calling `getrlimit` and
//! `setrlimit`, for which no safe wrapper is in the dependency tree.

use std::io;

/// The soft and hard `RLIMIT_NOFILE` (`u64::MAX` for unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The limit in force.
    pub soft: u64,
    /// The ceiling an unprivileged process may raise the soft limit to.
    pub hard: u64,
}

/// Reads `RLIMIT_NOFILE`, after setting its soft value to `set_soft` when given.
#[allow(unsafe_code)]
fn rlimit_nofile(set_soft: Option<u64>) -> io::Result<NofileLimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live, properly aligned local
    // value and keeps no reference to it; RLIMIT_NOFILE is a valid resource on every Unix.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(soft) = set_soft {
        limit.rlim_cur = soft as libc::rlim_t;
        // SAFETY: `setrlimit` only reads the `rlimit` the pointer refers to, a live local value;
        // asking for more than the hard limit fails with EINVAL, which is returned, not UB.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // `rlim_t` is not `u64` on every platform.
    #[allow(clippy::unnecessary_cast)]
    Ok(NofileLimit { soft: limit.rlim_cur as u64, hard: limit.rlim_max as u64 })
}

/// The current `RLIMIT_NOFILE`.
pub fn nofile_limit() -> io::Result<NofileLimit> {
    rlimit_nofile(None)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at `ceiling`, since an "unlimited"
/// hard limit is not a number of descriptors anyone needs) and returns the limit now in force.
pub fn raise_nofile_limit(ceiling: u64) -> io::Result<NofileLimit> {
    let now = nofile_limit()?;
    let target = now.hard.min(ceiling);
    if target <= now.soft {
        return Ok(now);
    }
    rlimit_nofile(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_readable_and_raising_never_lowers_it() {
        let before = nofile_limit().unwrap();
        assert!(before.soft <= before.hard && before.soft > 0);
        // Raising to the current soft limit at most changes nothing (other tests share the
        // process, so the limit itself is left as it is).
        let after = raise_nofile_limit(before.soft).unwrap();
        assert_eq!(after, before);
    }
}
