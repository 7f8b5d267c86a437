#!/usr/bin/env python3
"""Writes the starting corpora under fuzz/corpus/<target>/ from
tests/fixtures, deploy/ and a few hand-written values. Each file is
<selector byte><payload> where a target takes a selector byte (see the
target's source). Run from the repository root; existing files are kept."""

import base64, hashlib, json, os, sys, urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def fixture(rel):
    return (ROOT / rel).read_bytes()


pem = fixture("tests/fixtures/xfcc/client.pem").decode()
url_pem = urllib.parse.quote(pem, safe="-._~")
der = base64.b64decode("".join(l for l in pem.splitlines() if "-----" not in l))
rfc9440 = ":" + base64.b64encode(der).decode() + ":"

# xfcc: selector % 3 = only, first, last
for sel in (0, 1, 2):
    for f in ("envoy_single.txt", "envoy_appended.txt"):
        put("xfcc", bytes([sel]) + fixture(f"tests/fixtures/xfcc/{f}").strip())
for v in ('Cert="%s"' % url_pem,
          'By=spiffe://a;Hash=00;Subject="CN=a\\"b,c;d=e";URI=,By=x;Cert="%s"' % url_pem,
          'Hash=1;Cert=a;cert=b', 'a=b,c=d', 'Cert="', ' ; ', 'DNS=a;DNS=b;URI="x\\\\y"'):
    put("xfcc", b"\x00" + v.encode())

# client_cert: selector % 3 = peer certificate, client-cert, custom header
put("client_cert", b"\x00" + url_pem.encode())
put("client_cert", b"\x01" + rfc9440.encode())
put("client_cert", b"\x02" + url_pem.encode())
put("client_cert", b"\x01 :MAA=: ")
put("client_cert", b"\x00" + urllib.parse.quote("-----BEGIN CERTIFICATE-----\nMAMwAQA=\n-----END CERTIFICATE-----\n", safe="").encode())


# check_request: protobuf by hand (field numbers as in Envoy's protos)
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def header(k, v):
    return field(3, field(1, k) + field(2, v))


def check(headers, path=b"/", host=b"app.example.com", cert=b"", ctx=()):
    http = field(1, "req-1") + field(2, "GET") + b"".join(header(k, v) for k, v in headers)
    http += field(4, path) + field(5, host) + field(7, "https")
    src = field(1, field(1, field(1, "10.0.0.1"))) + (field(5, cert) if cert else b"")
    attrs = field(1, src) + field(4, field(2, http))
    attrs += b"".join(field(10, field(1, k) + field(2, v)) for k, v in ctx)
    return field(1, attrs)


put("check_request", check([(":authority", "app.example.com"), ("x-forwarded-client-cert", 'Cert="%s"' % url_pem)]))
put("check_request", check([("client-cert", rfc9440), ("accept", "text/html")], cert=url_pem.encode(), ctx=[("route", "admin")]))
put("check_request", check([("a", "1"), ("a", "2"), ("x-forwarded-client-cert", b"\xe9")], path=b"/admin/\xff", host=b""))
put("check_request", b"")

# policy_yaml / config_yaml: selector byte, then the file
for p in sorted((ROOT / "tests/fixtures/policy").rglob("*.yaml")) + [ROOT / "deploy/kubernetes/base/config/policy.yaml"]:
    put("policy_yaml", b"\xff" + p.read_bytes())
put("policy_yaml", b"\x02version: 1\n")
put("policy_yaml", b"\x10a: &a [x]\nb: *a\n")
for p in [ROOT / "deploy/demo/config.yaml", ROOT / "deploy/kubernetes/base/config/config.yaml",
          ROOT / "deploy/kubernetes/components/cluster/config/config.yaml"]:
    put("config_yaml", b"\x00" + p.read_bytes())
put("config_yaml", b"\x00posture_file: /p.yaml\npolicy_file: /policy.yaml\n")

# posture_file: selector low bit 0 = YAML, 1 = JSON
put("posture_file", b"\x00" + fixture("deploy/demo/posture.yaml"))
posture = {
    "policies": [{"id": 12, "name": "Disk encryption", "critical": True, "resolution": "Turn it on"}],
    "hosts": [{"id": 1, "uuid": "u-1", "display_name": "Anna", "team": "Admins", "team_id": 3,
               "platform": "darwin", "os_version": "14.1", "last_seen": "2026-11-30T10:00:00Z",
               "policies": {"12": "fail"}, "cves": ["CVE-2024-3094"],
               "fingerprints": ["A9:4A:8F:E5:CC:B1:9B:A6:1C:4C:08:73:D3:91:E9:87:98:2F:BB:D3"]},
              {"id": 2, "last_seen_ago": "2h", "policies": {"12": "pass"}}],
}
put("posture_file", b"\x01" + json.dumps(posture).encode())


# snapshot: length-delimited fleet_authz.v1.Snapshot
def vfield(num, n):
    return varint(num << 3) + varint(n)


def snapshot(hosts, synced=1_764_500_000_000, version=1):
    body = vfield(1, version) + vfield(2, synced) + b"".join(field(3, h) for h in hosts)
    return varint(len(body)) + body


policy = vfield(1, 12) + field(2, "Disk encryption") + vfield(3, 2) + vfield(4, 1) + field(5, "Turn it on") + vfield(6, 1_764_400_000_000)
host = (vfield(1, 1) + field(2, "u-1") + field(3, "Anna") + vfield(4, 3) + field(5, "Admins") + field(6, "darwin")
        + field(7, "14.1") + vfield(8, 1_764_499_000_000) + field(9, policy) + field(10, "CVE-2024-3094")
        + field(11, bytes(range(20))) + field(12, "C02XYZ"))
put("snapshot", snapshot([host, vfield(1, 2) + field(11, bytes(20))]))
put("snapshot", snapshot([]))
put("snapshot", snapshot([host], version=2))

# fleet_models: selector % 7 = hosts, host ids, host detail, policies, query, teams, report
api = ROOT / "tests/fixtures/fleet-api"
for sel, name in [(0, "hosts-list.json"), (1, "hosts-list.json"), (2, "host-detail.json"),
                  (2, "host-by-identifier.json"), (2, "device-host.json"), (3, "global-policies.json"),
                  (3, "team-policies.json"), (3, "team-policies-merged.json"), (5, "teams-list.json"),
                  (6, "query-report.json"), (6, "query-report-empty.json"), (6, "host-query-report.json"),
                  (0, "error.json"), (3, "error-401.json")]:
    put("fleet_models", bytes([sel]) + (api / name).read_bytes())
put("fleet_models", b"\x04" + json.dumps({"query": {"id": 31, "name": "certs", "discard_data": False, "logging": "snapshot"}}).encode())
put("fleet_models", b"\x06" + json.dumps({"report_clipped": True, "results": [{"host_id": 1, "columns": {"sha1": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"}}], "meta": {"has_next_results": False}}).encode())
