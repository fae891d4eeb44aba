// hmac-verify: request-signature verification for pylon.
//
// A client signs each request with a shared key:
//
//   x-signature-timestamp: <unix seconds>
//   x-signature-key:       <key id>            (optional with a single key)
//   x-signature:           <hex HMAC-SHA256(secret, canonical)>
//
//   canonical = METHOD "\n" path ["?" query] "\n" timestamp "\n" hex(SHA-256(body))
//
// The plugin recomputes the HMAC over the request as it arrived, compares
// in constant time, and checks the timestamp is within `window` of the
// gateway's clock (either way). A request that fails is answered 401 with
// the reason; one that passes goes on with `x-signature-verified: <key id>`
// (replacing anything the client sent under that name). With
// `reject-replays` (needs the `kv` capability) a signature is accepted once:
// it is remembered for twice the window.
//
// Config (JSON; unknown keys refused):
//   {"keys": {"partner-a": "<secret, at least 16 bytes>"}, "window": "5m",
//    "reject-replays": false}
//
// Needs the `clock` capability (the time window) and a request body
// (`needs.requestBody`): the body is part of what is signed. SHA-256 and
// HMAC are written out in JavaScript below: componentize-js has WebCrypto
// (`crypto.subtle`), but its calls return promises and the hooks are
// synchronous exports.

import { nowMs } from "pylon:plugin/clock@0.4.1";
import { incr } from "pylon:plugin/kv@0.4.1";
import { header, needs, noResponseEdits, parseConfig, parseDuration, proceed, respond, setHeader } from "./pylon.js";

const encoder = new TextEncoder();

// ------------------------------------------------------------ SHA-256 / HMAC

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** SHA-256 of `data` (a Uint8Array), as 32 bytes. */
function sha256(data) {
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const bitLen = data.length * 8;
  const padded = new Uint8Array(((data.length + 9 + 63) >> 6) << 6);
  padded.set(data);
  padded[data.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bitLen / 0x100000000));
  view.setUint32(padded.length - 4, bitLen >>> 0);
  const w = new Uint32Array(64);
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], b = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[i] + w[i]) >>> 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) >>> 0;
      hh = g; g = f; f = e; e = (d + t1) >>> 0;
      d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) outView.setUint32(i * 4, h[i]);
  return out;
}

/** HMAC-SHA256 of `message` under `key` (both Uint8Array). */
function hmacSha256(key, message) {
  const block = new Uint8Array(64);
  block.set(key.length > 64 ? sha256(key) : key);
  const inner = new Uint8Array(64 + message.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = block[i] ^ 0x36;
    outer[i] = block[i] ^ 0x5c;
  }
  inner.set(message, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}

const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** Equal strings, in time that depends on the length only. */
function constantTimeEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

// ------------------------------------------------------------ the plugin

// One instance serves one request at a time; configure runs first.
let keys = new Map(); // key id -> secret bytes
let windowMs = 300_000;
let rejectReplays = false;

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;
const MIN_SECRET = 16;

function configure(text) {
  const raw = parseConfig(
    text,
    { keys: ["object", undefined], window: ["string", "5m"], "reject-replays": ["boolean", false] },
    "hmac-verify",
  );
  const problems = [];
  const parsed = new Map();
  for (const [id, secret] of Object.entries(raw.keys)) {
    if (!KEY_ID.test(id)) problems.push(`keys: ${JSON.stringify(id.slice(0, 64))} is not a key id (letters, digits, \`.\`, \`_\`, \`-\`)`);
    else if (typeof secret !== "string" || encoder.encode(secret).length < MIN_SECRET)
      problems.push(`keys.${id}: the secret must be a string of at least ${MIN_SECRET} bytes`);
    else parsed.set(id, encoder.encode(secret));
  }
  if (Object.keys(raw.keys).length === 0) problems.push("keys: at least one key is needed");
  let window = 0;
  try {
    window = parseDuration(raw.window);
    if (window === 0) problems.push("window: must be longer than 0");
  } catch (e) {
    problems.push(`window: ${e}`);
  }
  if (problems.length) throw `invalid hmac-verify config: ${problems.join("; ")}`;
  keys = parsed;
  windowMs = window;
  rejectReplays = raw["reject-replays"];
  return needs({ requestBody: true });
}

const deny = (reason) =>
  respond(401, `${reason}\n`, { "www-authenticate": 'HMAC-SHA256 headers="x-signature x-signature-timestamp x-signature-key"' });

function verify(request) {
  const signature = header(request, "x-signature");
  if (signature === undefined) return deny("missing x-signature header");
  if (!/^[0-9a-fA-F]{64}$/.test(signature.trim())) return deny("malformed x-signature header");
  const timestamp = header(request, "x-signature-timestamp");
  if (timestamp === undefined) return deny("missing x-signature-timestamp header");
  if (!/^\d{1,12}$/.test(timestamp)) return deny("malformed x-signature-timestamp header");

  let keyId = header(request, "x-signature-key");
  if (keyId === undefined) {
    if (keys.size !== 1) return deny("missing x-signature-key header");
    keyId = keys.keys().next().value;
  }
  const secret = keys.get(keyId);
  if (secret === undefined) return deny("unknown signature key");

  const skew = Number(nowMs()) - Number(timestamp) * 1000;
  if (skew > windowMs) return deny("signature expired");
  if (-skew > windowMs) return deny("signature timestamp in the future");

  const query = request.query();
  const target = query === undefined ? request.path() : `${request.path()}?${query}`;
  const body = request.body() ?? new Uint8Array(0);
  const canonical = `${request.method()}\n${target}\n${timestamp}\n${hex(sha256(body))}`;
  const expected = hex(hmacSha256(secret, encoder.encode(canonical)));
  if (!constantTimeEqual(expected, signature.trim().toLowerCase())) return deny("bad signature");

  if (rejectReplays) {
    let seen;
    try {
      seen = incr(`seen:${expected}`, 1n, BigInt(2 * windowMs));
    } catch (e) {
      return respond(503, "replay check unavailable\n");
    }
    if (seen > 1n) return deny("replayed signature");
  }
  return proceed({ headers: [setHeader("x-signature-verified", keyId)] });
}

export const guest = {
  configure,
  onRequest: verify,
  onResponse(_request, _response) {
    return noResponseEdits();
  },
};
