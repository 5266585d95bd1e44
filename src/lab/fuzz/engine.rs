//! The fuzzing loop for one target: run the corpus, then mutants of it,
//! catching panics and timing every input. It owns what counts as a
//! finding (a panic, or an input that runs longer than [`HANG`]) and where
//! findings and new inputs are written.

use std::cell::RefCell;
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::corpus;
use super::mutate::mutate;
use super::rng::Rng;

/// An input that runs longer than this is a hang.
pub const HANG: Duration = Duration::from_secs(1);
/// An input still running after this is never coming back: the watchdog
/// saves it and ends the process.
const HANG_KILL: Duration = Duration::from_secs(10);
/// Inputs held in memory per target; past it, new ones replace old ones.
const MAX_POOL: usize = 4096;
/// Distinct crash files one target may write in one run.
const MAX_CRASH_FILES: usize = 20;

/// What a target's run says about an input, for novelty: a hash of its
/// result class (which error, or what kind of success).
pub type Class = u64;

pub struct Target {
    pub name: &'static str,
    /// Must never panic nor hang, whatever the bytes.
    pub run: fn(&[u8]) -> Class,
    /// A valid (or nearly valid) input built with the real encoders.
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Tokens of the target's format, planted by the mutator.
    pub dict: &'static [&'static [u8]],
    pub max_len: usize,
}

pub struct Options {
    pub execs: u64,
    pub seed: u64,
    /// Where the seed corpus is read from: `<corpus>/<target>/`.
    pub corpus: PathBuf,
    /// Where findings (and with `save`, new inputs) go: `<out>/<target>/`.
    pub out: PathBuf,
    pub save: bool,
    /// Generated inputs added to the corpus before mutating.
    pub generated: usize,
}

#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    pub secs: f64,
    pub crashes: u64,
    pub hangs: u64,
    pub classes: usize,
    /// Files written: findings, and new inputs with `save`.
    pub written: Vec<PathBuf>,
}

thread_local! {
    /// The last panic's message and place, set by the quiet hook.
    static PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Silence the default panic hook (millions of expected-looking lines
/// would drown the report) and keep the message for the report instead.
/// Drop to put the previous hook back.
pub struct QuietPanics;

impl QuietPanics {
    pub fn install() -> QuietPanics {
        panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            PANIC.with(|p| *p.borrow_mut() = format!("{msg} at {at}"));
        }));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        let _ = panic::take_hook();
    }
}

/// What the watchdog thread sees of the running input.
struct Watch {
    input: Mutex<Vec<u8>>,
    /// Nanoseconds after `base` the running input started; 0 = none runs.
    since: AtomicU64,
    base: Instant,
    done: AtomicBool,
}

impl Watch {
    fn begin(&self, data: &[u8]) {
        if let Ok(mut cur) = self.input.lock() {
            cur.clear();
            cur.extend_from_slice(data);
        }
        let now = self.base.elapsed().as_nanos() as u64;
        self.since.store(now.max(1), Ordering::Release);
    }

    fn end(&self) {
        self.since.store(0, Ordering::Release);
    }

    /// Save an input that never returns, then end the process: a stuck
    /// target cannot be stopped from inside.
    fn guard(&self, t: &Target, opts: &Options) {
        let dir = opts.out.join(t.name);
        let mut saved_at = 0;
        while !self.done.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
            let since = self.since.load(Ordering::Acquire);
            if since == 0 {
                continue;
            }
            let running =
                Duration::from_nanos((self.base.elapsed().as_nanos() as u64).saturating_sub(since));
            if running > HANG && saved_at != since {
                // Saved now, not at the end: a runaway input may also run
                // out of memory, and an abort would lose it.
                saved_at = since;
                let data = self.input.lock().map(|d| d.clone()).unwrap_or_default();
                let name = corpus::file_name("hang-", &data);
                match corpus::save(&dir, &name, &data) {
                    Ok(p) => eprintln!(
                        "fuzz {}: input running > 1 s, saved {}",
                        t.name,
                        p.display()
                    ),
                    Err(e) => eprintln!("fuzz {}: hang, cannot save it: {e}", t.name),
                }
            }
            if running > HANG_KILL {
                eprintln!(
                    "fuzz {}: input still running after {HANG_KILL:?}, giving up",
                    t.name
                );
                super::serve_target::cleanup();
                std::process::exit(1);
            }
        }
    }
}

struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

struct Run<'a> {
    t: &'a Target,
    opts: &'a Options,
    watch: &'a Watch,
    classes: HashSet<Class>,
    pool: Vec<Vec<u8>>,
    kept: usize,
    report: Report,
    crash_names: HashSet<String>,
}

impl Run<'_> {
    fn exec(&mut self, data: &[u8], rng: &mut Rng) {
        self.watch.begin(data);
        let started = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| (self.t.run)(data)));
        let took = started.elapsed();
        self.watch.end();
        self.report.execs += 1;
        match result {
            Err(_) => {
                self.report.crashes += 1;
                let why = PANIC.with(|p| std::mem::take(&mut *p.borrow_mut()));
                self.finding("crash-", data, &why);
            }
            Ok(_) if took > HANG => {
                self.report.hangs += 1;
                self.finding("hang-", data, &format!("took {took:?}"));
            }
            Ok(class) => {
                if self.classes.insert(class) {
                    self.keep(data, rng);
                }
            }
        }
    }

    /// A new result class: mutate it later, and with `--save` keep it.
    fn keep(&mut self, data: &[u8], rng: &mut Rng) {
        if self.pool.len() < MAX_POOL {
            self.pool.push(data.to_vec());
        } else {
            let i = rng.below(self.pool.len());
            self.pool[i] = data.to_vec();
        }
        if self.opts.save && self.kept < corpus::MAX_KEPT {
            let dir = self.opts.out.join(self.t.name);
            let name = corpus::file_name("", data);
            if !dir.join(&name).exists() {
                if let Ok(p) = corpus::save(&dir, &name, data) {
                    self.kept += 1;
                    self.report.written.push(p);
                }
            }
        }
    }

    fn finding(&mut self, prefix: &str, data: &[u8], why: &str) {
        let name = corpus::file_name(prefix, data);
        if self.crash_names.len() >= MAX_CRASH_FILES || !self.crash_names.insert(name.clone()) {
            return;
        }
        let dir = self.opts.out.join(self.t.name);
        match corpus::save(&dir, &name, data) {
            Ok(p) => {
                eprintln!(
                    "fuzz {}: {prefix}: {why}; saved {}",
                    self.t.name,
                    p.display()
                );
                self.report.written.push(p);
            }
            Err(e) => eprintln!("fuzz {}: {prefix}: {why}; cannot save: {e}", self.t.name),
        }
    }
}

/// Fuzz one target for `opts.execs` executions (the corpus and the
/// generated inputs first, each once, then mutants).
pub fn fuzz(t: &Target, opts: &Options) -> Report {
    let watch = Watch {
        input: Mutex::new(Vec::new()),
        since: AtomicU64::new(0),
        base: Instant::now(),
        done: AtomicBool::new(false),
    };
    // Each target has its own stream, so `--target X` alone repeats what
    // X did inside `--target all`.
    let mut rng = Rng::new(opts.seed ^ corpus::hash(t.name.as_bytes()));
    let mut seeds = corpus::load(&opts.corpus.join(t.name));
    seeds.extend((0..opts.generated).map(|_| (t.generate)(&mut rng)));
    let started = Instant::now();
    let report = std::thread::scope(|s| {
        s.spawn(|| watch.guard(t, opts));
        // Stops the watchdog however this closure ends, or the scope
        // would wait for it forever.
        let _stop = Stop(&watch.done);
        let mut run = Run {
            t,
            opts,
            watch: &watch,
            classes: HashSet::new(),
            pool: Vec::new(),
            kept: corpus::kept(&opts.out.join(t.name)),
            report: Report {
                target: t.name,
                execs: 0,
                secs: 0.0,
                crashes: 0,
                hangs: 0,
                classes: 0,
                written: Vec::new(),
            },
            crash_names: HashSet::new(),
        };
        for seed in &seeds {
            run.exec(seed, &mut rng);
            // Every seed is a base for mutants, new class or not.
            if run.pool.last() != Some(seed) && run.pool.len() < MAX_POOL {
                run.pool.push(seed.clone());
            }
        }
        if run.pool.is_empty() {
            run.pool.push(Vec::new());
        }
        let mut data = Vec::with_capacity(t.max_len);
        while run.report.execs < opts.execs {
            if rng.one_in(64) {
                // Fresh valid inputs now and then keep the mutants near
                // the format even when the corpus drifts.
                data = (t.generate)(&mut rng);
                data.truncate(t.max_len);
            } else {
                let pick = rng.below(run.pool.len());
                data.clear();
                data.extend_from_slice(&run.pool[pick]);
                let other = &run.pool[rng.below(run.pool.len())];
                mutate(&mut data, &mut rng, other, t.dict, t.max_len);
            }
            run.exec(&data, &mut rng);
        }
        run.report.classes = run.classes.len();
        run.report
    });
    Report {
        secs: started.elapsed().as_secs_f64(),
        ..report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &std::path::Path, execs: u64, generated: usize) -> Options {
        Options {
            execs,
            seed: 1,
            corpus: dir.join("in"),
            out: dir.join("out"),
            save: false,
            generated,
        }
    }

    /// Panics on any input holding a `!`, which mutants of `ok` soon do
    /// (inserted random bytes), and the generated seed does at once.
    fn touchy(data: &[u8]) -> Class {
        assert!(!data.contains(&b'!'), "a deliberate crash");
        data.len() as Class
    }

    fn bang(_: &mut Rng) -> Vec<u8> {
        b"ok!".to_vec()
    }

    #[test]
    fn a_panicking_target_is_caught_saved_and_reported() {
        let t = tempfile::tempdir().unwrap();
        let target = Target {
            name: "touchy",
            run: touchy,
            generate: bang,
            dict: &[b"!"],
            max_len: 16,
        };
        let quiet = QuietPanics::install();
        let r = fuzz(&target, &opts(t.path(), 2000, 1));
        drop(quiet);
        assert_eq!(r.execs, 2000);
        assert!(r.crashes > 0, "{r:?}");
        assert_eq!(r.hangs, 0);
        let crash = t
            .path()
            .join("out/touchy")
            .join(corpus::file_name("crash-", b"ok!"));
        assert_eq!(std::fs::read(&crash).unwrap(), b"ok!");
        assert!(r.written.contains(&crash));
        // Every saved crash really crashes.
        for p in &r.written {
            let data = std::fs::read(p).unwrap();
            assert!(data.contains(&b'!'));
        }
    }

    fn slow(data: &[u8]) -> Class {
        if data == b"slow" {
            std::thread::sleep(HANG + Duration::from_millis(100));
        }
        0
    }

    fn slow_seed(_: &mut Rng) -> Vec<u8> {
        b"slow".to_vec()
    }

    #[test]
    fn a_slow_input_is_a_hang() {
        let t = tempfile::tempdir().unwrap();
        let target = Target {
            name: "slow",
            run: slow,
            generate: slow_seed,
            dict: &[],
            max_len: 16,
        };
        let r = fuzz(&target, &opts(t.path(), 2, 1));
        assert_eq!((r.crashes, r.hangs), (0, 1));
        assert!(t
            .path()
            .join("out/slow")
            .join(corpus::file_name("hang-", b"slow"))
            .is_file());
    }

    #[test]
    fn every_real_target_survives_its_seeds_and_a_short_run() {
        let t = tempfile::tempdir().unwrap();
        let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
        let quiet = QuietPanics::install();
        for target in &super::super::targets::TARGETS {
            let o = Options {
                corpus: seeds.clone(),
                ..opts(t.path(), 3000, 64)
            };
            let r = fuzz(target, &o);
            assert_eq!((r.crashes, r.hangs), (0, 0), "{r:?}");
            assert!(r.classes > 1, "{}: one result class only", r.target);
        }
        drop(quiet);
        super::super::serve_target::cleanup();
    }
}
