//! How a private Dovecot's imap-hibernate service is limited, and whose
//! uid its mail belongs to.

/// The imap-hibernate service's limits; `None` keeps what the snippet (or
/// Dovecot's default) says. With `client_limit` C and `process_limit` P
/// the master starts another hibernation process whenever every running
/// one holds C clients, up to P processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceLimits {
    pub client_limit: Option<u32>,
    pub process_limit: Option<u32>,
    /// The mail belongs to a uid nobody else on the machine uses (not
    /// `nobody`): its inotify instances are counted apart from other
    /// Dovecots' (`fs.inotify.max_user_instances` is per uid).
    pub own_mail_uid: bool,
    /// Dovecot's `shutdown_clients` (its default is yes).
    pub shutdown_clients: Option<bool>,
}

impl ServiceLimits {
    /// imap-idle's flags that follow from these settings: the snippet's
    /// advice for `shutdown_clients = no`.
    pub(super) fn idle_args(&self) -> &'static str {
        match self.shutdown_clients {
            Some(false) => " --dovecot-shutdown-clients no",
            _ => "",
        }
    }

    /// A later `service imap-hibernate` section: Dovecot merges it into
    /// the earlier one, its settings winning.
    pub(super) fn conf(&self) -> String {
        let set = [
            ("client_limit", self.client_limit),
            ("process_limit", self.process_limit),
        ];
        let lines: String = set
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("  {k} = {v}\n")))
            .collect();
        let global = match self.shutdown_clients {
            Some(yes) => format!("shutdown_clients = {}\n", if yes { "yes" } else { "no" }),
            None => String::new(),
        };
        if lines.is_empty() {
            return global;
        }
        format!("{global}service imap-hibernate {{\n{lines}}}\n")
    }
}
