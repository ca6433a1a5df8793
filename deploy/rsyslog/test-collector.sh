#!/usr/bin/env bash
# Prepares a throwaway rsyslog collector for peergraph's syslog sink tests (and for trying the sink
# by hand): a private CA and a server certificate for "localhost" / 127.0.0.1, and an rsyslog
# configuration listening on loopback over UDP, TCP (octet-counted) and TLS (gnutls), writing what
# each input receives to its own file, one JSON object per message:
#
#   {"pri":"131", "app":"peergraph", "procid":"42", "msgid":"raised", "sd":"[...]", "msg":"CEF:0|..."}
#
# as rsyslog's RFC 5424 parser understood it. Nothing is started: run the printed command in the
# foreground (the tests do, and kill it when done).
#
#   deploy/rsyslog/test-collector.sh DIR UDP_PORT TCP_PORT TLS_PORT
#
# Needs: rsyslog, rsyslog-gnutls, openssl (Debian: apt-get install rsyslog rsyslog-gnutls openssl).
set -euo pipefail

die() { printf 'test-collector.sh: %s\n' "$*" >&2; exit 1; }
(($# == 4)) || die "usage: test-collector.sh DIR UDP_PORT TCP_PORT TLS_PORT"
dir="$1" udp="$2" tcp="$3" tls="$4"
command -v openssl >/dev/null || die "openssl is not installed"
command -v rsyslogd >/dev/null || [[ -x /usr/sbin/rsyslogd ]] || die "rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls)"
[[ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so || -n "$(find /usr/lib -name lmnsd_gtls.so -print -quit 2>/dev/null)" ]] \
  || die "rsyslog's gnutls driver is missing (apt-get install rsyslog-gnutls)"

mkdir -p "$dir/work"
cd "$dir"

# A CA, and a server certificate it signs (a self-signed leaf would be refused by strict clients).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=peergraph test CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
cat > server.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile server.ext -out server.pem 2>/dev/null
chmod 600 server.key ca.key

cat > rsyslog.conf <<CONF
global(
  workDirectory="$dir/work"
  defaultNetstreamDriverCAFile="$dir/ca.pem"
  defaultNetstreamDriverCertFile="$dir/server.pem"
  defaultNetstreamDriverKeyFile="$dir/server.key"
  maxMessageSize="64k"
)
module(load="imudp")
module(load="imtcp" maxSessions="50")

template(name="parsed" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}

input(type="imudp" address="127.0.0.1" port="$udp" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="$tcp" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="$tls" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")

ruleset(name="udp") { action(type="omfile" file="$dir/udp.log" template="parsed") }
ruleset(name="tcp") { action(type="omfile" file="$dir/tcp.log" template="parsed") }
ruleset(name="tls") { action(type="omfile" file="$dir/tls.log" template="parsed") }
CONF

printf 'rsyslogd -n -f %s/rsyslog.conf -i %s/rsyslogd.pid\n' "$dir" "$dir"
