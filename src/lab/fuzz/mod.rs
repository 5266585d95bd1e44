//! `imap-idle-lab fuzz`: a small mutation fuzzer for every decoder, on the
//! stable toolchain (cargo-fuzz needs nightly, and nothing else can be
//! downloaded here). No coverage feedback: inputs are kept when they give
//! a new result class. This file owns the command line, the memory cap
//! and the report; [`engine`] the loop, [`targets`] what is fuzzed.

mod corpus;
mod engine;
mod gen;
mod mutate;
mod rng;
mod serve_target;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::args::Args;
use engine::{Options, QuietPanics, Report};
use targets::TARGETS;

const USAGE: &str = "\
Usage: imap-idle-lab fuzz [--target NAME|all] [--execs N] [--seed S]
                          [--corpus DIR] [--save]

Feeds mutated inputs to every decoder and reports any panic (crash) or
input that runs over 1 s (hang). Build with --release first.
  --target NAME   native, state, state-text, hibernate, master-answer,
                  idle-input, imap-command, or all  [default: all]
  --execs N       executions per target  [default: 10000000]
  --seed S        repeat a run (the seed is printed)  [default: clock]
  --corpus DIR    seeds in DIR/TARGET/; crash-HASH and hang-HASH files go
                  there too  [default: tests/fuzz-corpus]
  --save          also keep inputs with a new result class in
                  DIR/TARGET/ (at most 50 files per target)

One line per target: executions, seconds, executions per second,
crashes, hangs, result classes seen. Exit status 1 if anything crashed
or hung.
";

/// Address space the fuzzer may use: a decoder that tries to allocate
/// without bound aborts instead of taking the (shared) machine's memory.
const MAX_MEMORY: u64 = 1 << 30;

pub fn main(args: Vec<String>) -> ExitCode {
    let mut names: Vec<&'static str> = TARGETS.iter().map(|t| t.name).collect();
    let mut opts = Options {
        execs: 10_000_000,
        seed: clock_seed(),
        corpus: PathBuf::from("tests/fuzz-corpus"),
        out: PathBuf::new(),
        save: false,
        generated: 64,
    };
    let mut args = Args::new(args);
    let parsed: Result<(), String> = (|| {
        while let Some(flag) = args.next_flag() {
            match flag.as_str() {
                "-h" | "--help" => return Err(String::new()),
                "--target" => {
                    let v = args.value(&flag)?;
                    if v != "all" {
                        let t = TARGETS
                            .iter()
                            .find(|t| t.name == v)
                            .ok_or_else(|| format!("--target: unknown target {v:?}"))?;
                        names = vec![t.name];
                    }
                }
                "--execs" => opts.execs = args.number(&flag)?,
                "--seed" => opts.seed = args.number(&flag)?,
                "--corpus" => opts.corpus = PathBuf::from(args.value(&flag)?),
                "--save" => opts.save = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(())
    })();
    match parsed {
        Ok(()) => {}
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("imap-idle-lab fuzz: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    opts.out = opts.corpus.clone();
    cap_memory();
    println!(
        "fuzz: seed {} (repeat with --seed {})",
        opts.seed, opts.seed
    );
    println!("{}", header());
    let quiet = QuietPanics::install();
    let mut failed = false;
    for t in TARGETS.iter().filter(|t| names.contains(&t.name)) {
        let r = engine::fuzz(t, &opts);
        failed |= r.crashes > 0 || r.hangs > 0;
        println!("{}", line(&r));
    }
    drop(quiet);
    serve_target::cleanup();
    if failed {
        eprintln!("fuzz: crashes or hangs found; see the files named above");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (std::process::id() as u64) << 48
}

fn cap_memory() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_AS) {
        let cap = MAX_MEMORY.min(soft).min(hard);
        if let Err(e) = setrlimit(Resource::RLIMIT_AS, cap, hard) {
            eprintln!("fuzz: cannot cap memory at {cap} bytes: {e}");
        }
    }
}

fn header() -> String {
    format!(
        "{:<14} {:>10} {:>8} {:>10} {:>7} {:>5} {:>7}",
        "target", "execs", "secs", "execs/s", "crashes", "hangs", "classes"
    )
}

fn line(r: &Report) -> String {
    format!(
        "{:<14} {:>10} {:>8.1} {:>10.0} {:>7} {:>5} {:>7}",
        r.target,
        r.execs,
        r.secs,
        r.execs as f64 / r.secs.max(1e-9),
        r.crashes,
        r.hangs,
        r.classes
    )
}
