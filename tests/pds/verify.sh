#!/usr/bin/env bash
# Smoke test: start the PDS, run the HTTP calls knotd relies on, stop it.
# Needs curl and jq. Usage: tests/pds/verify.sh   (exits non-zero on failure)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

fail() { echo "verify: FAIL: $*" >&2; exit 1; }
# keep start.mjs's stdin open via a coprocess; it exits when we close it
coproc PDS { exec node start.mjs 2>/dev/null; }
trap 'kill -TERM $PDS_PID 2>/dev/null || true' EXIT
read -r -t 60 ready <&"${PDS[0]}" || fail "PDS did not become ready"
P=$(jq -r .pds <<<"$ready"); PLC=$(jq -r .plc <<<"$ready")
echo "ready: $ready"

post() { # post NSID JSON [BEARER]
  curl -sS -X POST "$P/xrpc/$1" -H 'content-type: application/json' \
    ${3:+-H "authorization: Bearer $3"} ${2:+-d "$2"}
}

acct=$(post com.atproto.server.createAccount \
  '{"handle":"alice.test","email":"alice@example.com","password":"hunter2hunter2"}')
DID=$(jq -er .did <<<"$acct") || fail "createAccount: $acct"
REFRESH=$(jq -er .refreshJwt <<<"$acct")
echo "createAccount: did=$DID"

sess=$(post com.atproto.server.createSession '{"identifier":"alice.test","password":"hunter2hunter2"}')
AT=$(jq -er .accessJwt <<<"$sess") || fail "createSession: $sess"
[ "$(jq -r .did <<<"$sess")" = "$DID" ] || fail "createSession did mismatch"

H40=0123456789abcdef0123456789abcdef01234567
H64=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
rec=$(jq -nc --arg did "$DID" --arg h "$H40" --arg m "$H64" \
  '{"$type":"app.knot.repo",repoId:($did+"/website"),head:$h,manifest:$m,
    peers:[{nodeId:$m,addrs:["127.0.0.1:1234"],ticket:"endpointabc"}]}')
put=$(post com.atproto.repo.putRecord \
  "$(jq -nc --arg did "$DID" --argjson r "$rec" '{repo:$did,collection:"app.knot.repo",rkey:"website",record:$r}')" "$AT")
URI=$(jq -er .uri <<<"$put") || fail "putRecord: $put"
CID=$(jq -er .cid <<<"$put")
[ "$URI" = "at://$DID/app.knot.repo/website" ] || fail "putRecord uri $URI"
echo "putRecord: $put"

got=$(curl -sS "$P/xrpc/com.atproto.repo.getRecord?repo=$DID&collection=app.knot.repo&rkey=website")
[ "$(jq -r .cid <<<"$got")" = "$CID" ] || fail "getRecord cid: $got"
[ "$(jq -cS .value <<<"$got")" = "$(jq -cS . <<<"$rec")" ] \
  || fail "getRecord value differs: $got"
echo "getRecord: ok"

ref=$(post com.atproto.server.refreshSession "" "$REFRESH")
jq -e '.accessJwt and .refreshJwt' <<<"$ref" >/dev/null || fail "refreshSession: $ref"
echo "refreshSession: ok"

doc=$(curl -sS "$PLC/$DID")
ep=$(jq -r '.service[]|select(.id=="#atproto_pds").serviceEndpoint' <<<"$doc")
[ "$ep" = "$P" ] || fail "PLC #atproto_pds endpoint $ep != $P"
echo "PLC doc: #atproto_pds -> $ep"

exec {PDS[1]}>&-   # close stdin -> start.mjs shuts down
wait "$PDS_PID" || fail "start.mjs exited non-zero on stdin close"
trap - EXIT
echo "verify: 6 passed, 0 failed"
