//! The private Dovecot's configuration file, in the syntax of the version
//! found: 2.4 renamed settings, changed the passdb/userdb blocks and the
//! variable syntax, and refuses a file without `dovecot_config_version`.
//! Also the imap-hibernate service's limits the rig may add.

use std::path::Path;

use super::dovecot_root::Version;

/// The snippets operators install, used as they are (paths substituted).
pub const SNIPPET_2_3: &str = include_str!("../../../contrib/dovecot/95-imap-idle.conf");
pub const SNIPPET_2_4: &str = include_str!("../../../contrib/dovecot/95-imap-idle-2.4.conf");

/// What differs between the rig's configurations, paths as Dovecot sees them.
pub struct Conf<'a> {
    pub version: Version,
    pub dir: &'a Path,
    pub port: u16,
    pub keepalive_secs: u32,
    /// uid and gid the mail belongs to.
    pub mail_owner: (u32, u32),
    /// Settings appended last (later settings win in Dovecot's config).
    pub tail: &'a str,
}

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
    /// imap-idle's `--master-connections` (with Hibernation::ImapIdle).
    pub master_connections: Option<u32>,
    /// Dovecot's `mail_max_userip_connections` [default here: 2000].
    pub userip_connections: Option<u32>,
}

impl ServiceLimits {
    /// imap-idle's flags that follow from these settings (for
    /// `shutdown_clients = no`, the snippet's advice).
    pub fn idle_args(&self) -> String {
        let mut args = String::new();
        if self.shutdown_clients == Some(false) {
            args.push_str(" --dovecot-shutdown-clients no");
        }
        if let Some(n) = self.master_connections {
            args.push_str(&format!(" --master-connections {n}"));
        }
        args
    }

    /// A later `service imap-hibernate` section: Dovecot merges it into
    /// the earlier one, its settings winning.
    pub fn conf(&self) -> String {
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
        let userip = self.userip_connections.map_or(String::new(), |n| {
            format!("mail_max_userip_connections = {n}\n")
        });
        if lines.is_empty() {
            return format!("{global}{userip}");
        }
        format!("{global}{userip}service imap-hibernate {{\n{lines}}}\n")
    }
}

impl Conf<'_> {
    pub fn snippet(version: Version) -> &'static str {
        if version.is_2_4_or_later() {
            SNIPPET_2_4
        } else {
            SNIPPET_2_3
        }
    }

    /// How a setting names Dovecot's internal user.
    pub fn internal_user(version: Version) -> &'static str {
        if version.is_2_4_or_later() {
            "$SET:default_internal_user"
        } else {
            "$default_internal_user"
        }
    }

    pub fn text(&self) -> String {
        let d = self.dir.display();
        let (uid, gid) = self.mail_owner;
        let (head, auth, mail, login) = if self.version.is_2_4_or_later() {
            (
                // The storage version fixes on-disk formats; this one is ours.
                // Trusted loopback: a test client may ask for 2.4's
                // multiplexed output (`ID ("x-multiplex" "0")`), as a proxy would.
                "dovecot_config_version = 2.4.1\ndovecot_storage_version = 2.4.1
login_trusted_networks = 127.0.0.0/8\n",
                format!(
                    "auth_allow_cleartext = yes
passdb passwd-file {{
  passwd_file_path = {d}/passwd
}}
userdb static {{
  fields {{
    uid = {uid}
    gid = {gid}
    home = {d}/mail/%{{user}}
  }}
}}
"
                ),
                format!("mail_driver = maildir\nmail_path = {d}/mail/%{{user}}/Maildir\n"),
                ("listen", "restart_request_count = unlimited"),
            )
        } else {
            (
                "",
                format!(
                    "disable_plaintext_auth = no
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
"
                ),
                format!("mail_location = maildir:{d}/mail/%u/Maildir\n"),
                ("address", "service_count = 0"),
            )
        };
        format!(
            "{head}base_dir = {d}/base
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain
mail_max_userip_connections = 2000
default_process_limit = 3000
default_client_limit = 5000
{auth}{mail}imap_idle_notify_interval = {keepalive} secs
service imap-login {{
  inet_listener imap {{
    {address} = 127.0.0.1
    port = {port}
  }}
  {reuse}
  client_limit = 2000
}}
service imap {{
  process_limit = 3000
}}
imap_hibernate_timeout = 1s
{tail}",
            keepalive = self.keepalive_secs,
            port = self.port,
            address = login.0,
            reuse = login.1,
            tail = self.tail,
        )
    }
}
