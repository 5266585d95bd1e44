//! The operator's knobs on the core: the keepalive clamp (battery against
//! NAT timeouts), how long a woken connection may wait for the return path
//! before it is given up, and the backoff between refused returns. The
//! defaults are Dovecot imap-hibernate's figures, which the core used as
//! constants before they became flags.

use super::timers::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Keepalives at least this far apart, in seconds.
    pub keepalive_min_secs: u32,
    /// At most this far apart; `None` leaves the session's interval (and a
    /// session without keepalives) alone.
    pub keepalive_max_secs: Option<u32>,
    /// A client that typed is waiting for an answer...
    pub give_up_with_input_ms: Millis,
    /// ...one woken by a mailbox change can wait longer.
    pub give_up_without_input_ms: Millis,
    /// At shutdown, how long the return path gets to take everyone back.
    pub give_up_at_shutdown_ms: Millis,
    pub backoff_min_ms: Millis,
    pub backoff_max_ms: Millis,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            keepalive_min_secs: 1,
            keepalive_max_secs: None,
            give_up_with_input_ms: 10_000,
            give_up_without_input_ms: 5 * 60_000,
            give_up_at_shutdown_ms: 30_000,
            backoff_min_ms: 100,
            backoff_max_ms: 2000,
        }
    }
}

impl Tuning {
    /// The defaults, with Dovecot's return deadlines under `--dovecot`,
    /// where the return path is imap-master. Dovecot's own imap-hibernate
    /// gives a return 10 s (the client typed) or 5 min (a mailbox change)
    /// to connect there, then 30 s more for the answer; its connects
    /// succeed at once, since the master's backlog is the imap service's
    /// whole capacity, so a return waits its turn inside the kernel with
    /// those 30 s. Ours wait their turn in our own queue
    /// (`--master-connections`), so our deadlines, which count from the
    /// wake, are the sums: with the native 10 s a burst of DONEs that
    /// Dovecot 2.4.1's master serves within 20 s was cut short with BYEs.
    pub fn defaults(dovecot: bool) -> Tuning {
        const ANSWER_MS: Millis = 30_000;
        let native = Tuning::default();
        if !dovecot {
            return native;
        }
        Tuning {
            give_up_with_input_ms: 10_000 + ANSWER_MS,
            give_up_without_input_ms: 5 * 60_000 + ANSWER_MS,
            ..native
        }
    }

    /// Every value non-zero, every minimum at most its maximum; the error
    /// names the flags concerned.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            (self.keepalive_min_secs as u64, "--keepalive-min"),
            (
                self.keepalive_max_secs.map_or(1, u64::from),
                "--keepalive-max",
            ),
            (self.give_up_with_input_ms, "--return-timeout-input"),
            (self.give_up_without_input_ms, "--return-timeout-change"),
            (self.give_up_at_shutdown_ms, "--return-timeout-shutdown"),
            (self.backoff_min_ms, "--return-retry-min"),
            (self.backoff_max_ms, "--return-retry-max"),
        ];
        if let Some((_, flag)) = zero.iter().find(|(v, _)| *v == 0) {
            return Err(format!("{flag} must be more than 0"));
        }
        if let Some(max) = self
            .keepalive_max_secs
            .filter(|m| *m < self.keepalive_min_secs)
        {
            return Err(format!(
                "--keepalive-min ({}) is above --keepalive-max ({max})",
                self.keepalive_min_secs
            ));
        }
        if self.backoff_min_ms > self.backoff_max_ms {
            return Err(format!(
                "--return-retry-min ({} ms) is above --return-retry-max ({} ms)",
                self.backoff_min_ms, self.backoff_max_ms
            ));
        }
        Ok(())
    }

    /// The keepalive interval a session asking for `asked` seconds gets
    /// (0: none). With a maximum, a session without keepalives gets the
    /// maximum: silence longer than that is what the operator ruled out.
    pub fn keepalive_secs(&self, asked: u32) -> u32 {
        let max = self.keepalive_max_secs.unwrap_or(u32::MAX);
        match asked {
            0 => self.keepalive_max_secs.unwrap_or(0),
            // Never panics, even on a tuning that skipped validation.
            n => n.max(self.keepalive_min_secs).min(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::RawFd;
    use std::time::{Duration, Instant};

    use super::super::{Action, Arrival, Core};
    use super::Tuning;

    use crate::idle::core::tests::TestFd as Fd;

    fn clamp(min: u32, max: Option<u32>) -> Tuning {
        Tuning {
            keepalive_min_secs: min,
            keepalive_max_secs: max,
            ..Tuning::default()
        }
    }

    fn park(core: &mut Core<Fd, u32>, n: RawFd, keepalive_secs: u32, now: Instant) -> u64 {
        let arrival = Arrival {
            carried: Default::default(),
            multiplex: false,
            fd: Fd(n),
            user: "alice",
            cookie: [1; 16],
            tag: "A1",
            in_idle: true,
            keepalive_secs,
            watches: Vec::new(),
            state: b"s",
            from_pid: 1,
        };
        core.adopt(arrival, now).ok().expect("adopted")
    }

    /// Keepalives written to `id` over `secs` seconds, stepping a second.
    fn keepalives(core: &mut Core<Fd, u32>, id: u64, start: Instant, secs: u64) -> usize {
        let mut n = 0;
        for s in 1..=secs {
            core.expire(start + Duration::from_secs(s));
            while let Some(a) = core.next_action() {
                if matches!(a, Action::Write { id: i, what: "keepalive", .. } if i == id) {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn the_clamp_of_one_interval() {
        let t = clamp(30, Some(600));
        assert_eq!(t.keepalive_secs(1), 30);
        assert_eq!(t.keepalive_secs(120), 120);
        assert_eq!(t.keepalive_secs(3600), 600);
        assert_eq!(
            t.keepalive_secs(0),
            600,
            "no keepalive is longer than the max"
        );
        let default = Tuning::default();
        assert_eq!(default.keepalive_secs(0), 0);
        assert_eq!(default.keepalive_secs(1), 1);
        assert_eq!(default.keepalive_secs(u32::MAX), u32::MAX);
        // Unvalidated nonsense does not panic.
        assert_eq!(clamp(10, Some(5)).keepalive_secs(7), 5);
    }

    #[test]
    fn the_core_writes_keepalives_at_the_clamped_interval() {
        let now = Instant::now();
        let mut core: Core<Fd, u32> = Core::new(10, true, now, 7, clamp(30, Some(60)));
        let fast = park(&mut core, 3, 1, now);
        let slow = park(&mut core, 4, 3600, now);
        let silent = park(&mut core, 5, 0, now);
        while core.next_action().is_some() {}
        let mut count = [0usize; 3];
        for s in 1..=600 {
            core.expire(now + Duration::from_secs(s));
            while let Some(a) = core.next_action() {
                if let Action::Write {
                    id,
                    what: "keepalive",
                    ..
                } = a
                {
                    let i = [fast, slow, silent].iter().position(|&x| x == id);
                    count[i.expect("a keepalive for a parked id")] += 1;
                }
            }
        }
        // Over 600 s: every 30 s rather than every second; every 60 s
        // rather than hourly or never. The first one may come early (its
        // phase follows the user).
        assert!((20..=21).contains(&count[0]), "asked 1 s: {}", count[0]);
        assert!((10..=11).contains(&count[1]), "asked 3600 s: {}", count[1]);
        assert!((10..=11).contains(&count[2]), "asked none: {}", count[2]);
    }

    #[test]
    fn defaults_leave_the_sessions_interval_alone() {
        let now = Instant::now();
        let mut core: Core<Fd, u32> = Core::new(10, true, now, 7, Tuning::default());
        let id = park(&mut core, 3, 0, now);
        while core.next_action().is_some() {}
        assert_eq!(keepalives(&mut core, id, now, 120), 0);
        let id = park(&mut core, 4, 5, now);
        while core.next_action().is_some() {}
        let got = keepalives(&mut core, id, now + Duration::from_secs(120), 100);
        assert!((20..=21).contains(&got), "{got} keepalives in 100 s at 5 s");
    }

    #[test]
    fn a_tuned_give_up_deadline() {
        let now = Instant::now();
        let t = Tuning {
            give_up_with_input_ms: 2_000,
            ..Tuning::default()
        };
        let mut core: Core<Fd, u32> = Core::new(10, true, now, 7, t);
        let id = park(&mut core, 3, 0, now);
        core.input(id, b"DONE\r\n", now);
        while core.next_action().is_some() {}
        core.expire(now + Duration::from_millis(1_999));
        assert!(core.holds(id), "given up before its deadline");
        core.expire(now + Duration::from_millis(2_000));
        assert!(!core.holds(id), "not given up at its deadline");
    }

    #[test]
    fn validation_names_the_flag() {
        assert!(Tuning::default().validate().is_ok());
        let e = clamp(60, Some(30)).validate().unwrap_err();
        assert!(
            e.contains("--keepalive-min") && e.contains("--keepalive-max"),
            "{e}"
        );
        let e = clamp(0, None).validate().unwrap_err();
        assert!(e.contains("--keepalive-min"), "{e}");
        let e = clamp(1, Some(0)).validate().unwrap_err();
        assert!(e.contains("--keepalive-max"), "{e}");
        let t = Tuning {
            backoff_min_ms: 500,
            backoff_max_ms: 100,
            ..Tuning::default()
        };
        assert!(t.validate().unwrap_err().contains("--return-retry-min"));
        let t = Tuning {
            give_up_at_shutdown_ms: 0,
            ..Tuning::default()
        };
        assert!(t
            .validate()
            .unwrap_err()
            .contains("--return-timeout-shutdown"));
    }
}
