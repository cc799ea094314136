#!/bin/sh
# Renders the Postfix templates of docker/postfix/ for LMTP mode from the
# environment, then runs Postfix in the foreground, logging to stdout.
#   MAMORU_DOMAIN  mamoru's domain (required)
#   MYHOSTNAME     the name in the SMTP greeting (default mx.$MAMORU_DOMAIN)
#   LMTP_ADDR      mamoru's LMTP listener, HOST:PORT (default mamoru:2424)
# With MAMORU_POSTFIX_RENDER_ONLY=1 it only renders (into
# POSTFIX_CONFIG_DIR, default /etc/postfix, from MAMORU_POSTFIX_TEMPLATES):
# the test suite checks the result with postconf.
set -eu
: "${MAMORU_DOMAIN:?set MAMORU_DOMAIN}"
MYHOSTNAME=${MYHOSTNAME:-mx.$MAMORU_DOMAIN}
LMTP_ADDR=${LMTP_ADDR:-mamoru:2424}
src=${MAMORU_POSTFIX_TEMPLATES:-/usr/share/mamoru-postfix}
conf=${POSTFIX_CONFIG_DIR:-/etc/postfix}
render() {
    sed -e "s|@MAMORU_DOMAIN@|$MAMORU_DOMAIN|g" -e "s|@MYHOSTNAME@|$MYHOSTNAME|g" \
        -e "s|@SMTP_LISTEN@|smtp|g" -e "s|@LMTP_ADDR@|$LMTP_ADDR|g" \
        -e "s|@QUEUE_DIR@|/var/spool/postfix|g" -e "s|@POSTFIX_DATA_DIR@|/var/lib/postfix|g" \
        -e "s|@MAILLOG_FILE@|/dev/stdout|g" \
        -e "s|@MAMORU_BIN@|/nonexistent|g" -e "s|@MAMORU_CONFIG@|/nonexistent|g" -e "s|@MAMORU_USER@|nobody|g" \
        "$1" >"$2"
}
render "$src/main.cf" "$conf/main.cf"
render "$src/master.cf" "$conf/master.cf"
render "$src/recipients" "$conf/recipients"
render "$src/transport.lmtp" "$conf/transport"
[ "${MAMORU_POSTFIX_RENDER_ONLY:-0}" = 1 ] && exit 0
postfix check
exec postfix start-fg
