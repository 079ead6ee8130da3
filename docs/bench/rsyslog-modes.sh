#!/usr/bin/env bash
# docs/benchmarks.md, "rsyslog in front": messages per second through rsyslog
# into qbroker with the two shipped snippets, on loopback, release build.
#   docs/bench/rsyslog-modes.sh forward 400000
#   docs/bench/rsyslog-modes.sh omprog 200000
# Needs /usr/sbin/rsyslogd and python3; builds nothing (cargo build --release --workspace first).
set -u
mode=$1; N=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
"$repo/target/release/loadgen" sink --listen 127.0.0.1:0 --cert-out "$D/ca.pem" > "$D/sink.out" 2>&1 &
SINK=$!
for _ in $(seq 50); do grep -q "127.0.0.1:" "$D/sink.out" && break; sleep 0.1; done
SPORT=$(grep -o "127.0.0.1:[0-9]*" "$D/sink.out" | head -1 | cut -d: -f2)
MPORT=$(free_port)
cat > "$D/q.toml" <<EOT
listen = "127.0.0.1:0"
data_dir = "$D/data"
metrics_listen = "127.0.0.1:$MPORT"
[[targets]]
name = "varonis"
url = "https://127.0.0.1:$SPORT/events"
ca_file = "$D/ca.pem"
EOT
input="input(type=\"imtcp\" address=\"127.0.0.1\" port=\"0\" listenPortFileName=\"$D/port\""
BROKER=""
if [ "$mode" = forward ]; then
    "$repo/target/release/qbroker" run -c "$D/q.toml" > "$D/broker.log" 2>&1 &
    BROKER=$!
    for _ in $(seq 50); do grep -q "accepting syslog" "$D/broker.log" && break; sleep 0.1; done
    QPORT=$(grep "accepting syslog" "$D/broker.log" | grep -o "127.0.0.1:[0-9]*" | cut -d: -f2)
    sed -e "s#input(type=\"imtcp\" port=\"514\"#$input#" \
        -e "s#target=\"127.0.0.1\" port=\"5514\"#target=\"127.0.0.1\" port=\"$QPORT\"#" \
        "$repo/deploy/rsyslog/10-qbroker-forward.conf" > "$D/snippet.conf"
else
    sed -e "s#input(type=\"imtcp\" port=\"514\"#$input#" \
        -e "s#/usr/local/bin/qbroker stdin --config /etc/qbroker/qbroker.toml#$repo/target/release/qbroker stdin --config $D/q.toml#" \
        -e "s#/var/log/qbroker-stdin.log#$D/stdin.log#" \
        "$repo/deploy/rsyslog/10-qbroker-omprog.conf" > "$D/snippet.conf"
fi
printf 'global(workDirectory="%s" maxMessageSize="64k")\ninclude(file="%s/snippet.conf")\n' "$D" "$D" > "$D/rsyslog.conf"
/usr/sbin/rsyslogd -n -f "$D/rsyslog.conf" -i "$D/pid" > "$D/rsyslogd.out" 2>&1 &
RS=$!
for _ in $(seq 100); do [ -s "$D/port" ] && break; sleep 0.1; done
python3 - "$(cat "$D/port")" "$MPORT" "$N" "$mode" <<'PY'
import socket, sys, time, urllib.request
port, mport, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
frames = []
for i in range(n):
    msg = ('<14>1 2026-11-26T10:00:00.123456Z east-%d qumulo - - - {"user_id":{"sid":"S-1-5-21-1","auth_id":"500",'
           '"name":"AD\\\\alice"},"user_ip":"10.0.0.1","protocol":"smb2","operation":"fs_write_data","status":"ok",'
           '"details":{"file_id":"%d","path":"/share/projects/f%d.docx","offset":0,"size":4096,"file_size":8192}}') % (i % 6 + 1, i, i)
    frames.append(b"%d %s" % (len(msg.encode()), msg.encode()))
def delivered():
    try:
        page = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport).read().decode()
    except OSError:
        return 0
    return next((int(l.split()[-1]) for l in page.splitlines()
                 if l.startswith("qbroker_target_events_delivered_total")), 0)
s = socket.create_connection(("127.0.0.1", port)); t = time.time()
s.sendall(b"".join(frames)); s.close()
while delivered() < n and time.time() - t < 120:
    time.sleep(0.05)
dt = time.time() - t
print("%s: %d messages (%d bytes) delivered in %.2f s: %.0f messages/s" % (sys.argv[4], delivered(), len(frames[0]), dt, delivered() / dt))
PY
kill "$RS"; wait "$RS" 2>/dev/null
[ -n "$BROKER" ] && kill "$BROKER"
kill "$SINK"; wait 2>/dev/null
