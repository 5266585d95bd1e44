//! Command-line flags for every binary: `--flag value` and `--flag=value`,
//! with errors that name the flag.

use std::str::FromStr;

pub struct Args {
    it: std::vec::IntoIter<String>,
    inline: Option<String>,
}

impl Args {
    pub fn new(args: impl IntoIterator<Item = String>) -> Args {
        Args {
            it: args.into_iter().collect::<Vec<_>>().into_iter(),
            inline: None,
        }
    }

    /// The next flag (or positional argument), with any `=value` kept for
    /// [`Args::value`].
    pub fn next_flag(&mut self) -> Option<String> {
        let arg = self.it.next()?;
        match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => {
                self.inline = Some(v.to_owned());
                Some(f.to_owned())
            }
            _ => {
                self.inline = None;
                Some(arg)
            }
        }
    }

    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.inline
            .take()
            .or_else(|| self.it.next())
            .ok_or_else(|| format!("{flag} needs a value"))
    }

    /// A `--log-level` value, checked.
    pub fn log_level(&mut self, flag: &str) -> Result<String, String> {
        let v = self.value(flag)?;
        if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
            return Err(format!("{flag}: unknown level {v:?}"));
        }
        Ok(v)
    }

    pub fn number<T: FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let v = self.value(flag)?;
        v.parse()
            .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_and_errors() {
        let mut a = Args::new(["--n=5", "--p", "x", "pos", "--m"].map(String::from));
        assert_eq!(a.next_flag().as_deref(), Some("--n"));
        assert_eq!(a.number::<u32>("--n"), Ok(5));
        assert_eq!(a.next_flag().as_deref(), Some("--p"));
        assert_eq!(a.value("--p").as_deref(), Ok("x"));
        assert_eq!(a.next_flag().as_deref(), Some("pos"));
        assert_eq!(a.next_flag().as_deref(), Some("--m"));
        assert!(a.value("--m").is_err());
        assert_eq!(a.next_flag(), None);
    }
}
