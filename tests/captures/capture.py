#!/usr/bin/env python3
"""Capture what a Dovecot 2.4 sends between its imap process, its own
imap-hibernate and imap-master, for tests/captures/dovecot-VERSION.txt.

    capture.py CHROOT OUT.txt [ORIGIN]    (as root; strace on the host)

CHROOT holds the Dovecot to capture (Debian's package, or one made by
build-dovecot.sh). The script starts it with a private configuration under
CHROOT/tmp/cap, traces the master and every child with strace, and runs
one client: ID ("x-multiplex" "0") from a trusted address, LOGIN, SELECT
INBOX, IDLE; waits for the hibernation; delivers a message into new/
(first return: idle-continue); waits for the restored imap process to
hibernate it again; sends DONE (second return). Then it writes the
hand-off lines ('cmd'), the return lines ('return'), imap-master's answers
and the restored process's first write to the client, each as Python's
repr() of the bytes, in the format src/proto/dovecot_captures.rs reads.
ORIGIN, if given, says where that Dovecot came from in the header (for
2.4.4: "built from the tag 2.4.4 of Dovecot's public source with
build-dovecot.sh").
"""

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import time

PORT = 14343
PASSWORD = "secret"


def conf(d):
    return f"""dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
login_trusted_networks = 127.0.0.0/8
base_dir = {d}/base
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain
auth_allow_cleartext = yes
passdb passwd-file {{
  passwd_file_path = {d}/passwd
}}
userdb static {{
  fields {{
    uid = 65534
    gid = 65534
    home = {d}/mail/%{{user}}
  }}
}}
mail_driver = maildir
mail_path = {d}/mail/%{{user}}/Maildir
imap_idle_notify_interval = 120 secs
service imap-login {{
  inet_listener imap {{
    listen = 127.0.0.1
    port = {PORT}
  }}
}}
imap_hibernate_timeout = 1s
service imap {{
  unix_listener imap-master {{
    user = $SET:default_internal_user
  }}
}}
"""


class Client:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", PORT))
        self.s.settimeout(0.2)
        self.raw = b""

    def send(self, line):
        self.s.sendall(line.encode() + b"\r\n")

    def until(self, needle, secs=15):
        end = time.time() + secs
        while needle.encode() not in self.raw:
            if time.time() > end:
                sys.exit(f"timed out waiting for {needle!r}; got {self.raw!r}")
            try:
                got = self.s.recv(65536)
            except socket.timeout:
                continue
            if not got:
                sys.exit(f"closed waiting for {needle!r}; got {self.raw!r}")
            self.raw += got


def hibernated():
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return "dovecot/imap-hibernate" in out and not re.search(r"dovecot/imap(\s|$)", out)


def wait(cond, what, secs=30):
    end = time.time() + secs
    while not cond():
        if time.time() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def run(root, trace):
    inner = "/tmp/cap"
    d = root + inner
    shutil.rmtree(d, ignore_errors=True)
    for old in glob.glob(trace + ".*"):
        os.remove(old)
    for sub in ("base", "state", "mail/alice/Maildir/new", "mail/alice/Maildir/cur",
                "mail/alice/Maildir/tmp"):
        os.makedirs(f"{d}/{sub}")
    subprocess.run(["chown", "-R", "65534:65534", f"{d}/mail"], check=True)
    with open(f"{d}/passwd", "w") as f:
        f.write(f"alice:{{PLAIN}}{PASSWORD}::::::\n")
    with open(f"{d}/dovecot.conf", "w") as f:
        f.write(conf(inner))
    subprocess.run(["chroot", root, "dovecot", "-c", f"{inner}/dovecot.conf"], check=True)
    pidfile = f"{d}/base/master.pid"
    wait(lambda: os.path.exists(pidfile), "the master's pid file")
    master = open(pidfile).read().strip()
    strace = subprocess.Popen(["strace", "-f", "-ff", "-ttt", "-xx", "-s", "65536", "-o", trace,
                               "-e", "trace=sendmsg,write,writev,recvmsg,read",
                               "-p", master])
    try:
        time.sleep(1)
        c = Client()
        c.until("OK")
        c.send('a ID ("x-multiplex" "0")')
        c.until("* MULTIPLEX 0")
        # Channel 0 is framed from here on; the words still show in the bytes.
        c.send(f"b LOGIN alice {PASSWORD}")
        c.until("b OK")
        c.send("s SELECT INBOX")
        c.until("s OK")
        c.send("c IDLE")
        c.until("+ idling")
        wait(hibernated, "the first hibernation")
        time.sleep(0.5)
        name = f"{int(time.time())}.capture.host"
        with open(f"{d}/mail/alice/Maildir/tmp/{name}", "w") as f:
            f.write("From: a@example.org\r\nSubject: capture\r\n\r\nhello\r\n")
        os.rename(f"{d}/mail/alice/Maildir/tmp/{name}", f"{d}/mail/alice/Maildir/new/{name}")
        c.until("EXISTS")
        time.sleep(1)
        wait(hibernated, "the second hibernation")
        time.sleep(0.5)
        c.send("DONE")
        c.until("c OK")
        c.send("z LOGOUT")
        c.until("z OK")
        time.sleep(0.5)
    finally:
        strace.terminate()
        strace.wait()
        subprocess.run(["chroot", root, "doveadm", "-c", f"{inner}/dovecot.conf", "stop"])
    ver = subprocess.run(["chroot", root, "dovecot", "--version"], capture_output=True,
                         text=True).stdout.strip()
    return re.sub(r"\s*\(\)$", "", ver)


# One file per process (-ff): no call is split by another's.
CALL = re.compile(r'^(\d+\.\d+) (sendmsg|write|writev|recvmsg|read)\((\d+), (.*)\)\s+=\s+(-?\d+)')
DATA = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def streams(trace):
    """Per (pid, fd, direction): the bytes in order, the streams in the
    order they started."""
    out, first = {}, {}
    for path in glob.glob(trace + ".*"):
        pid = path.rsplit(".", 1)[1]
        for line in open(path):
            m = CALL.match(line)
            if not m or int(m.group(5)) <= 0:
                continue
            at, call, fd, args = float(m.group(1)), m.group(2), m.group(3), m.group(4)
            chunks = DATA.findall(args)
            if not chunks:
                continue
            data = b"".join(bytes.fromhex(c.replace("\\x", "")) for c in chunks)
            data = data[: int(m.group(5))]
            way = "in" if call in ("read", "recvmsg") else "out"
            first.setdefault((pid, fd, way), at)
            out[(pid, fd, way)] = out.get((pid, fd, way), b"") + data
    return sorted(out.items(), key=lambda kv: first[kv[0]])


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    root, dest = sys.argv[1].rstrip("/"), sys.argv[2]
    origin = f"{sys.argv[3]}, " if len(sys.argv) == 4 else ""
    trace = f"{root}/tmp/cap.strace"
    ver = run(root, trace)
    cmds, returns, answers, client = [], [], [], None
    for (pid, fd, way), data in streams(trace):
        if way != "out":
            continue
        for line in data.split(b"\n"):
            if b"\tstate=" in line and b"\tnotify_fd" in line:
                cmds.append(line + b"\n")
            elif b"\thibernation_started=" in line:
                returns.append(line + b"\n")
        if data.startswith(b"VERSION\timap-master") and b"\n+\n" in data:
            answers.append(b"+\n")
        at = data.find(b"* 1 EXISTS")
        if at >= 0 and client is None and b"\tstate=" not in data:
            client = data[max(0, at - 4):at + 40]
    if len(cmds) != 2 or len(returns) != 2 or client is None:
        sys.exit(f"expected 2 hand-offs, 2 returns and the EXISTS; got {len(cmds)}, "
                 f"{len(returns)}, {client!r} (see {trace})")
    with open(dest, "w") as f:
        f.write(f"# Bytes exchanged by Dovecot {ver} ({origin}run in a chroot) between its imap process,\n"
                "# its own imap-hibernate and imap-master, read with strace "
                "(tests/captures/capture.py). Python repr() of each line.\n"
                "# User alice, Maildir INBOX selected; the client asked for multiplexed output first\n"
                "# (ID (\"x-multiplex\" \"0\") from a trusted address), then 'c IDLE'. A message delivered\n"
                "# into new/ woke it (the first return, idle-continue); the restored imap process\n"
                "# hibernated it again and the client's DONE returned it a second time.\n"
                "# Each 'cmd' line's first byte carried the client socket; each 'return' line's too.\n")
        for c in cmds:
            f.write(f"cmd: {c!r}\n")
        for r in returns:
            f.write(f"return: {r!r}\n")
        for a in answers:
            f.write(f"answer: {a!r}\n")
        f.write(f"client after the first return: {client!r}\n")
    print(f"{dest}: Dovecot {ver}, {len(cmds)} hand-offs, {len(returns)} returns")


if __name__ == "__main__":
    main()
