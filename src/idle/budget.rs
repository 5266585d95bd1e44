//! How the open-file limit is shared out. Every descriptor the daemon can
//! hold at once is budgeted: parked clients (one each, and under Dovecot
//! the notify fds kept, which share the same room: the hand-off checks
//! both), control connections, hand-offs in progress, imap-master links
//! and descriptors waiting for the closing thread, plus a few fixed ones,
//! so that running out of descriptors is a refusal with a reason, not an
//! EMFILE in the middle of a hand-off.

use log::warn;

use super::closer;
use super::config::Config;

/// Control connections, hand-offs and imap-master links at most, when the
/// limit allows.
pub const MAX_CONTROLS: usize = 512;
pub const MAX_HAND_OFFS: usize = 512;
/// The default of `--master-connections`: the best of 8..128 in a
/// 450-client mass wake under Dovecot 2.3 (`imap-idle-lab mass-wake`),
/// though by little: Dovecot's master starting imap processes one at a
/// time sets the pace.
pub const MAX_MASTERS: usize = 16;
/// Standard streams, the poll, signalfd, inotify, the listeners, the
/// tracker link, Dovecot's pipes and a few to spare.
const FIXED: usize = 16;
/// Dovecot mode under its master adds anvil's pipe, the admin listener and
/// its connections (`admin_socket::MAX_CONNS`).
const DOVECOT_FIXED: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_parked: usize,
    pub controls: usize,
    pub hand_offs: usize,
    pub masters: usize,
    /// Descriptors the closing thread may have queued.
    pub closing: usize,
}

impl Budget {
    /// The shares for `limit` descriptors. The reserve is a sixteenth of
    /// the limit, at least 32, at most what the full caps need; when it is
    /// smaller than that, the caps shrink in proportion.
    #[cfg(test)]
    pub fn new(limit: usize, dovecot: bool) -> Budget {
        Budget::with_masters(limit, dovecot, MAX_MASTERS)
    }

    /// [`Budget::new`] with `masters` imap-master links wanted.
    pub fn with_masters(limit: usize, dovecot: bool, masters: usize) -> Budget {
        let want = MAX_CONTROLS + if dovecot { MAX_HAND_OFFS + masters } else { 0 };
        let fixed = FIXED + if dovecot { DOVECOT_FIXED } else { 0 };
        let reserve = (limit / 16).clamp(32, want + fixed).min(limit);
        let avail = reserve.saturating_sub(fixed);
        let share = |cap: usize| (cap * avail / want).max(1);
        // Beside the shares: a full closing queue is only a burst of wakes.
        let closing = if dovecot {
            (limit / 64).min(closer::QUEUE)
        } else {
            0
        };
        Budget {
            max_parked: limit.saturating_sub(reserve + closing).max(1),
            controls: share(MAX_CONTROLS),
            hand_offs: if dovecot { share(MAX_HAND_OFFS) } else { 0 },
            masters: if dovecot { share(masters) } else { 0 },
            closing,
        }
    }

    /// The shares for the limit we got, with what the operator asked for:
    /// a larger --max-parked is lowered (with a warning); --max-controls
    /// is taken as given (with a warning when it does not fit, since then
    /// descriptors can run out and accepting pauses).
    pub fn for_config(fd_limit: u64, cfg: &Config) -> Budget {
        let mut b = Budget::with_masters(fd_limit as usize, cfg.dovecot, cfg.master_connections);
        match cfg.max_parked {
            Some(n) if n > b.max_parked => warn!(
                "--max-parked {n} is more than the open-file limit allows \
                 ({fd_limit} fds); using {}",
                b.max_parked
            ),
            Some(n) => b.max_parked = n,
            None => {}
        }
        if cfg.dovecot && b.masters < cfg.master_connections {
            warn!(
                "--master-connections {} is more than the open-file limit leaves for them; \
                 using {}",
                cfg.master_connections, b.masters
            );
        }
        if let Some(n) = cfg.max_controls {
            if n > b.controls {
                warn!(
                    "--max-controls {n} is more than the open-file limit leaves for them \
                     ({}); beyond that, accepting pauses when descriptors run out",
                    b.controls
                );
            }
            b.controls = n;
        }
        b
    }

    /// Descriptors this budget can use at once.
    #[cfg(test)]
    pub fn total(&self, dovecot: bool) -> usize {
        let fixed = FIXED + if dovecot { DOVECOT_FIXED } else { 0 };
        self.max_parked + self.controls + self.hand_offs + self.masters + self.closing + fixed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_fits_in_the_limit() {
        for limit in [48, 64, 100, 1024, 4096, 20_000, 1 << 20] {
            for dovecot in [false, true] {
                let b = Budget::new(limit, dovecot);
                assert!(b.total(dovecot) <= limit + 2, "{limit} {dovecot}: {b:?}");
                assert!(b.controls >= 1 && b.max_parked >= 1);
            }
        }
    }

    #[test]
    fn full_caps_on_a_normal_limit() {
        let b = Budget::new(20_000, true);
        assert_eq!((b.controls, b.hand_offs, b.masters), (512, 512, 16));
        assert_eq!(b.closing, 256);
        // Kept notify fds take their room from here too (hand_off.rs).
        assert_eq!(b.max_parked, 20_000 - 1066 - 256);
        let b = Budget::new(20_000, false);
        assert_eq!((b.controls, b.max_parked), (512, 20_000 - 528));
        // A small limit: a reserve of 32 leaves 16 for parked connections.
        assert_eq!(Budget::new(48, false).max_parked, 16);
    }

    #[test]
    fn master_connections_as_asked_when_they_fit() {
        let b = Budget::with_masters(20_000, true, 8);
        assert_eq!(b.masters, 8);
        assert_eq!(b.max_parked, 20_000 - (512 + 512 + 8 + 16 + 10) - 256);
        assert!(b.total(true) <= 20_000);
        // On a tight limit they shrink with the other caps.
        let b = Budget::with_masters(1024, true, 256);
        assert!(b.masters < 256 && b.masters >= 1, "{b:?}");
        assert!(b.total(true) <= 1024 + 1);
    }
}
