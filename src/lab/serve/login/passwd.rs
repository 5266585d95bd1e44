//! The login process's accounts: a Dovecot-style passwd file.

use std::collections::HashMap;
use std::path::Path;

pub struct Account {
    pub password: String,
    pub uid: u32,
}

/// `user:password[:uid]` per line; `#` comments; a `{PLAIN}` prefix on the
/// password is accepted, as in Dovecot's passwd-file.
pub fn read_passwd(path: &Path) -> Result<HashMap<String, Account>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split(':');
        let (Some(user), Some(pass)) = (f.next(), f.next()) else {
            return Err(format!(
                "{}:{}: expected user:password",
                path.display(),
                n + 1
            ));
        };
        let uid = match f.next().filter(|s| !s.is_empty()) {
            Some(u) => u
                .parse()
                .map_err(|_| format!("{}:{}: bad uid {u:?}", path.display(), n + 1))?,
            None => nix::unistd::getuid().as_raw(),
        };
        let password = pass.strip_prefix("{PLAIN}").unwrap_or(pass).to_owned();
        out.insert(user.to_owned(), Account { password, uid });
    }
    Ok(out)
}
