#!/usr/bin/env python3
"""Reflection-only gRPC fuzzer for checkout-svc and billing-svc.

Discovers every service and RPC through gRPC server reflection (v1alpha),
builds the descriptors at run time (no generated code, no .proto files from
the repository), encodes requests on the wire itself (so it can send what no
well-behaved client would), and reports status codes per RPC, every
INTERNAL / UNKNOWN / DEADLINE_EXCEEDED with a reproduction, oversized error
statuses, server memory around the huge-repeated-field family, and the named
health services at the end.

See tests/fuzz/README.md. Exit status: 0 clean, 1 INTERNAL/UNKNOWN seen or a
health service not SERVING at the end, 2 usage / connection error.
"""
from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

try:
    import grpc
    from google.protobuf import descriptor as pb_descriptor
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
except ImportError as e:  # pragma: no cover
    sys.exit(f"fuzz.py: {e}; run: pip install -r tests/fuzz/requirements.txt")

FD = pb_descriptor.FieldDescriptor
KB = 1024
MB = 1024 * 1024

SKIP_SERVICE_PREFIXES = ("grpc.health.", "grpc.reflection.")
DEFAULT_HEALTH = {"checkout": "checkout.v1.CheckoutService", "billing": "billing.v1.BillingService"}
FALLBACK_PLANS = ["basic-monthly", "pro-monthly", "free"]
FINDING_CODES = ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")
FAILING_CODES = ("INTERNAL", "UNKNOWN")
# Codes produced by this client before anything reached the server.
CLIENT_REJECTED = "CLIENT_REJECTED"

# --------------------------------------------------------------------------
# wire encoding (proto3, hand rolled so that any value can go into any field)
# --------------------------------------------------------------------------
WT_VARINT, WT_I64, WT_LEN, WT_SGROUP, WT_EGROUP, WT_I32 = 0, 1, 2, 3, 4, 5

VARINT_TYPES = {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_BOOL, FD.TYPE_ENUM}
ZIGZAG_TYPES = {FD.TYPE_SINT32, FD.TYPE_SINT64}
I64_TYPES = {FD.TYPE_FIXED64, FD.TYPE_SFIXED64, FD.TYPE_DOUBLE}
I32_TYPES = {FD.TYPE_FIXED32, FD.TYPE_SFIXED32, FD.TYPE_FLOAT}
LEN_TYPES = {FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_MESSAGE}
INT_TYPES = VARINT_TYPES - {FD.TYPE_BOOL, FD.TYPE_ENUM} | ZIGZAG_TYPES | {FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}


def varint(n: int) -> bytes:
    """Unsigned LEB128. Negative numbers are two's complement on 64 bits (as
    protobuf does for int32/int64); numbers above 2**64 give over-long varints."""
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63) if n >= 0 else ((-n) << 1) - 1


def key(num: int, wt: int) -> bytes:
    return varint((num << 3) | wt)


def ld(num: int, payload: bytes) -> bytes:
    return key(num, WT_LEN) + varint(len(payload)) + payload


def wire_type(fd: FD) -> int:
    if fd.type in VARINT_TYPES or fd.type in ZIGZAG_TYPES:
        return WT_VARINT
    if fd.type in I64_TYPES:
        return WT_I64
    if fd.type in I32_TYPES:
        return WT_I32
    return WT_LEN


def is_repeated(fd: FD) -> bool:
    r = getattr(fd, "is_repeated", None)
    if r is not None:
        return bool(r() if callable(r) else r)
    return fd.label == FD.LABEL_REPEATED


def scalar_payload(fd: FD, v: Any) -> bytes:
    """The bytes after the key for one value of `fd` (ints may be out of range)."""
    import struct

    t = fd.type
    if t in VARINT_TYPES:
        return varint(int(v))
    if t in ZIGZAG_TYPES:
        return varint(zigzag(int(v)))
    if t == FD.TYPE_DOUBLE:
        return struct.pack("<d", float(v))
    if t == FD.TYPE_FLOAT:
        return struct.pack("<f", float(v)) if abs(float(v)) < 3.4e38 or v != v else struct.pack("<f", float("inf"))
    if t in (FD.TYPE_FIXED64, FD.TYPE_SFIXED64):
        return (int(v) & ((1 << 64) - 1)).to_bytes(8, "little")
    if t in (FD.TYPE_FIXED32, FD.TYPE_SFIXED32):
        return (int(v) & ((1 << 32) - 1)).to_bytes(4, "little")
    raise TypeError(t)


class Raw(bytes):
    """Already-encoded payload of a length-delimited field (garbage allowed)."""


def encode_value(fd: FD, v: Any) -> bytes:
    if fd.type in LEN_TYPES:
        if isinstance(v, Raw):
            payload = bytes(v)
        elif fd.type == FD.TYPE_MESSAGE:
            payload = encode_message(fd.message_type, v) if isinstance(v, dict) else bytes(v)
        elif isinstance(v, str):
            payload = v.encode("utf-8", "surrogatepass")
        else:
            payload = bytes(v)
        return ld(fd.number, payload)
    return key(fd.number, wire_type(fd)) + scalar_payload(fd, v)


def encode_field(fd: FD, v: Any) -> bytes:
    if is_repeated(fd) and isinstance(v, list):
        if fd.type not in LEN_TYPES and v:
            return ld(fd.number, b"".join(scalar_payload(fd, x) for x in v))  # packed
        return b"".join(encode_value(fd, x) for x in v)
    return encode_value(fd, v)


def encode_message(desc, values: dict) -> bytes:
    by_name = {f.name: f for f in desc.fields}
    out = []
    for name, v in values.items():
        if name.startswith("#raw"):
            out.append(bytes(v))
        else:
            out.append(encode_field(by_name[name], v))
    return b"".join(out)


def decode_fields(buf: bytes, limit: int = 10000) -> list[tuple[int, int, Any]]:
    """Minimal wire decoder (field number, wire type, value) for status details."""
    out, i = [], 0
    while i < len(buf) and len(out) < limit:
        k, i = _read_varint(buf, i)
        num, wt = k >> 3, k & 7
        if wt == WT_VARINT:
            v, i = _read_varint(buf, i)
        elif wt == WT_I64:
            v, i = buf[i : i + 8], i + 8
        elif wt == WT_I32:
            v, i = buf[i : i + 4], i + 4
        elif wt == WT_LEN:
            n, i = _read_varint(buf, i)
            v, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"wire type {wt}")
        out.append((num, wt, v))
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def status_detail_types(details_bin: bytes) -> list[str]:
    """type_url of each google.rpc.Status.details Any."""
    try:
        return [
            dict((n, v) for n, _, v in decode_fields(v)).get(1, b"").decode("utf-8", "replace")
            for n, wt, v in decode_fields(details_bin)
            if n == 3 and wt == WT_LEN
        ]
    except Exception:
        return ["<undecodable>"]


# --------------------------------------------------------------------------
# describing values shortly (for the repro lines)
# --------------------------------------------------------------------------
def short(v: Any, n: int = 40) -> str:
    if isinstance(v, Raw):
        return f"<raw {len(v)}B {bytes(v[:12]).hex()}{'…' if len(v) > 12 else ''}>"
    if isinstance(v, (bytes, bytearray)):
        return f"<bytes {len(v)}B {repr(bytes(v[:24]))[2:-1]}{'…' if len(v) > 24 else ''}>"
    if isinstance(v, str):
        if len(v) > n:
            return f"<str {len(v)} chars {v[:16]!r}…>"
        return repr(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={short(x, 24)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        if len(v) > 3:
            return f"[{len(v)} × {short(v[0], 20)} …]"
        return "[" + ", ".join(short(x, 20) for x in v) + "]"
    return repr(v)


def describe_values(values: dict) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in values.items() if not k.startswith("#raw")) or "<no fields>"


# --------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------
@dataclass
class Rpc:
    service_key: str  # checkout / billing
    service: str  # full service name
    name: str
    path: str
    input: Any  # Descriptor
    output: Any
    client_streaming: bool
    server_streaming: bool
    token: str = ""
    token_name: str = ""
    out_cls: Any = None


@dataclass
class Target:
    key: str
    addr: str
    tokens: list[tuple[str, str]]  # (name, token) candidates, preferred first
    channel: Any = None
    pool: Any = None
    rpcs: list[Rpc] = field(default_factory=list)
    services: list[str] = field(default_factory=list)


def channel_options(max_msg: int, max_md: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_msg),
        ("grpc.max_receive_message_length", max_msg),
        ("grpc.max_metadata_size", max_md),
        ("grpc.absolute_max_metadata_size", max_md),
        ("grpc.enable_retries", 0),
    ]


def discover(t: Target, opts, timeout: float = 10.0) -> None:
    t.channel = grpc.insecure_channel(t.addr, options=channel_options(opts.max_bytes + 8 * MB, opts.max_metadata_size))
    try:
        grpc.channel_ready_future(t.channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise SystemExit(f"fuzz.py: cannot connect to {t.key} at {t.addr}")
    db = ProtoReflectionDescriptorDatabase(t.channel)
    t.pool = descriptor_pool.DescriptorPool(db)
    t.services = sorted(db.get_services())
    for s in t.services:
        if s.startswith(SKIP_SERVICE_PREFIXES):
            continue
        sd = t.pool.FindServiceByName(s)
        for m in sd.methods:
            r = Rpc(
                service_key=t.key,
                service=s,
                name=m.name,
                path=f"/{s}/{m.name}",
                input=m.input_type,
                output=m.output_type,
                client_streaming=m.client_streaming,
                server_streaming=m.server_streaming,
            )
            try:
                r.out_cls = message_factory.GetMessageClass(m.output_type)
            except Exception:
                r.out_cls = None
            t.rpcs.append(r)


# --------------------------------------------------------------------------
# value generators
# --------------------------------------------------------------------------
INVALID_UTF8 = [
    (b"\xff", "lone 0xFF"),
    (b"\xc3\x28", "bad 2-byte sequence"),
    (b"\xed\xa0\x80", "UTF-16 surrogate (CESU)"),
    (b"\xf8\x88\x80\x80\x80", "5-byte sequence"),
    (b"abc\x80def", "stray continuation byte"),
    (b"\xc0\x80", "overlong NUL"),
    (b"\xf4\x90\x80\x80", "code point > U+10FFFF"),
    (b"user-\xe2\x82", "truncated 3-byte sequence at end"),
]

TS_SECONDS = [
    (-62135596800, "year 1 (min valid)"),
    (253402300799, "year 9999 (max valid)"),
    (-62135596801, "before year 1 (out of range)"),
    (253402300800, "year 10000 (out of range)"),
    (-(1 << 63), "i64::MIN seconds"),
    ((1 << 63) - 1, "i64::MAX seconds"),
    (0, "epoch"),
]
DATE_STRINGS = [
    "0001-01-01", "9999-12-31", "2024-02-30", "+10000-01-01", "-0001-01-01", "1970-01-01T00:00:00Z",
    "2024-13-01", "00-00-00", "2024/01/01", "today", "2024-01-01\x00", "9999-12-31T23:59:60Z",
]


def rand_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def string_mutations(rng: random.Random, fd: FD) -> list[tuple[str, str]]:
    u = rand_uuid(rng)
    muts = [
        ("empty", ""),
        ("10 KB", "a" * (10 * KB)),
        ("100 KB", "x" * (100 * KB)),
        ("NUL", "\x00"),
        ("embedded NUL", "abc\x00def"),
        ("control chars", "\x01\x02\x07\x08\x1b[31m\x7f\r\n\t"),
        ("non-UUID", "not-a-uuid"),
        ("almost UUID", u[:-1] + "g"),
        ("random UUID", u),
        ("nil UUID", "00000000-0000-0000-0000-000000000000"),
        ("uppercase UUID", u.upper()),
        ("braced UUID", "{" + u + "}"),
        ("UUID + NUL", u + "\x00"),
        ("unicode", "üñíçødé-✓-😀"),
        ("bidi/zero-width", "\u202eabc\u200b\ufeff"),
        ("SQL-ish", "' OR '1'='1'; --"),
        ("format-ish", "%s%s%n{0}${jndi:x}"),
        ("path-ish", "../../../etc/passwd"),
        ("whitespace", "   "),
        ("10 KB emoji", "😀" * 2600),
        ("128 chars", "u" * 128),
        ("129 chars", "u" * 129),
        ("numeric", "-1"),
        ("newline", "a\nb"),
    ]
    if re.search(r"day|date|_at$|time", fd.name):
        muts += [(f"date {d!r}", d) for d in DATE_STRINGS]
    if "token" in fd.name:
        muts += page_token_garbage(rng)
    return muts


def page_token_garbage(rng: random.Random) -> list[tuple[str, str]]:
    return [
        ("page_token garbage", "abc"),
        ("page_token base64 junk", base64.urlsafe_b64encode(rng.randbytes(24)).decode()),
        ("page_token base64 json -1", base64.urlsafe_b64encode(b'{"offset":-1}').decode()),
        ("page_token base64 json huge", base64.b64encode(b'{"offset":99999999999999999999}').decode()),
        ("page_token percent junk", "%%%%"),
        ("page_token 10 KB", "A" * (10 * KB)),
        ("page_token NUL", "\x00\x00"),
        ("page_token '=' padding", "===="),
        ("page_token base64 of garbage bytes", base64.b64encode(b"\xff\xfe\x00\x01").decode()),
        ("page_token UUID", rand_uuid(rng)),
        ("page_token b64 timestamp|uuid", base64.urlsafe_b64encode(f"9999-12-31T00:00:00Z|{rand_uuid(rng)}".encode()).decode()),
    ]


def int_mutations(rng: random.Random, fd: FD) -> list[tuple[str, int]]:
    return [
        ("zero", 0), ("-1", -1), ("1", 1), ("i32::MIN", -(1 << 31)), ("i32::MAX", (1 << 31) - 1),
        ("2^31", 1 << 31), ("2^32", 1 << 32), ("i64::MIN", -(1 << 63)), ("i64::MAX", (1 << 63) - 1),
        ("u64::MAX", (1 << 64) - 1), ("1e12", 10**12), ("random", rng.randint(-(1 << 40), 1 << 40)),
    ]


def enum_mutations(rng: random.Random, fd: FD) -> list[tuple[str, int]]:
    vals = [v.number for v in fd.enum_type.values]
    return [
        ("enum 0", 0), ("enum valid", rng.choice(vals)), ("enum max+1", max(vals) + 1), ("enum 99", 99),
        ("enum -1", -1), ("enum i32::MAX", (1 << 31) - 1), ("enum i32::MIN", -(1 << 31)),
        ("enum random", rng.randint(-1000, 1000)), ("enum as u64::MAX", (1 << 64) - 1),
    ]


def bytes_mutations(rng: random.Random, fd: FD) -> list[tuple[str, bytes]]:
    return [
        ("empty bytes", b""), ("NULs", b"\x00" * 100), ("random 1 KB", rng.randbytes(KB)),
        ("random 100 KB", rng.randbytes(100 * KB)), ("'{}'", b"{}"), ("invalid UTF-8", b"\xff\xfe\xfd"),
        ("JSON with NUL", b'{"event":"payment.captured\x00","id":"\x00"}'),
    ]


def message_mutations(rng: random.Random, fd: FD, depth: int) -> list[tuple[str, Any]]:
    mt = fd.message_type
    muts: list[tuple[str, Any]] = [
        ("nested empty", Raw(b"")),
        ("nested garbage", Raw(rng.randbytes(rng.randint(1, 64)))),
        ("nested truncated", Raw(b"\x0a\xff\xff\xff\x0f")),
        ("nested invalid wire type", Raw(b"\x0f\x00")),
    ]
    if mt.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        for secs, label in TS_SECONDS:
            muts.append((f"{mt.name} {label}", {"seconds": secs}))
        muts += [
            (f"{mt.name} nanos -1", {"seconds": 0, "nanos": -1}),
            (f"{mt.name} nanos 1e9", {"seconds": 0, "nanos": 1_000_000_000}),
            (f"{mt.name} nanos i32::MAX", {"seconds": 253402300799, "nanos": (1 << 31) - 1}),
        ]
    elif depth < 3:
        vals, _ = mutate_fields(rng, mt, depth + 1, all_fields=True)
        muts.append(("nested mutated", vals))
    return muts


def mutations_for(rng: random.Random, fd: FD, depth: int) -> list[tuple[str, Any]]:
    t = fd.type
    if t == FD.TYPE_STRING:
        return string_mutations(rng, fd)
    if t == FD.TYPE_BYTES:
        return bytes_mutations(rng, fd)
    if t == FD.TYPE_MESSAGE:
        return message_mutations(rng, fd, depth)
    if t == FD.TYPE_ENUM:
        return enum_mutations(rng, fd)
    if t == FD.TYPE_BOOL:
        return [("false", 0), ("true", 1), ("bool 2", 2), ("bool u64::MAX", (1 << 64) - 1)]
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return [("NaN", float("nan")), ("inf", float("inf")), ("-inf", float("-inf")), ("-0.0", -0.0), ("1e308", 1e308)]
    return int_mutations(rng, fd)


def mutate_fields(rng: random.Random, desc, depth: int = 0, all_fields: bool = False, base: dict | None = None):
    """Some (or all) fields of `desc` get a hostile value; the rest keep `base`."""
    fields = list(desc.fields)
    values = dict(base or {})
    notes = []
    if not fields:
        return values, ["<message has no fields>"]
    chosen = fields if all_fields else rng.sample(fields, rng.randint(1, min(3, len(fields))))
    for fd in chosen:
        label, v = rng.choice(mutations_for(rng, fd, depth))
        if is_repeated(fd):
            n = rng.choice([0, 1, 2, 5, 50, 500, 501])
            v = [v] * n if n else []
            label = f"{n} × {label}"
        values[fd.name] = v
        notes.append(f"{fd.name}: {label}")
    return values, notes


# --------------------------------------------------------------------------
# semi-valid values (family d) and the ids harvested from responses
# --------------------------------------------------------------------------
class Harvest:
    """Ids seen in successful responses, keyed like `session_id`, `order_id`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ids: dict[str, list[str]] = collections.defaultdict(list)
        self.plans: list[str] = []
        self.orders: dict[str, tuple[int, str]] = {}  # order id -> (amount_minor, currency)
        self.session_order: dict[str, str] = {}  # checkout session id -> order id

    def add(self, k: str, v: str) -> None:
        if not v or len(v) > 200:
            return
        with self.lock:
            lst = self.ids[k]
            if v not in lst:
                lst.append(v)
                if len(lst) > 200:
                    del lst[0]

    def pick(self, rng: random.Random, k: str) -> str | None:
        with self.lock:
            lst = sorted(self.ids.get(k, []))
        return rng.choice(lst) if lst else None

    def walk(self, msg) -> None:
        """Collect ids from a decoded response message."""
        mname = snake(msg.DESCRIPTOR.name)
        flat = {fd.name: v for fd, v in msg.ListFields() if not is_repeated(fd) and fd.type != FD.TYPE_MESSAGE}
        oid = flat.get("id") if mname == "order" else flat.get("order_id")
        with self.lock:
            if oid and "amount_minor" in flat and len(self.orders) < 5000:
                self.orders[oid] = (int(flat["amount_minor"]), str(flat.get("currency", "INR")))
            if mname == "session" and flat.get("id") and flat.get("order_id") and len(self.session_order) < 5000:
                self.session_order[flat["id"]] = flat["order_id"]
        for fd, v in msg.ListFields():
            if fd.type == FD.TYPE_MESSAGE:
                for sub in (v if is_repeated(fd) else [v]):
                    self.walk(sub)
            elif fd.type == FD.TYPE_STRING:
                for s in (v if is_repeated(fd) else [v]):
                    if fd.name == "id":
                        self.add(f"{mname}_id", s)
                        if mname == "plan":
                            with self.lock:
                                if s not in self.plans:
                                    self.plans.append(s)
                    elif fd.name.endswith("_id") or fd.name.endswith("_token"):
                        self.add(fd.name, s)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


VERBS = ("Get", "List", "Create", "Renew", "Recover", "Complete", "Cancel", "Verify", "Handle", "Start", "End",
         "Authorize", "Run", "Batch", "Cleanup", "Deduct")


def id_key_for(desc, fd: FD) -> str:
    """Which harvested pool a request field draws from."""
    n = fd.name
    if n.endswith("_ids"):
        return n[:-1]
    if n != "id":
        return n
    base = desc.name[: -len("Request")] if desc.name.endswith("Request") else desc.name
    for v in VERBS:
        if base.startswith(v):
            base = base[len(v):]
            break
    return f"{snake(base)}_id"


def semi_valid(rng: random.Random, desc, h: Harvest, depth: int = 0) -> tuple[dict, list[str]]:
    plans = h.plans or FALLBACK_PLANS
    values: dict[str, Any] = {}
    notes: list[str] = []
    for fd in desc.fields:
        n = fd.name
        t = fd.type
        v: Any = None
        if t == FD.TYPE_STRING:
            if n == "user_id":
                v = f"fuzz-user-{rng.randint(1, 12)}"
            elif n in ("plan_id",):
                v = rng.choice(plans + ["no-such-plan"])
            elif n == "deduction_id":
                v = f"fuzz-deduct-{rng.randint(1, 50)}"
            elif n == "payment_id":
                v = h.pick(rng, "payment_id") or f"pay_fuzz{rng.randint(1, 10**6)}"
            elif n == "signature":
                v = rng.randbytes(32).hex()
            elif n == "event_id":
                v = f"evt_fuzz_{rng.randint(1, 10**6)}"
            elif "token" in n:
                v = rng.choice(["", h.pick(rng, "next_page_token") or ""])
                if rng.random() < 0.5:
                    label, v = rng.choice(page_token_garbage(rng))
                    notes.append(f"{n}: {label}")
            elif re.search(r"day|date", n):
                v = rng.choice([dt.date.today().isoformat(), (dt.date.today() - dt.timedelta(days=7)).isoformat(), "2024-01-01"])
            elif n == "id" or n.endswith("_id") or n.endswith("_ids"):
                v = h.pick(rng, id_key_for(desc, fd)) or rand_uuid(rng)
            else:
                v = f"fuzz-{n}-{rng.randint(1, 100)}"
            if is_repeated(fd):
                k = id_key_for(desc, fd)
                v = [h.pick(rng, k) or rand_uuid(rng) for _ in range(rng.randint(1, 5))]
        elif t == FD.TYPE_BYTES:
            v = b"{}"
        elif t == FD.TYPE_ENUM:
            vals = [x.number for x in fd.enum_type.values if x.number != 0] or [0]
            v = rng.choice(vals)
        elif t == FD.TYPE_BOOL:
            # never let a fuzzer flip repair switches on by default; mutated family may.
            v = 0 if n in ("fix",) else rng.choice([0, 1])
        elif t in INT_TYPES or t in VARINT_TYPES:
            if n == "page_size":
                v = rng.choice([1, 20, 100])
            elif "bytes" in n:
                v = rng.choice([1, KB, 10 * MB, 10**12])
            else:
                v = rng.choice([0, 1, 2, 10])
        elif t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            v = 1.0
        elif t == FD.TYPE_MESSAGE and depth < 3:
            if fd.message_type.full_name == "google.protobuf.Timestamp":
                v = {"seconds": int(time.time())}
            else:
                v, sub = semi_valid(rng, fd.message_type, h, depth + 1)
        if v is not None:
            if is_repeated(fd) and not isinstance(v, list):
                v = [v]
            values[n] = v
    return values, notes


def hmac_hex(secret: str, data: bytes) -> str:
    import hmac

    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def sign_values(rng: random.Random, desc, vals: dict, h: Harvest, opts) -> str:
    """With the stack's gateway secrets (optional), give payment-like and
    webhook-like requests a valid HMAC so the code behind the check runs."""
    names = {f.name for f in desc.fields}
    if "signature" not in names:
        return ""
    if "body" in names and opts.webhook_secret and isinstance(vals.get("body", b""), (bytes, bytearray)):
        vals["signature"] = hmac_hex(opts.webhook_secret, bytes(vals.get("body", b"")))
        return "signature: valid webhook HMAC"
    pid = vals.get("payment_id", "")
    oid = vals.get("order_id") if "order_id" in names else h.session_order.get(vals.get("id", ""))
    if opts.payment_secret and isinstance(pid, str) and isinstance(oid, str) and oid:
        vals["signature"] = hmac_hex(opts.payment_secret, f"{oid}|{pid}".encode("utf-8", "surrogatepass"))
        return "signature: valid payment HMAC"
    return ""


def webhook_bodies(rng: random.Random, h: Harvest) -> list[tuple[str, bytes]]:
    oid = h.pick(rng, "order_id") or f"order_{rng.randint(1, 10**6)}"
    pid = f"pay_fuzz{rng.randint(1, 10**9)}"
    amt, cur = h.orders.get(oid, (100, "INR"))

    def ev(order_id: str, payment_id: str, event: str = "payment.captured", amount: Any = amt, currency: Any = cur) -> bytes:
        return json.dumps({
            "event": event,
            "payload": {"payment": {"entity": {"id": payment_id, "order_id": order_id, "amount": amount,
                                               "currency": currency, "status": "captured"}}},
        }).encode()

    return [
        ("captured event, harvested order", ev(oid, pid)),
        ("order.paid event, harvested order", ev(oid, pid, event="order.paid")),
        ("captured event, wrong amount", ev(oid, pid, amount=amt + 1)),
        ("captured event, currency 'xx\\u0000'", ev(oid, pid, currency="xx\x00")),
        ("captured event, 64/65-char ids", ev("o" * 65, "p" * 64)),
        ("order id with raw NUL", ev(oid + "\x00", pid).replace(b"\\u0000", b"\x00")),
        ("order id with escaped NUL", ev(oid + "\x00evil", pid)),
        ("payment id with NUL", ev(oid, "pay\x00x")),
        ("100 KB order id", ev("o" * (100 * KB), pid)),
        ("100 KB payment id", ev(oid, "p" * (100 * KB))),
        ("unknown event", ev(oid, pid, event="payment.\x00failed")),
        ("amount as string", ev(oid, pid, amount="100")),
        ("amount 1e400", ev(oid, pid).replace(b'"amount": 100', b'"amount": 1e400')),
        ("amount -1", ev(oid, pid, amount=-1)),
        ("deep JSON nesting (5000)", b"[" * 5000 + b"]" * 5000),
        ("not JSON", b"\x00\x01\x02 not json"),
        ("empty object", b"{}"),
        ("duplicate keys", b'{"event":"payment.captured","event":"refund.created"}'),
        ("invalid UTF-8 in JSON", b'{"event":"payment.captured","x":"\xff"}'),
        ("JSON null", b"null"),
    ]


# --------------------------------------------------------------------------
# request generation per family
# --------------------------------------------------------------------------
@dataclass
class Req:
    rpc: Rpc
    family: str
    desc: str
    body: bytes
    metadata: list[tuple[str, str]]
    deadline: float
    idx: int = 0


def is_mutating(rpc: Rpc) -> bool:
    return not rpc.name.startswith(("Get", "List", "BatchGet"))


def auth_md(rpc: Rpc) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {rpc.token}")]


def malformed(rng: random.Random, rpc: Rpc, h: Harvest, i: int) -> tuple[str, bytes]:
    desc = rpc.input
    fields = list(desc.fields)
    strings = [f for f in fields if f.type == FD.TYPE_STRING]
    kinds = ["empty", "random", "random64k", "truncated", "utf8", "wiretype", "hugevarint", "hugelen",
             "fieldnum", "unknown", "overlongvarint", "groups", "dup", "negative_len"]
    kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
    if kind == "empty":
        return "empty body", b""
    if kind == "random":
        b = rng.randbytes(rng.randint(1, 512))
        return f"random {len(b)} bytes {b[:8].hex()}…", b
    if kind == "random64k":
        return "random 64 KB", rng.randbytes(64 * KB)
    if kind == "truncated":
        vals, _ = semi_valid(rng, desc, h)
        full = encode_message(desc, vals)
        if len(full) < 2:
            return "truncated: 1-byte key only", b"\x0a"
        cut = rng.randint(1, len(full) - 1)
        return f"valid {len(full)}B message truncated at {cut} ({describe_values(vals)})", full[:cut]
    if kind == "utf8" and strings:
        fd = rng.choice(strings)
        bad, label = rng.choice(INVALID_UTF8)
        vals, _ = semi_valid(rng, desc, h)
        vals.pop(fd.name, None)
        body = encode_message(desc, vals) + ld(fd.number, bad)
        return f"invalid UTF-8 in {fd.name}: {label} ({bad.hex()})", body
    if kind in ("wiretype", "utf8") and fields:
        fd = rng.choice(fields)
        right = wire_type(fd)
        wt = rng.choice([w for w in (WT_VARINT, WT_I64, WT_LEN, WT_I32, 6, 7) if w != right])
        payload = {WT_VARINT: varint(1), WT_I64: b"\x01" * 8, WT_LEN: varint(3) + b"abc", WT_I32: b"\x01" * 4}.get(wt, b"\x00")
        return f"{fd.name} (field {fd.number}) sent with wire type {wt} instead of {right}", key(fd.number, wt) + payload
    if kind == "hugevarint":
        vf = [f for f in fields if wire_type(f) == WT_VARINT]
        fd = rng.choice(vf) if vf else None
        num = fd.number if fd else 1
        v = b"\xff" * 9 + b"\x01"
        return f"{fd.name if fd else 'field 1'}: 10-byte varint u64::MAX", key(num, WT_VARINT) + v
    if kind == "overlongvarint":
        fd = rng.choice(fields) if fields else None
        num = fd.number if fd else 1
        return f"{fd.name if fd else 'field 1'}: 11-byte over-long varint", key(num, WT_VARINT) + b"\xff" * 10 + b"\x01"
    if kind == "hugelen":
        fd = rng.choice(strings) if strings else None
        num = fd.number if fd else 1
        n = rng.choice([1 << 31, (1 << 32) + 3, (1 << 63), 100])
        return f"{fd.name if fd else 'field 1'}: length prefix {n} with 3 bytes of data", key(num, WT_LEN) + varint(n) + b"abc"
    if kind == "negative_len":
        fd = rng.choice(strings) if strings else None
        num = fd.number if fd else 1
        return f"{fd.name if fd else 'field 1'}: length prefix -1 (u64::MAX)", key(num, WT_LEN) + varint(-1) + b"abc"
    if kind == "fieldnum":
        return "field number 0", key(0, WT_VARINT) + b"\x01"
    if kind == "unknown":
        vals, _ = semi_valid(rng, desc, h)
        extra = key((1 << 29) - 1, WT_LEN) + varint(4) + b"junk" + key(1000, WT_I64) + b"\x00" * 8 + key(77, WT_I32) + b"\x00" * 4
        nested = b"x"
        for _ in range(200):
            nested = ld(5000, nested)
        return "unknown fields (max field number, 200-deep nested unknown) + valid fields", encode_message(desc, vals) + extra + nested
    if kind == "groups":
        return "start-group without end-group (wire type 3)", key(1, WT_SGROUP) + key(2, WT_VARINT) + b"\x01"
    if kind == "dup" and strings:
        fd = rng.choice(strings)
        body = b"".join(ld(fd.number, f"v{j}".encode()) for j in range(1000))
        return f"{fd.name} repeated 1000× on the wire (singular field, last wins)", body
    b = rng.randbytes(rng.randint(1, 64))
    return f"random {len(b)} bytes", b


def build_requests_for(rpc: Rpc, family: str, n: int, opts, h: Harvest) -> Callable[[int], Req]:
    """Returns a function i -> Req for i in range(n) (called lazily, in order)."""
    desc = rpc.input

    def make(i: int) -> Req:
        rng = random.Random(f"{opts.seed}:{rpc.path}:{family}:{i}")
        md = auth_md(rpc)
        if family == "malformed":
            d, body = malformed(rng, rpc, h, i)
        elif family == "mutated":
            base, _ = semi_valid(rng, desc, h)
            vals, notes = mutate_fields(rng, desc, base=base, all_fields=rng.random() < 0.2)
            if rng.random() < 0.5 and "signature" not in [n.split(":")[0] for n in notes]:
                sn = sign_values(rng, desc, vals, h, opts)
                if sn:
                    notes.append(sn)
            d, body = "; ".join(notes), encode_message(desc, vals)
            if is_mutating(rpc) and rng.random() < 0.3:
                md.append(("idempotency-key", f"fuzz-{rng.getrandbits(64):x}"))
        elif family == "semi-valid":
            vals, notes = semi_valid(rng, desc, h)
            webhook = any(f.name == "body" and f.type == FD.TYPE_BYTES for f in desc.fields) or "Webhook" in rpc.name
            if webhook and i % 2 == 0:
                label, b = rng.choice(webhook_bodies(rng, h))
                vals["body"] = b
                notes.append(f"body: {label}")
                if rng.random() < 0.5 and any(f.name == "event_id" for f in desc.fields):
                    label, v = rng.choice([("NUL", "evt\x00x"), ("10 KB", "e" * (10 * KB)), ("empty", ""), ("100 KB", "E" * (100 * KB))])
                    vals["event_id"] = v
                    notes.append(f"event_id: {label}")
            if rng.random() < 0.7:
                sn = sign_values(rng, desc, vals, h, opts)
                if sn:
                    notes.append(sn)
            variant = i % 7
            if is_mutating(rpc) or variant == 6:
                if variant == 1:
                    md.append(("idempotency-key", f"fuzz-{opts.seed}-{rpc.name}-{i}"))
                    notes.append("idempotency-key: unique")
                elif variant == 2:
                    md.append(("idempotency-key", ""))
                    notes.append("idempotency-key: empty")
                elif variant == 3:
                    md.append(("idempotency-key", "k" * (10 * KB)))
                    notes.append("idempotency-key: 10 KB")
                elif variant == 4:
                    md.append(("idempotency-key", "ключ-ü-" + str(i)))
                    notes.append("idempotency-key: non-ASCII (raw UTF-8)")
                elif variant == 5:
                    md.append(("idempotency-key", "%D0%BA%D0%BB%D1%8E%D1%87-" + str(i)))
                    notes.append("idempotency-key: non-ASCII percent-encoded")
                elif variant == 6:
                    # the same key as the previous unique one with another body: reuse conflict
                    md.append(("idempotency-key", f"fuzz-{opts.seed}-{rpc.name}-{i - 5}"))
                    notes.append("idempotency-key: reused with a different request")
            d, body = describe_values(vals) + (" | " + "; ".join(notes) if notes else ""), encode_message(desc, vals)
        else:
            raise ValueError(family)
        return Req(rpc, family, d, body, md, opts.deadline, i)

    return make


def huge_requests(rpc: Rpc, opts) -> list[Callable[[], Req]]:
    """Family c: 10k / 200k / 2M entries of empty, long or UUID strings."""
    desc = rpc.input
    rep = [f for f in desc.fields if is_repeated(f) and f.type in (FD.TYPE_STRING, FD.TYPE_BYTES)]
    targets = rep[:2]
    singular = False
    if not targets:
        s = [f for f in desc.fields if f.type in (FD.TYPE_STRING, FD.TYPE_BYTES)]
        if not s:
            return []
        targets, singular = s[:1], True
    out = []
    for fd in targets:
        for n in opts.huge_sizes:
            for kind in ("empty", "long", "uuid"):
                def make(fd=fd, n=n, kind=kind) -> Req:
                    if kind == "empty":
                        s = b""
                    elif kind == "uuid":
                        s = b"4f2c9a6e-0d1b-4e7a-9c3d-5b8a1f2e6d70"
                    else:
                        per = min(KB, max(1, opts.max_bytes // n - 6))
                        s = b"L" * per
                    entry = ld(fd.number, s)
                    count = n
                    if len(entry) * n > opts.max_bytes:
                        count = opts.max_bytes // len(entry)
                    body = entry * count
                    note = f"{fd.name}{'' if not singular else ' (singular, repeated on the wire)'}: {count} × {kind} ({len(s)} B each), body {len(body) / MB:.1f} MB"
                    if count != n:
                        note += f" (capped from {n} by --max-bytes)"
                    return Req(rpc, "huge-repeated", note, body, auth_md(rpc), opts.huge_deadline)
                out.append(make)
    return out


# --------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------
@dataclass
class Result:
    service: str
    rpc: str
    family: str
    code: str
    message: str
    desc: str
    err_size: int
    detail_types: list[str]
    elapsed: float
    body_len: int
    body_head: str
    metadata: list[tuple[str, str]]
    path: str
    addr: str
    resp_len: int = 0
    note: str = ""
    repro_file: str = ""


class Runner:
    def __init__(self, targets: dict[str, Target], opts, harvest: Harvest):
        self.targets = targets
        self.opts = opts
        self.h = harvest
        self.results: list[Result] = []
        self.lock = threading.Lock()
        self.callables: dict[tuple[str, str], Any] = {}
        self.progress_n = 0
        self.started = time.monotonic()

    def callable_for(self, rpc: Rpc):
        k = (rpc.service_key, rpc.path)
        if k not in self.callables:
            self.callables[k] = self.targets[rpc.service_key].channel.unary_unary(
                rpc.path, request_serializer=None, response_deserializer=None)
        return self.callables[k]

    def call(self, req: Req, record: bool = True) -> Result:
        rpc = req.rpc
        t0 = time.monotonic()
        code, msg, size, types, note, resp_len = "OK", "", 0, [], "", 0
        bad_md = [k for k, v in req.metadata if not k.endswith("-bin") and any(not (0x20 <= ord(c) <= 0x7E) for c in v)]
        try:
            if bad_md:
                raise ValueError(f"grpcio cannot send non-printable-ASCII values of {', '.join(bad_md)}")
            resp, _call = self.callable_for(rpc).with_call(req.body, metadata=req.metadata, timeout=req.deadline)
            resp_len = len(resp)
            if rpc.out_cls is not None:
                try:
                    m = rpc.out_cls()
                    m.ParseFromString(resp)
                    self.h.walk(m)
                except Exception as e:
                    note = f"OK response does not parse as {rpc.output.full_name}: {e}"
        except grpc.RpcError as e:
            code = e.code().name if e.code() else "UNKNOWN"
            msg = e.details() or ""
            tm = e.trailing_metadata() or ()
            dbin = b"".join(v for k, v in tm if k == "grpc-status-details-bin" and isinstance(v, bytes))
            size = len(msg.encode("utf-8", "replace")) + sum(
                len(k) + (len(v) if isinstance(v, (bytes, str)) else 0) for k, v in tm)
            types = status_detail_types(dbin) if dbin else []
            # failures gRPC core raises before anything is sent (invalid header value...)
            if code == "INTERNAL" and msg in ("Invalid metadata",):
                code, note = CLIENT_REJECTED, "grpcio refused to send this metadata (not a server response)"
        except Exception as e:  # serialization or argument errors on our side, or metadata grpcio refuses
            code, msg, note = CLIENT_REJECTED, f"{type(e).__name__}: {e}", "not sent: client-side refusal"
        res = Result(
            service=rpc.service_key, rpc=rpc.name, family=req.family, code=code, message=msg, desc=req.desc,
            err_size=size, detail_types=types, elapsed=time.monotonic() - t0, body_len=len(req.body),
            body_head=req.body[:48].hex(), metadata=[(k, v if len(v) <= 64 else f"<{len(v)} chars {v[:16]!r}…>") for k, v in req.metadata
                                                     if k != "authorization"],
            path=rpc.path, addr=self.targets[rpc.service_key].addr, resp_len=resp_len, note=note)
        if code in FINDING_CODES or size > self.opts.max_error_bytes:
            res.repro_file = self.dump_repro(req, res)
        if record:
            with self.lock:
                self.results.append(res)
                self.progress_n += 1
                if self.progress_n % 500 == 0:
                    print(f"  … {self.progress_n} requests, {time.monotonic() - self.started:.0f} s", file=sys.stderr)
        return res

    def dump_repro(self, req: Req, res: Result) -> str:
        d = self.opts.repro_dir
        if not d:
            return ""
        os.makedirs(d, exist_ok=True)
        hid = hashlib.sha1(req.rpc.path.encode() + req.body + repr(req.metadata).encode()).hexdigest()[:12]
        base = os.path.join(d, f"{req.rpc.name}-{res.code}-{hid}")
        with open(base + ".bin", "wb") as f:
            f.write(req.body)
        with open(base + ".json", "w") as f:
            json.dump({
                "service": req.rpc.service_key, "addr": res.addr, "path": req.rpc.path, "family": req.family,
                "description": req.desc, "metadata": [(k, v) for k, v in req.metadata if k != "authorization"],
                "deadline": req.deadline, "body_file": os.path.basename(base + ".bin"), "body_len": len(req.body),
                "code": res.code, "message": res.message[:2000],
            }, f, indent=1, ensure_ascii=True)
        return base + ".json"

    def run_many(self, makers: list[Callable[[], Req]], concurrency: int) -> None:
        """Runs lazily generated requests with bounded concurrency and bounded queue."""
        sem = threading.BoundedSemaphore(concurrency * 2)
        with cf.ThreadPoolExecutor(max_workers=concurrency) as ex:
            futs = []
            for mk in makers:
                if self.opts.stop_at and time.monotonic() > self.opts.stop_at:
                    print("fuzz.py: --max-seconds reached, not sending the rest", file=sys.stderr)
                    break
                req = mk()
                sem.acquire()

                def job(req=req):
                    try:
                        self.call(req)
                    finally:
                        sem.release()

                futs.append(ex.submit(job))
            for f in futs:
                f.result()


# --------------------------------------------------------------------------
# health and process memory
# --------------------------------------------------------------------------
HEALTH_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def health_check(t: Target, service: str, timeout: float = 3.0) -> str:
    f = t.channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
    try:
        resp = f(ld(1, service.encode()), timeout=timeout)
        st = dict((n, v) for n, _, v in decode_fields(resp)).get(1, 0)
        return HEALTH_NAMES.get(st, f"status {st}")
    except grpc.RpcError as e:
        return f"error {e.code().name}: {e.details()}"


class HealthMonitor(threading.Thread):
    def __init__(self, targets: dict[str, Target], names: dict[str, str], interval: float):
        super().__init__(daemon=True)
        self.targets, self.names, self.interval = targets, names, interval
        self.stop = threading.Event()
        self.samples: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.bad: list[tuple[float, str, str]] = []
        self.t0 = time.monotonic()

    def run(self):
        while not self.stop.wait(self.interval):
            for k, t in self.targets.items():
                st = health_check(t, self.names[k])
                self.samples[k][st] += 1
                if st != "SERVING":
                    self.bad.append((time.monotonic() - self.t0, k, st))


def listening_pid(addr: str) -> int | None:
    """PID of the process listening on addr's port (Linux /proc; needs permission)."""
    try:
        port = int(addr.rsplit(":", 1)[1])
    except ValueError:
        return None
    inodes = set()
    for p in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(p) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            pass
    if not inodes:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def proc_mem(pid: int | None) -> dict:
    if not pid:
        return {}
    out = {"pid": pid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                    k, v = line.split(":", 1)
                    out[k] = v.strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out["cmd"] = f.read().replace(b"\x00", b" ").decode(errors="replace").strip()[:80]
    except OSError as e:
        out["error"] = str(e)
    return out


def mem_snapshot(targets: dict[str, Target], pids: dict[str, int | None]) -> dict:
    return {k: proc_mem(pids.get(k)) for k in targets}


# --------------------------------------------------------------------------
# server log correlation (optional)
# --------------------------------------------------------------------------
def log_lines_for(path: str, start: int, needle: str, limit: int = 3) -> list[str]:
    out = []
    try:
        with open(path, "rb") as f:
            f.seek(start)
            for raw in f:
                if needle.encode() in raw:
                    line = raw.decode(errors="replace").strip()
                    try:
                        j = json.loads(line)
                        fl = j.get("fields", {})
                        line = f"{j.get('level')} {fl.get('message', '')}: {fl.get('error', '')}"
                    except Exception:
                        pass
                    out.append(line[:400])
                    if len(out) >= limit:
                        break
    except OSError:
        pass
    return out


def scan_log(path: str, start: int) -> dict:
    c = collections.Counter()
    panics = []
    try:
        with open(path, "rb") as f:
            f.seek(start)
            for raw in f:
                s = raw.decode(errors="replace")
                if '"level":"ERROR"' in s:
                    c["ERROR"] += 1
                if '"level":"WARN"' in s:
                    c["WARN"] += 1
                if "panicked" in s:
                    c["panic"] += 1
                    if len(panics) < 5:
                        panics.append(s.strip()[:400])
    except OSError as e:
        return {"error": str(e)}
    return {"counts": dict(c), "panics": panics}


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------
CODE_ORDER = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED", CLIENT_REJECTED]
ABBR = {"OK": "OK", "CANCELLED": "CANC", "UNKNOWN": "UNKN", "INVALID_ARGUMENT": "INVAL", "DEADLINE_EXCEEDED": "DEADL",
        "NOT_FOUND": "NOTFD", "ALREADY_EXISTS": "EXIST", "PERMISSION_DENIED": "PERM", "RESOURCE_EXHAUSTED": "RESEX",
        "FAILED_PRECONDITION": "FPREC", "ABORTED": "ABORT", "OUT_OF_RANGE": "RANGE", "UNIMPLEMENTED": "UNIMP",
        "INTERNAL": "INTRN", "UNAVAILABLE": "UNAVL", "DATA_LOSS": "DLOSS", "UNAUTHENTICATED": "UNAUTH",
        CLIENT_REJECTED: "CLREJ"}


def render_table(results: list[Result]) -> str:
    seen = {r.code for r in results}
    cols = [c for c in CODE_ORDER if c in seen] + sorted(seen - set(CODE_ORDER))
    per = collections.defaultdict(collections.Counter)
    for r in results:
        per[(r.service, r.rpc)][r.code] += 1
    w = max([len(f"{s}/{m}") for s, m in per] + [10])
    lines = [f"{'service/RPC':<{w}} " + " ".join(f"{ABBR.get(c, c[:6]):>6}" for c in cols) + f" {'total':>6}"]
    for (s, m) in sorted(per):
        c = per[(s, m)]
        lines.append(f"{s + '/' + m:<{w}} " + " ".join(f"{c.get(x, 0) or '.':>6}" for x in cols) + f" {sum(c.values()):>6}")
    tot = collections.Counter(r.code for r in results)
    lines.append(f"{'TOTAL':<{w}} " + " ".join(f"{tot.get(x, 0):>6}" for x in cols) + f" {len(results):>6}")
    fam = collections.defaultdict(collections.Counter)
    for r in results:
        fam[r.family][r.code] += 1
    lines.append("")
    lines.append(f"{'family':<{w}} " + " ".join(f"{ABBR.get(c, c[:6]):>6}" for c in cols) + f" {'total':>6}")
    for f_ in sorted(fam):
        c = fam[f_]
        lines.append(f"{f_:<{w}} " + " ".join(f"{c.get(x, 0) or '.':>6}" for x in cols) + f" {sum(c.values()):>6}")
    lines.append("")
    lines.append("totals by code: " + ", ".join(f"{c}={tot[c]}" for c in cols))
    lines.append("legend: " + ", ".join(f"{ABBR.get(c, c)}={c}" for c in cols))
    return "\n".join(lines)


def group_findings(results: list[Result], pred) -> list[tuple[Result, int]]:
    """One line per (service, RPC, family, code, normalized message); count of hits."""
    groups: dict[tuple, list[Result]] = collections.OrderedDict()
    for r in results:
        if not pred(r):
            continue
        norm = re.sub(r"[0-9a-f]{16,}", "<hex>", r.message)
        norm = re.sub(r"\d+", "N", norm)[:120]
        groups.setdefault((r.service, r.rpc, r.family, r.code, norm), []).append(r)
    return [(v[0], len(v)) for v in groups.values()]


def samples(results: list[Result], per: int = 3) -> dict:
    """A few (family, payload, message) examples per RPC and code, for reading the table."""
    out: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in results:
        lst = out[f"{r.service}/{r.rpc}"][r.code]
        if len(lst) < per:
            lst.append({"family": r.family, "payload": r.desc[:300], "message": r.message[:300], "err_size": r.err_size})
    return {k: dict(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="target/stack/stack.env", help="stack env file (default %(default)s)")
    ap.add_argument("--checkout-addr")
    ap.add_argument("--billing-addr")
    ap.add_argument("--admin-token")
    ap.add_argument("--checkout-token")
    ap.add_argument("--billing-token")
    ap.add_argument("--webhook-secret", help="HMAC key of webhook signatures (default GATEWAY_WEBHOOK_SECRET from --env)")
    ap.add_argument("--payment-secret", help="HMAC key of payment signatures (default GATEWAY_KEY_SECRET from --env)")
    ap.add_argument("--no-sign", action="store_true", help="never send valid gateway signatures")
    ap.add_argument("--count", type=int, default=100, help="requests per RPC across families a, b, d (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="seed; every request is derived from (seed, RPC, family, index)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--deadline", type=float, default=5.0, help="per-call deadline in seconds")
    ap.add_argument("--huge-deadline", type=float, default=30.0, help="deadline of huge-repeated requests (client send time included)")
    ap.add_argument("--huge-concurrency", type=int, default=2)
    ap.add_argument("--huge-sizes", default="10000,200000,2000000")
    ap.add_argument("--max-bytes", type=int, default=60 * MB, help="cap on one request body (default 60 MiB)")
    ap.add_argument("--max-error-bytes", type=int, default=4096, help="report statuses whose message+trailers exceed this")
    ap.add_argument("--max-metadata-size", type=int, default=4 * MB, help="client limit on received metadata, large so oversized statuses are measured")
    ap.add_argument("--families", default="malformed,mutated,semi-valid,huge-repeated",
                    help="comma list of: malformed (a), mutated (b), huge-repeated (c), semi-valid (d)")
    ap.add_argument("--rpc", default="", help="regex on Service/Method to restrict the RPCs")
    ap.add_argument("--max-seconds", type=float, default=600, help="stop sending new requests after this (0 = no bound)")
    ap.add_argument("--health-interval", type=float, default=1.0, help="health poll period during the run (0 = off)")
    ap.add_argument("--server-log", help="stack log (JSON lines) to attach logged causes of INTERNAL errors")
    ap.add_argument("--repro-dir", default="target/fuzz/repros", help="where failing bodies are saved ('' = off)")
    ap.add_argument("--json", dest="json_out", help="write the full report as JSON to this file ('-' = stdout)")
    ap.add_argument("--list", action="store_true", help="only list the discovered services and RPCs")
    ap.add_argument("--replay", help="resend a saved repro (.json from --repro-dir) and print the status")
    opts = ap.parse_args(argv)
    opts.huge_sizes = [int(x) for x in opts.huge_sizes.split(",") if x]
    families = [f.strip() for f in opts.families.split(",") if f.strip()]

    env = {}
    if opts.env and os.path.exists(opts.env):
        with open(opts.env) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, v = line.split("=", 1)
                    env[k] = v
    elif not (opts.checkout_addr and opts.billing_addr):
        print(f"fuzz.py: {opts.env} not found; start the stack or pass --checkout-addr/--billing-addr", file=sys.stderr)
        return 2
    admin = opts.admin_token or env.get("ADMIN_TOKEN", "")
    opts.webhook_secret = "" if opts.no_sign else (opts.webhook_secret or env.get("GATEWAY_WEBHOOK_SECRET", ""))
    opts.payment_secret = "" if opts.no_sign else (opts.payment_secret or env.get("GATEWAY_KEY_SECRET", ""))
    targets = {
        "checkout": Target("checkout", opts.checkout_addr or env.get("CHECKOUT_ADDR", "127.0.0.1:15051"),
                           [("ADMIN_TOKEN", admin), ("CHECKOUT_TOKEN", opts.checkout_token or env.get("CHECKOUT_TOKEN", ""))]),
        "billing": Target("billing", opts.billing_addr or env.get("BILLING_ADDR", "127.0.0.1:15052"),
                          [("ADMIN_TOKEN", admin), ("BILLING_TOKEN", opts.billing_token or env.get("BILLING_TOKEN", ""))]),
    }
    for t in targets.values():
        t.tokens = [(n, v) for n, v in t.tokens if v]

    if opts.replay:
        return replay(opts, targets, admin)

    for t in targets.values():
        discover(t, opts)
    rx = re.compile(opts.rpc) if opts.rpc else None
    rpcs = [r for t in targets.values() for r in t.rpcs if not rx or rx.search(r.path)]
    print(f"fuzz.py: seed {opts.seed}, count {opts.count}/RPC, concurrency {opts.concurrency}, deadline {opts.deadline}s, families {','.join(families)}")
    for t in targets.values():
        print(f"  {t.key:8} {t.addr}: services {', '.join(t.services)}; {len(t.rpcs)} RPCs fuzzed")
    if opts.list:
        for r in rpcs:
            print(f"  {r.path}  ({r.input.full_name} -> {r.output.full_name})"
                  + (" streaming" if r.client_streaming or r.server_streaming else ""))
        return 0
    streaming = [r for r in rpcs if r.client_streaming or r.server_streaming]
    if streaming:
        print(f"  skipping streaming RPCs (unary fuzzer): {', '.join(r.path for r in streaming)}")
        rpcs = [r for r in rpcs if r not in streaming]

    harvest = Harvest()
    runner = Runner(targets, opts, harvest)
    opts.stop_at = time.monotonic() + opts.max_seconds if opts.max_seconds else 0
    log_start = os.path.getsize(opts.server_log) if opts.server_log and os.path.exists(opts.server_log) else 0
    pids = {k: listening_pid(t.addr) for k, t in targets.items()}

    # token probe: the first candidate that is neither UNAUTHENTICATED nor PERMISSION_DENIED
    token_choice = {}
    for r in rpcs:
        t = targets[r.service_key]
        chosen = None
        for name, tok in t.tokens:
            r.token, r.token_name = tok, name
            res = runner.call(Req(r, "probe", f"empty body, token {name}", b"", auth_md(r), opts.deadline))
            if res.code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                chosen = (name, tok)
                break
        if chosen is None:
            chosen = t.tokens[0] if t.tokens else ("none", "")
            print(f"  warning: no token accepted for {r.path}; using {chosen[0]}")
        r.token_name, r.token = chosen
        token_choice[r.path] = chosen[0]
    by_tok = collections.Counter(token_choice.values())
    print("  token per RPC: " + ", ".join(f"{k} for {v} RPCs" for k, v in by_tok.items()))

    # plans for semi-valid requests (ListPlans-like RPCs answer with Plan messages)
    for r in [r for t in targets.values() for r in t.rpcs]:
        if r.name.startswith("ListPlans"):
            if not r.token:
                r.token_name, r.token = targets[r.service_key].tokens[0] if targets[r.service_key].tokens else ("none", "")
            runner.call(Req(r, "semi-valid", "ListPlans for plan ids", b"", auth_md(r), opts.deadline), record=r in rpcs)
    print(f"  gateway signing: webhook {'on' if opts.webhook_secret else 'off'}, payment {'on' if opts.payment_secret else 'off'}")
    print(f"  plans: {', '.join(harvest.plans) or '(none found, using ' + ', '.join(FALLBACK_PLANS) + ')'}")

    mon = None
    if opts.health_interval > 0:
        mon = HealthMonitor(targets, DEFAULT_HEALTH, opts.health_interval)
        mon.start()

    n_a = round(opts.count * 0.3) if "malformed" in families else 0
    n_d = round(opts.count * 0.2) if "semi-valid" in families else 0
    n_b = opts.count - n_a - n_d if "mutated" in families else 0
    t_start = time.monotonic()

    # (d) semi-valid first, in an order that creates things before using them, to harvest ids
    prio = lambda r: (0 if r.name.startswith(("List", "Create", "Start")) else 1 if r.name.startswith(("Get", "Batch")) else 2)
    if n_d:
        for level in (0, 1, 2):
            makers = []
            for r in rpcs:
                if prio(r) == level:
                    mk = build_requests_for(r, "semi-valid", n_d, opts, harvest)
                    makers += [lambda mk=mk, i=i: mk(i) for i in range(n_d)]
            runner.run_many(makers, opts.concurrency)
    # (a) malformed and (b) mutated, interleaved over RPCs
    makers = []
    for fam, n in (("malformed", n_a), ("mutated", n_b)):
        for r in rpcs:
            mk = build_requests_for(r, fam, n, opts, harvest)
            makers += [lambda mk=mk, i=i: mk(i) for i in range(n)]
    random.Random(opts.seed).shuffle(makers)
    runner.run_many(makers, opts.concurrency)
    t_ab = time.monotonic() - t_start

    mem_before = mem_snapshot(targets, pids)
    mem_after = {}
    t_c = 0.0
    if "huge-repeated" in families:
        print(f"  memory before huge-repeated: {json.dumps(mem_before)}", file=sys.stderr)
        t0 = time.monotonic()
        makers = [mk for r in rpcs for mk in huge_requests(r, opts)]
        runner.run_many(makers, opts.huge_concurrency)
        t_c = time.monotonic() - t0
        time.sleep(1.0)
        mem_after = mem_snapshot(targets, pids)

    if mon:
        mon.stop.set()
        mon.join(timeout=5)
    final_health = {k: health_check(t, DEFAULT_HEALTH[k]) for k, t in targets.items()}

    results = runner.results
    findings = group_findings(results, lambda r: r.code in FINDING_CODES)
    oversized = group_findings(results, lambda r: r.err_size > opts.max_error_bytes)
    bad_ok = group_findings(results, lambda r: r.code == "OK" and r.note)
    log_info = scan_log(opts.server_log, log_start) if opts.server_log else {}

    print()
    print(render_table(results))
    print(f"\nelapsed: families a+b+d {t_ab:.1f} s, huge-repeated {t_c:.1f} s; {len(results)} requests")
    slow = sorted(results, key=lambda r: -r.elapsed)[:5]
    print("slowest: " + "; ".join(f"{r.rpc}/{r.family} {r.code} {r.elapsed:.2f}s" for r in slow))

    def show(title: str, items: list[tuple[Result, int]], with_log: bool = False) -> None:
        print(f"\n{title}: {len(items)} distinct")
        for r, n in items:
            print(f"- {r.service} {r.rpc} [{r.family}] {r.code} ×{n}")
            print(f"    payload: {r.desc[:400]}")
            print(f"    body: {r.body_len} B, starts {r.body_head[:64] or '(empty)'}" + (f"; metadata {r.metadata}" if r.metadata else ""))
            print(f"    status ({r.err_size} B incl. trailers{', details ' + ', '.join(r.detail_types) if r.detail_types else ''}): {r.message[:300]!r}")
            if r.note:
                print(f"    note: {r.note}")
            if r.repro_file:
                print(f"    repro: python3 tests/fuzz/fuzz.py --replay {r.repro_file}")
            if with_log and opts.server_log:
                m = re.search(r"trace id ([0-9a-f]+)", r.message)
                lines = log_lines_for(opts.server_log, log_start, m.group(1)) if m else []
                for ln in lines:
                    print(f"    server log: {ln}")

    show("INTERNAL / UNKNOWN / DEADLINE_EXCEEDED", findings, with_log=True)
    show(f"error statuses larger than {opts.max_error_bytes} B (message + trailing metadata)", oversized)
    if oversized:
        print("  what a grpcio client with default limits sees for these (first 5):")
        for r, _n in oversized[:5]:
            if r.repro_file:
                print(f"    {r.rpc} ({r.desc[:60]}): {default_client_view(r.repro_file, targets, opts)}")
    if bad_ok:
        show("OK responses that do not parse", bad_ok)

    print("\nprocess memory (VmRSS current, VmHWM peak):")
    for k in targets:
        b, a = mem_before.get(k, {}), mem_after.get(k, {})
        same = [o for o in targets if o != k and pids.get(o) and pids.get(o) == pids.get(k)]
        print(f"  {k:8} pid {pids.get(k)}{' (same process as ' + same[0] + ')' if same else ''}: "
              f"before huge-repeated RSS {b.get('VmRSS', '?')} peak {b.get('VmHWM', '?')}; "
              f"after RSS {a.get('VmRSS', '?')} peak {a.get('VmHWM', '?')}")
    if mon:
        print("\nhealth during the run: " + "; ".join(f"{k}: {dict(c)}" for k, c in mon.samples.items()))
        for ts, k, st in mon.bad[:20]:
            print(f"  t+{ts:.1f}s {k}: {st}")
    print("final health: " + ", ".join(f"{DEFAULT_HEALTH[k]}={v}" for k, v in final_health.items()))
    if log_info:
        print(f"server log since start: {log_info}")

    n_fail = sum(1 for r in results if r.code in FAILING_CODES)
    unhealthy = [k for k, v in final_health.items() if v != "SERVING"]
    rc = 1 if n_fail or unhealthy else 0
    print(f"\nresult: {n_fail} INTERNAL/UNKNOWN, "
          f"{sum(1 for r in results if r.code == 'DEADLINE_EXCEEDED')} DEADLINE_EXCEEDED, {len(oversized)} oversized error kinds, "
          f"health {'OK' if not unhealthy else 'NOT SERVING: ' + ', '.join(unhealthy)} -> exit {rc}")

    if opts.json_out:
        report = {
            "seed": opts.seed, "count": opts.count, "families": families, "requests": len(results),
            "tokens": token_choice, "plans": harvest.plans,
            "by_rpc": {f"{s}/{m}": dict(collections.Counter(r.code for r in results if (r.service, r.rpc) == (s, m)))
                       for s, m in sorted({(r.service, r.rpc) for r in results})},
            "by_family": {f_: dict(collections.Counter(r.code for r in results if r.family == f_)) for f_ in sorted({r.family for r in results})},
            "totals": dict(collections.Counter(r.code for r in results)),
            "findings": [dict(vars(r), count=n) for r, n in findings],
            "oversized_errors": [dict(vars(r), count=n) for r, n in oversized],
            "ok_unparseable": [dict(vars(r), count=n) for r, n in bad_ok],
            "samples": samples(results),
            "memory": {"before_huge": mem_before, "after_huge": mem_after},
            "health": {"during": {k: dict(c) for k, c in (mon.samples.items() if mon else [])},
                       "not_serving_samples": mon.bad if mon else [], "final": final_health},
            "server_log": log_info, "exit_code": rc,
        }
        s = json.dumps(report, indent=1, default=str)
        if opts.json_out == "-":
            print(s)
        else:
            with open(opts.json_out, "w") as f:
                f.write(s)
    return rc


def default_client_view(repro_file: str, targets: dict[str, Target], opts) -> str:
    """Resends a saved request on a channel with grpcio's default metadata limits."""
    try:
        with open(repro_file) as f:
            meta = json.load(f)
        with open(os.path.join(os.path.dirname(repro_file), meta["body_file"]), "rb") as f:
            body = f.read()
        t = targets[meta["service"]]
        with grpc.insecure_channel(t.addr, options=[("grpc.max_send_message_length", opts.max_bytes + 8 * MB)]) as ch:
            tok = t.tokens[0][1] if t.tokens else ""
            md = [("authorization", f"Bearer {tok}")] + [tuple(x) for x in meta["metadata"]]
            ch.unary_unary(meta["path"], request_serializer=None, response_deserializer=None)(body, metadata=md, timeout=opts.huge_deadline)
        return "OK"
    except grpc.RpcError as e:
        return f"{e.code().name}: {(e.details() or '')[:160]!r}"
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def replay(opts, targets: dict[str, Target], admin: str) -> int:
    with open(opts.replay) as f:
        meta = json.load(f)
    with open(os.path.join(os.path.dirname(opts.replay), meta["body_file"]), "rb") as f:
        body = f.read()
    t = targets[meta["service"]]
    ch = grpc.insecure_channel(t.addr, options=channel_options(opts.max_bytes + 8 * MB, opts.max_metadata_size))
    tok = t.tokens[0][1] if t.tokens else admin
    md = [("authorization", f"Bearer {tok}")] + [tuple(x) for x in meta["metadata"]]
    call = ch.unary_unary(meta["path"], request_serializer=None, response_deserializer=None)
    print(f"replay {meta['path']} at {t.addr}: {meta['description'][:300]}")
    t0 = time.monotonic()
    try:
        resp = call(body, metadata=md, timeout=meta.get("deadline", opts.deadline))
        print(f"OK ({len(resp)} B response) in {time.monotonic() - t0:.2f}s")
        return 0
    except grpc.RpcError as e:
        print(f"{e.code().name} in {time.monotonic() - t0:.2f}s: {(e.details() or '')[:300]!r}")
        return 1 if e.code().name in FAILING_CODES else 0


if __name__ == "__main__":
    sys.exit(main())
