export XDG_RUNTIME_DIR=$(mktemp -d /tmp/xr-XXXX)
PY=.venv/bin/python
$PY -m xsupervise start :auto --name s1 > /tmp/s.out 2>&1 & S=$!
sleep 1.5; cat /tmp/s.out
T0=$(date +%s.%N)
$PY -m xsupervise view s1 > /tmp/v.out 2>/tmp/v.err & V=$!
for i in $(seq 100); do [ -s /tmp/v.out ] && break; sleep 0.02; done
T1=$(date +%s.%N); echo "url after $(echo "$T1 - $T0" | bc)"
URL=$(cat /tmp/v.out); echo $URL
curl -s -o /dev/null -w "%{http_code}\n" "$URL"
curl -s -o /dev/null -w "%{http_code}\n" "${URL%%\?*}"
curl -s -o /dev/null -w "%{http_code}\n" "http://127.0.0.1:$(echo $URL | cut -d: -f3 | cut -d/ -f1)/vnc_lite.html"
curl -s -o /dev/null -w "%{http_code}\n" "http://127.0.0.1:$(echo $URL | cut -d: -f3 | cut -d/ -f1)/x/websockify"
ps -ef | grep -v grep | grep -i -E "vnc|Xvfb|unshare" 
cat /proc/net/tcp
kill $S; sleep 1; cat /tmp/v.err; ps -ef | grep -v grep | grep -c -E "vnc|Xvfb"; ls -la $XDG_RUNTIME_DIR/xsupervise; wait $V; echo view rc $?
