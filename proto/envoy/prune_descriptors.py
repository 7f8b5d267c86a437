#!/usr/bin/env python3
"""Writes envoy_authz_descriptor.bin: the FileDescriptorSet of Envoy's
envoy/service/auth/v3/external_auth.proto and everything it imports, taken
from the descriptor set the envoy-types crate ships (src/generated/types.bin).
gRPC reflection serves it so tools like grpcurl can call Check.

Usage: prune_descriptors.py <envoy-types>/src/generated/types.bin <out.bin>
Plain Python: FileDescriptorSet is `repeated FileDescriptorProto file = 1`;
a FileDescriptorProto has `name = 1` and `repeated string dependency = 3`;
`source_code_info = 9` (comments) is dropped to keep the file small.
"""
import sys

ROOT = "envoy/service/auth/v3/external_auth.proto"


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def fields(buf):
    for number, wire, value, _ in spans(buf):
        yield number, wire, value


def spans(buf):
    """Each field as (number, wire type, payload or None, whole encoded bytes)."""
    i = 0
    while i < len(buf):
        start = i
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        payload = None
        if wire == 0:
            _, i = varint(buf, i)
        elif wire == 2:
            length, i = varint(buf, i)
            payload = buf[i:i + length]
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, payload, buf[start:i]


def main(src, out):
    data = open(src, "rb").read()
    files = {}
    for number, _, raw in fields(data):
        if number != 1:
            continue
        name, deps = None, []
        for n, _, v in fields(raw):
            if n == 1:
                name = v.decode()
            elif n == 3:
                deps.append(v.decode())
        files[name] = (raw, deps)
    keep, todo = [], [ROOT]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.append(name)
        todo.extend(files[name][1])
    blob = bytearray()
    for name in sorted(keep):
        # Drop source_code_info (field 9): comments and spans, not needed
        # to describe the service.
        raw = b"".join(enc for n, _, _, enc in spans(files[name][0]) if n != 9)
        blob += b"\x0a" + encode_varint(len(raw)) + raw
    open(out, "wb").write(bytes(blob))
    print(f"{len(keep)} files, {len(blob)} bytes")


def encode_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
