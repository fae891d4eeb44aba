// {{name}}: a pylon plugin.
//
// Answers 401 to a request without an `x-tenant` header, and tags every
// other request with `x-tier: <tier>` from the config before it goes on.
//
// Config (JSON, from the gateway's TOML): {"tier": "gold"}; `tier` is
// optional (default "free"), any other key rejects the config, so a typo is
// caught when the gateway loads, not on the first request.
//
// pylon.js beside this file has thin shortcuts over the bindings
// (parseConfig, parseDuration, header, respond, proceed, setHeader, ...).
// The bindings themselves: records are objects with camelCase fields,
// variants are {tag, val}, `option` is a value or undefined, `list<u8>` is a
// Uint8Array, and throwing from `configure` returns its `err` (the message);
// use them directly for anything the helpers do not cover.

import { needs, noResponseEdits, parseConfig, proceed, respond, setHeader } from "./pylon.js";

// The config's keys: [type, default].
const FIELDS = { tier: ["string", "free"] };

// One instance serves one request at a time; configure runs first.
let tier = "free";

export const guest = {
  configure(config) {
    const value = parseConfig(config, FIELDS, "{{name}}").tier;
    if (/[\x00-\x1f\x7f]/.test(value)) throw "invalid {{name}} config: tier: contains a control character";
    tier = value;
    // The request phase only: no body, no response phase.
    return needs();
  },

  // `request` is a borrowed handle, valid only during the call: read the
  // parts you need (`request.header("x-a")`, `request.path()`, ...).
  onRequest(request) {
    if (request.header("x-tenant") === undefined) {
      return respond(401, "missing x-tenant header\n", { "content-type": "text/plain" });
    }
    return proceed({ headers: [setHeader("x-tier", tier)] });
  },

  onResponse(_request, _response) {
    return noResponseEdits();
  },
};
