#!/bin/sh
# Build a Dovecot release from its public source tree into a Debian 13
# chroot, so that the rig can run it (IMAP_IDLE_DOVECOT_ROOT=CHROOT) for
# live tests and for captures of its hand-off and return bytes. This is how
# dovecot-2.4.4.txt was made; CI does not run it (the captures are checked
# in, and CI's chroots use Debian's packages).
#
#   build-dovecot.sh SRC CHROOT   (as root)
#
# SRC: an unpacked source tree of Dovecot (`git archive 2.4.4` of its
# repository, or a release tarball). CHROOT: a new directory.
#
# The chroot starts as Debian 13 with its dovecot-imapd package (for the
# dovecot and dovenull users and the paths the rig expects), plus what the
# build needs. The packaged Dovecot is then removed (its users are made again)
# and the source build installed in its place, with Debian's paths. Dovecot's build fetches the
# Unicode data files with wget; they come from Debian's unicode-data here
# instead (NormalizationTest.txt, used only by Dovecot's own unit tests, is
# left empty).
set -eu
src=$1
root=$2
[ -f "$src/configure.ac" ] || { echo "$src: not a Dovecot source tree" >&2; exit 2; }
[ ! -e "$root" ] || { echo "$root exists already" >&2; exit 2; }

mmdebstrap --quiet --variant=apt \
    --include=dovecot-imapd,dovecot-core,build-essential,autoconf,automake,libtool,pkgconf,bison,flex,gettext,python3-minimal,unicode-data,libssl-dev,zlib1g-dev,libcap-dev \
    trixie "$root"
mkdir -p "$root/src/dovecot"
cp -a "$src/." "$root/src/dovecot/"

ucd=$root/src/dovecot/src/lib/ucd
mkdir -p "$ucd"
for f in CaseFolding CompositionExclusions DerivedCoreProperties \
    DerivedNormalizationProps emoji-data GraphemeBreakProperty \
    GraphemeBreakTest PropertyValueAliases PropList SpecialCasing \
    UnicodeData WordBreakProperty; do
    found=$(find "$root/usr/share/unicode" -name "$f.txt" | head -n 1)
    [ -n "$found" ] || { echo "unicode-data has no $f.txt" >&2; exit 1; }
    cp "$found" "$ucd/$f.txt"
done
: >"$ucd/NormalizationTest.txt"

mount -t proc proc "$root/proc"
trap 'umount "$root/proc"' EXIT
chroot "$root" sh -euc '
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq dovecot-imapd dovecot-core dovecot-sieve >/dev/null
    # The purge takes the package'"'"'s users with it.
    getent group dovecot >/dev/null || groupadd --system dovecot
    getent passwd dovecot >/dev/null ||
        useradd --system -g dovecot -d /usr/lib/dovecot -s /usr/sbin/nologin dovecot
    getent group dovenull >/dev/null || groupadd --system dovenull
    getent passwd dovenull >/dev/null ||
        useradd --system -g dovenull -d /nonexistent -s /usr/sbin/nologin dovenull
    cd /src/dovecot
    ./autogen.sh >/tmp/autogen.log 2>&1
    ./configure --prefix=/usr --sysconfdir=/etc --localstatedir=/var \
        --libexecdir=/usr/lib --with-moduledir=/usr/lib/dovecot/modules \
        --with-rundir=/run/dovecot --without-pam --without-systemd \
        --without-lua --without-ldap --without-sql --without-icu \
        --without-stemmer --without-textcat --without-solr --without-sodium \
        >/tmp/configure.log 2>&1
    make -j"$(nproc)" >/tmp/make.log 2>&1
    make install >/tmp/install.log 2>&1
    mkdir -p /etc/dovecot
    dovecot --version
'
