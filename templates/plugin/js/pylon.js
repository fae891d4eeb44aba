// Thin helpers over the bindings componentize-js generates for a pylon
// plugin: config parsing that refuses unknown keys, durations such as "5m",
// building the records the hooks return, and reading headers as text.
// Everything here is a shortcut for what the bindings already take (plain
// objects, `{tag, val}` variants, Uint8Array bytes); use those directly for
// anything it does not cover. Shipped by `pylon plugin new --lang js`; keep
// a copy beside plugin.js.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Bytes for a header value or body: a string is UTF-8 encoded. */
export function bytes(value) {
  return typeof value === "string" ? encoder.encode(value) : value;
}

/** Bytes as text (UTF-8, invalid sequences replaced), or undefined. */
export function text(value) {
  return value === undefined ? undefined : decoder.decode(value);
}

/** The first value of header `name` as text, or undefined. */
export function header(request, name) {
  return text(request.header(name));
}

// ---------------------------------------------------------------- config

function typeOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function distance(a, b) {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const next = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = row[j];
      row[j] = next;
    }
  }
  return row[b.length];
}

/**
 * Parse the route's JSON config. `fields` maps each key to
 * `[type, default]`, type one of "string", "number", "boolean", "object",
 * "array"; a default of `undefined` makes the key required. Blank text is
 * `{}`. Unknown keys, missing required keys and wrong types throw
 * "invalid <plugin> config: ..." (throwing from `configure` refuses the
 * config), with the closest known key for a typo.
 */
export function parseConfig(textValue, fields, plugin = "plugin") {
  const fail = (message) => `invalid ${plugin} config: ${message}`;
  let raw;
  try {
    raw = textValue.trim() === "" ? {} : JSON.parse(textValue);
  } catch (e) {
    throw fail(`not JSON (${e.message})`);
  }
  if (typeOf(raw) !== "object") throw fail("expected a JSON object");
  const known = Object.keys(fields);
  for (const key of Object.keys(raw)) {
    if (!Object.hasOwn(fields, key)) {
      const best = known.reduce(
        (b, k) => (b === undefined || distance(key, k) < distance(key, b) ? k : b),
        undefined,
      );
      const d = best === undefined ? 0 : distance(key, best);
      const hint = d > 0 && d <= Math.max(1, Math.ceil(key.length / 3)) ? ` (did you mean \`${best}\`?)` : "";
      const expected = known.map((k) => `\`${k}\``).join(", ") || "no keys";
      throw fail(`unknown field \`${key}\`, expected ${expected}${hint}`);
    }
  }
  const out = {};
  for (const [key, [type, fallback]] of Object.entries(fields)) {
    if (!Object.hasOwn(raw, key)) {
      if (fallback === undefined) throw fail(`missing field \`${key}\``);
      out[key] = fallback;
      continue;
    }
    if (typeOf(raw[key]) !== type) throw fail(`${key}: expected ${type}, got ${typeOf(raw[key])}`);
    out[key] = raw[key];
  }
  return out;
}

const UNITS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Milliseconds of a duration written as whole numbers with units, largest
 * first: "250ms", "30s", "10m", "1h30m", "1d" (the Rust SDK's format).
 * Throws a message that starts with the text.
 */
export function parseDuration(value) {
  const bad = (why) => `${JSON.stringify(String(value).slice(0, 64))} is not a duration like "250ms", "10m" or "1h30m": ${why}`;
  if (typeof value !== "string") throw bad("expected a string");
  const t = value.trim();
  if (t === "" || t.length > 64) throw bad(t === "" ? "it is empty" : "too long");
  const re = /(\d+)(ms|s|m|h|d)/y;
  let total = 0;
  let last = Infinity;
  while (re.lastIndex < t.length) {
    const at = re.lastIndex;
    const m = re.exec(t);
    if (!m) {
      if (/^\d+\.\d/.test(t.slice(at))) throw bad("no fractions; use a smaller unit");
      throw bad(`expected a number and a unit (ms, s, m, h, d) at ${JSON.stringify(t.slice(at, at + 8))}`);
    }
    const scale = UNITS[m[2]];
    if (scale >= last) throw bad("units must go from largest to smallest, each once");
    last = scale;
    total += Number(m[1]) * scale;
  }
  if (!Number.isSafeInteger(total)) throw bad("too large");
  return total;
}

// ---------------------------------------------------------------- results

/** What `configure` returns: by default the request phase only. */
export function needs({
  requestPhase = true,
  requestBody = false,
  responsePhase = false,
  responseBody = false,
  fixedRequestHeaders = [],
  fixedResponseHeaders = [],
} = {}) {
  return { requestPhase, requestBody, responsePhase, responseBody, fixedRequestHeaders, fixedResponseHeaders };
}

/** Replace every value of `name`. */
export const setHeader = (name, value) => ({ tag: "set", val: { name, value: bytes(value) } });
/** Add a value of `name`, keeping the others. */
export const appendHeader = (name, value) => ({ tag: "append", val: { name, value: bytes(value) } });
/** Remove every value of `name`. */
export const removeHeader = (name) => ({ tag: "remove", val: name });

/**
 * Answer the client now: `respond(401, "bad signature\n", {"www-authenticate": "HMAC"})`.
 * A body without a content-type in `headers` is sent as text/plain.
 */
export function respond(status, body = "", headers = {}) {
  const list = Object.entries(headers).map(([name, value]) => ({ name: name.toLowerCase(), value: bytes(value) }));
  if (body && !list.some((h) => h.name === "content-type")) {
    list.unshift({ name: "content-type", value: bytes("text/plain; charset=utf-8") });
  }
  return { tag: "respond", val: { status, headers: list, body: body ? bytes(body) : undefined } };
}

/** Let the request go on with these edits (all optional). */
export function proceed({ headers = [], path, query, upstream, body, responseHeaders = [] } = {}) {
  return {
    tag: "continue",
    val: { headers, path, query, upstream, body: body === undefined ? undefined : bytes(body), responseHeaders },
  };
}

/** What `onResponse` returns to change nothing. */
export const noResponseEdits = () => ({ headers: [] });
