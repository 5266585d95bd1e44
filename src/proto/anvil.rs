//! Dovecot's anvil lines, as pure functions: the CONNECT and DISCONNECT a
//! hibernation process writes for every client it holds (so that
//! `mail_max_userip_connections` still counts it and `doveadm who` lists
//! it), in 2.3's and 2.4's formats, and the master-admin lines 2.4's
//! anvil sends to kick a user. Fields are escaped as in
//! [`super::dovecot`].

use std::net::IpAddr;

use super::dovecot::escape;

/// Which anvil speaks on the other end of the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 2.3: `CONNECT <pid> imap/<ip>/<user>`, only with a known address.
    V23,
    /// 2.4: `CONNECT <conn guid> <pid> <user> <service> <ip> <kick> <dest ip>`.
    V24 {
        /// `A`: kicked through our admin socket; `N`: no kick.
        kick: u8,
    },
}

impl Format {
    /// The format of the master that started us, from `DOVECOT_VERSION`
    /// (which the master passes unless `version_ignore` is set) or, failing
    /// that, from whether it passed a per-process admin listener (2.4 has
    /// them, 2.3 does not).
    pub fn of_master(version: Option<&str>, admin_socket: bool) -> Format {
        let kick = if admin_socket { b'A' } else { b'N' };
        let mut parts = version.unwrap_or("").split('.');
        let major = parts.next().and_then(|m| m.parse::<u32>().ok());
        let minor = parts.next().and_then(|m| m.parse::<u32>().ok());
        match (major, minor) {
            (Some(2), Some(m)) if m < 4 => Format::V23,
            (Some(_), Some(_)) => Format::V24 { kick },
            _ if admin_socket => Format::V24 { kick },
            _ => Format::V23,
        }
    }
}

/// One client as anvil knows it.
pub struct Session<'a> {
    pub user: &'a str,
    /// The hibernation service's name (2.4 counts it as protocol `imap`:
    /// anvil cuts the service name at its first `-`).
    pub service: &'a str,
    pub ip: Option<IpAddr>,
    /// 2.4's connection GUID, ours to choose.
    pub guid: [u8; 16],
}

pub fn guid_hex(guid: &[u8; 16]) -> String {
    guid.iter().map(|b| format!("{b:02x}")).collect()
}

/// A GUID in Dovecot's text form: 32 hex digits.
pub fn parse_guid(hex: &[u8]) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// `<pid>\t<user>\t<service>\t<ip>` of a 2.4 line.
fn v24_ident(out: &mut Vec<u8>, pid: u32, s: &Session<'_>) {
    out.extend_from_slice(format!("{pid}\t").as_bytes());
    escape(s.user.as_bytes(), out);
    out.push(b'\t');
    escape(s.service.as_bytes(), out);
    out.push(b'\t');
    if let Some(ip) = s.ip {
        out.extend_from_slice(ip.to_string().as_bytes());
    }
}

/// `imap/<ip>/<user>` of a 2.3 line; 2.3 registers only known addresses.
fn v23_ident(out: &mut Vec<u8>, pid: u32, s: &Session<'_>) -> bool {
    let Some(ip) = s.ip else {
        return false;
    };
    out.extend_from_slice(format!("{pid}\timap/{ip}/").as_bytes());
    escape(s.user.as_bytes(), out);
    true
}

fn line(cmd: &str, format: Format, pid: u32, s: &Session<'_>) -> Option<Vec<u8>> {
    let mut out = format!("{cmd}\t").into_bytes();
    match format {
        Format::V23 => {
            if !v23_ident(&mut out, pid, s) {
                return None;
            }
        }
        Format::V24 { kick } => {
            out.extend_from_slice(guid_hex(&s.guid).as_bytes());
            out.push(b'\t');
            v24_ident(&mut out, pid, s);
            if cmd == "CONNECT" {
                // Kick type, then an empty destination address: we are
                // no proxy, so the session counts for the user+IP limit.
                out.extend_from_slice(&[b'\t', kick, b'\t']);
            }
        }
    }
    out.push(b'\n');
    Some(out)
}

/// The line registering a client; `None` when this format does not
/// register it (2.3 without a remote address).
pub fn connect(format: Format, pid: u32, s: &Session<'_>) -> Option<Vec<u8>> {
    line("CONNECT", format, pid, s)
}

/// The line unregistering a client [`connect`] registered.
pub fn disconnect(format: Format, pid: u32, s: &Session<'_>) -> Option<Vec<u8>> {
    line("DISCONNECT", format, pid, s)
}

/// The greeting of our side of a master-admin connection.
pub const ADMIN_VERSION: &[u8] = b"VERSION\tmaster-admin-server\t1\t0\n";
/// The greeting we expect from anvil.
pub const ADMIN_PEER: &str = "master-admin-client";

/// What anvil asks of us on the admin socket.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Kick the user's clients, or only the one with this GUID.
    KickUser {
        user: String,
        guid: Option<[u8; 16]>,
    },
    /// Anything else: answered `-<reason>`.
    Refused(&'static str),
}

/// Parse one admin line (without its LF).
pub fn admin_command(line: &[u8]) -> AdminCommand {
    let f = super::dovecot::split(line);
    match f.first().map(Vec::as_slice) {
        Some(b"KICK-USER") => {
            let Some(user) = f.get(1).and_then(|u| String::from_utf8(u.clone()).ok()) else {
                return AdminCommand::Refused("Missing parameter");
            };
            let guid = match f.get(2) {
                None => None,
                Some(g) => match parse_guid(g) {
                    Some(g) => Some(g),
                    None => return AdminCommand::Refused("Invalid conn-guid parameter"),
                },
            };
            if f.len() > 3 {
                return AdminCommand::Refused("Extra parameters");
            }
            AdminCommand::KickUser { user, guid }
        }
        _ => AdminCommand::Refused("Unknown command"),
    }
}

/// A client's remote address kept in 16 bytes: IPv6 as it is, IPv4 mapped
/// into IPv6, none as all zeros (no client connects from `::`).
pub fn pack_ip(ip: Option<IpAddr>) -> [u8; 16] {
    match ip {
        None => [0; 16],
        Some(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
        Some(IpAddr::V6(v6)) => v6.octets(),
    }
}

pub fn unpack_ip(bytes: [u8; 16]) -> Option<IpAddr> {
    if bytes == [0; 16] {
        return None;
    }
    let v6 = std::net::Ipv6Addr::from(bytes);
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(ip: Option<&str>) -> Session<'static> {
        Session {
            user: "al\tice",
            service: "imap-hibernate",
            ip: ip.map(|i| i.parse().unwrap()),
            guid: [0xab; 16],
        }
    }

    #[test]
    fn lines_of_2_3() {
        let s = session(Some("127.0.0.1"));
        assert_eq!(
            connect(Format::V23, 42, &s).unwrap(),
            b"CONNECT\t42\timap/127.0.0.1/al\x01tice\n"
        );
        assert_eq!(
            disconnect(Format::V23, 42, &s).unwrap(),
            b"DISCONNECT\t42\timap/127.0.0.1/al\x01tice\n"
        );
        assert_eq!(connect(Format::V23, 42, &session(None)), None);
    }

    #[test]
    fn lines_of_2_4() {
        let s = session(Some("::1"));
        let guid = "ab".repeat(16);
        let f = Format::V24 { kick: b'A' };
        assert_eq!(
            String::from_utf8(connect(f, 7, &s).unwrap()).unwrap(),
            format!("CONNECT\t{guid}\t7\tal\x01tice\timap-hibernate\t::1\tA\t\n")
        );
        assert_eq!(
            String::from_utf8(disconnect(f, 7, &s).unwrap()).unwrap(),
            format!("DISCONNECT\t{guid}\t7\tal\x01tice\timap-hibernate\t::1\n")
        );
        // 2.4 registers a client without an address too (empty field).
        let none = String::from_utf8(connect(f, 7, &session(None)).unwrap()).unwrap();
        assert!(none.ends_with("\timap-hibernate\t\tA\t\n"), "{none:?}");
    }

    #[test]
    fn format_follows_the_master() {
        assert_eq!(Format::of_master(Some("2.3.19.1"), false), Format::V23);
        assert_eq!(
            Format::of_master(Some("2.4.1"), true),
            Format::V24 { kick: b'A' }
        );
        assert_eq!(
            Format::of_master(Some("2.4.1"), false),
            Format::V24 { kick: b'N' }
        );
        assert_eq!(Format::of_master(None, true), Format::V24 { kick: b'A' });
        assert_eq!(Format::of_master(None, false), Format::V23);
    }

    #[test]
    fn guids_and_addresses_round_trip() {
        let g: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(parse_guid(guid_hex(&g).as_bytes()), Some(g));
        assert_eq!(parse_guid(b"xyz"), None);
        assert_eq!(parse_guid(&[b'g'; 32]), None);
        for ip in [None, Some("10.1.2.3"), Some("2001:db8::7")] {
            let ip: Option<IpAddr> = ip.map(|i| i.parse().unwrap());
            assert_eq!(unpack_ip(pack_ip(ip)), ip);
        }
    }

    #[test]
    fn admin_commands() {
        let guid = "01".repeat(16);
        assert_eq!(
            admin_command(b"KICK-USER\tbob"),
            AdminCommand::KickUser {
                user: "bob".into(),
                guid: None
            }
        );
        assert_eq!(
            admin_command(format!("KICK-USER\tbob\t{guid}").as_bytes()),
            AdminCommand::KickUser {
                user: "bob".into(),
                guid: Some([1; 16])
            }
        );
        assert_eq!(
            admin_command(b"KICK-USER"),
            AdminCommand::Refused("Missing parameter")
        );
        assert_eq!(
            admin_command(b"KICK-USER\tbob\tnope"),
            AdminCommand::Refused("Invalid conn-guid parameter")
        );
        assert_eq!(
            admin_command(b"KICK-USER-SIGNAL\tbob"),
            AdminCommand::Refused("Unknown command")
        );
    }
}
