//! Ctrl-C while a statement runs: cancel waiting for it, keep the shell.
//!
//! At the prompt rustyline has the terminal in raw mode, so Ctrl-C arrives as a key (it drops
//! the line being typed). While a request runs the terminal is back in its normal mode and
//! Ctrl-C raises SIGINT, which would end the process. The interactive shell therefore installs
//! a handler ([`install`]) that only sets a flag; whatever waits on the network polls it
//! ([`take`]) and gives up on the request. Piped input keeps the default (Ctrl-C ends a
//! script).
//!
//! Giving up on a request does not stop it on the server: a write may still be applied. The
//! message says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a wait looks at the flag.
pub const POLL: Duration = Duration::from_millis(50);

/// Set by the SIGINT handler, cleared by [`take`] and [`clear`].
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What a cancelled command reports.
pub const CANCELLED: &str =
    "cancelled (Ctrl-C): the shell stopped waiting, but a write may still take effect";

/// The SIGINT handler: sets the flag (an atomic store is async-signal-safe).
extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT set the flag instead of ending the process.
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; glibc's
    // signal() installs it with BSD semantics (SA_RESTART, not reset after delivery).
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// Whether Ctrl-C was pressed since the last look; clears the flag.
pub fn take() -> bool {
    INTERRUPTED.swap(false, Ordering::SeqCst)
}

/// Forgets a Ctrl-C pressed before the command that is about to run.
pub fn clear() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

/// Waits until Ctrl-C is pressed (and clears the flag).
pub async fn wait() {
    while !take() {
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serializes the tests that use the process-wide flag.
    pub(crate) static FLAG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Presses Ctrl-C, as far as the shell can tell: what the signal handler does.
    pub(crate) fn press() {
        on_sigint(libc::SIGINT);
    }

    #[test]
    fn the_flag_is_taken_once() {
        let _one = FLAG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clear();
        assert!(!take());
        press();
        assert!(take());
        assert!(!take());
        press();
        clear();
        assert!(!take());
    }
}
