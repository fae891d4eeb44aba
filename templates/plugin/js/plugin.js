// {{name}}: a pylon plugin.
//
// Answers 401 to a request without an `x-tenant` header, and tags every
// other request with `x-tier: <tier>` from the config before it goes on.
//
// Config (JSON, from the gateway's TOML): {"tier": "gold"}; `tier` is
// optional (default "free"), any other key rejects the config, so a typo is
// caught when the gateway loads, not on the first request.
//
// WIT to JavaScript: records are objects with camelCase fields, variants are
// {tag, val}, `option` is a value or undefined, `list<u8>` is a Uint8Array,
// and throwing from `configure` returns its `err` (the message). pylon.js
// beside this file has thin shortcuts over them (parseConfig, parseDuration,
// header, respond, proceed, setHeader); this file spells them out instead.

const encoder = new TextEncoder();

// One instance serves one request at a time; configure runs first.
let tier = encoder.encode("free");

function parseConfig(text) {
  let config;
  try {
    config = text.trim() === "" ? {} : JSON.parse(text);
  } catch (e) {
    throw `invalid config: not JSON (${e.message})`;
  }
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    throw "invalid config: expected a JSON object";
  }
  for (const key of Object.keys(config)) {
    if (key !== "tier") throw `invalid config: unknown field \`${key}\`, expected \`tier\``;
  }
  const value = config.tier ?? "free";
  if (typeof value !== "string") throw "invalid config: `tier` must be a string";
  if (/[\x00-\x1f\x7f]/.test(value)) throw "invalid config: `tier` contains a control character";
  return encoder.encode(value);
}

export const guest = {
  configure(config) {
    tier = parseConfig(config);
    return {
      requestPhase: true,
      requestBody: false,
      responsePhase: false,
      responseBody: false,
      fixedRequestHeaders: [],
      fixedResponseHeaders: [],
    };
  },

  // `request` is a borrowed handle, valid only during the call: read the
  // parts you need (`request.header("x-a")`, `request.path()`, ...).
  onRequest(request) {
    if (request.header("x-tenant") === undefined) {
      return {
        tag: "respond",
        val: {
          status: 401,
          headers: [{ name: "content-type", value: encoder.encode("text/plain") }],
          body: encoder.encode("missing x-tenant header\n"),
        },
      };
    }
    return {
      tag: "continue",
      val: {
        headers: [{ tag: "set", val: { name: "x-tier", value: tier } }],
        responseHeaders: [],
      },
    };
  },

  onResponse(_request, _response) {
    return { headers: [] };
  },
};
