#!/bin/sh
# The example app. busybox httpd runs this for every directory without an index.html:
#   /          the greeting, answered with the status in /app/status (200; write 500 there for a broken version)
#   /healthz/  200 "ok" while /app/ready says yes (write no there for a version that never becomes ready)
#   /version/  the commit the image was built from
version=$(cat /app/version)
case "$REQUEST_URI" in
  /healthz*)
    if [ "$(cat /app/ready)" = "yes" ]; then code=200; body=ok; else code=503; body="not ready"; fi ;;
  /version*) code=200; body=$version ;;
  *) code=$(cat /app/status); body=$(cat /app/greeting) ;;
esac
case "$code" in
  200) reason=OK ;; 503) reason="Service Unavailable" ;; 500) reason="Internal Server Error" ;; *) reason=Status ;;
esac
printf 'Status: %s %s\r\nContent-Type: text/plain\r\nX-Version: %s\r\n\r\n%s\n' "$code" "$reason" "$version" "$body"
