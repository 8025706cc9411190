#!/bin/sh
# wsm: switch nginx's TLS listener on when its certificate files exist (docs/operations.md,
# "TLS"). Run by the official image's entrypoint after it rendered the templates (20-envsubst-
# on-templates.sh): renders nginx/tls/tls.conf.template into /etc/nginx/wsm-tls/tls.conf, which
# default.conf includes. Without the files nothing is written and only plain HTTP is served.
set -eu

out=/etc/nginx/wsm-tls
template=/etc/nginx/wsm-tls-template/tls.conf.template
cert=${NGINX_TLS_CERT_FILE:-/etc/nginx/certs/fullchain.pem}
key=${NGINX_TLS_KEY_FILE:-/etc/nginx/certs/privkey.pem}

mkdir -p "$out"
rm -f "$out/tls.conf"
if [ -f "$cert" ] && [ -f "$key" ]; then
    # Only the NGINX_ variables, as the image renders its templates.
    defined=$(printf '${%s} ' $(env | cut -d= -f1 | grep '^NGINX_'))
    envsubst "$defined" < "$template" > "$out/tls.conf"
    echo "$0: TLS on: $cert"
else
    echo "$0: no $cert and $key: TLS off (plain HTTP only)"
fi
