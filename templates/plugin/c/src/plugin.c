// {{name}}: a pylon plugin.
//
// Answers 401 to a request without an `x-tenant` header, and tags every
// other request with `x-tier: <tier>` from the config before it goes on.
//
// Config (JSON, from the gateway's TOML): {"tier": "gold"}; `tier` is
// optional (default "free"), any other key rejects the config, so a typo is
// caught when the gateway loads, not on the first request.
//
// Two rules of the generated bindings (gen/):
// - A hook owns its arguments and must drop the borrowed handles it gets
//   (`request`, `response`) before it returns; a handle left over traps.
// - Everything a hook returns is freed by the bindings after the call, so
//   every string and list in it must be allocated with malloc (dup_* below),
//   never point at a static or a stack buffer.

#include <stdlib.h>
#include <string.h>

#include "plugin.h"

// One instance serves one request at a time; configure runs first.
static char *tier = NULL;

static void dup_string(plugin_string_t *out, const char *s) {
  plugin_string_dup(out, s);
}

static void dup_bytes(plugin_list_u8_t *out, const char *s) {
  size_t len = strlen(s);
  out->ptr = malloc(len ? len : 1);
  memcpy(out->ptr, s, len);
  out->len = len;
}

static bool error(plugin_string_t *err, const char *message) {
  dup_string(err, message);
  return false;
}

// --- a small strict parser for the one config shape this plugin takes: a
// JSON object whose values are strings without escapes. Anything else is
// refused with a message.

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

// Reads a "..." string at *p into a new NUL-terminated buffer.
static char *read_string(const char **p, const char *end) {
  if (*p >= end || **p != '"') return NULL;
  const char *start = ++*p;
  while (*p < end && **p != '"') {
    if (**p == '\\' || (unsigned char)**p < 0x20) return NULL;
    ++*p;
  }
  if (*p >= end) return NULL;
  size_t len = (size_t)(*p - start);
  ++*p;
  char *s = malloc(len + 1);
  memcpy(s, start, len);
  s[len] = '\0';
  return s;
}

// Room for a message naming a field (cut to 64 bytes). Built by hand:
// snprintf would pull in stdio, and with it WASI imports and 100 KB.
static char message[160];

static const char *unknown_field(const char *key) {
  static const char head[] = "invalid config: unknown field `";
  static const char tail[] = "`, expected `tier`";
  size_t n = strlen(key) > 64 ? 64 : strlen(key);
  memcpy(message, head, sizeof head - 1);
  memcpy(message + sizeof head - 1, key, n);
  memcpy(message + sizeof head - 1 + n, tail, sizeof tail);
  return message;
}

static const char *parse_config(const char *p, const char *end, char **tier_out) {
  p = skip_ws(p, end);
  if (p == end) return NULL;  // no config: defaults
  if (*p != '{') return "invalid config: expected a JSON object";
  p = skip_ws(p + 1, end);
  if (p < end && *p == '}') return skip_ws(p + 1, end) == end ? NULL : "invalid config: trailing data";
  for (;;) {
    char *key = read_string(&p, end);
    if (!key) return "invalid config: expected a field name";
    if (strcmp(key, "tier") != 0) {
      const char *problem = unknown_field(key);
      free(key);
      return problem;
    }
    free(key);
    p = skip_ws(p, end);
    if (p >= end || *p != ':') return "invalid config: expected `:`";
    p = skip_ws(p + 1, end);
    char *value = read_string(&p, end);
    if (!value) return "invalid config: `tier` must be a string (without escapes)";
    free(*tier_out);
    *tier_out = value;
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p = skip_ws(p + 1, end);
      continue;
    }
    if (p < end && *p == '}') return skip_ws(p + 1, end) == end ? NULL : "invalid config: trailing data";
    return "invalid config: expected `,` or `}`";
  }
}

bool exports_pylon_plugin_guest_configure(plugin_string_t *config,
                                          exports_pylon_plugin_guest_needs_t *ret,
                                          plugin_string_t *err) {
  const char *text = (const char *)config->ptr;
  char *parsed = NULL;
  const char *problem = parse_config(text, text + config->len, &parsed);
  plugin_string_free(config);
  if (problem) {
    free(parsed);
    return error(err, problem);
  }
  free(tier);
  tier = parsed ? parsed : strdup("free");
  memset(ret, 0, sizeof *ret);
  ret->request_phase = true;
  return true;
}

void exports_pylon_plugin_guest_on_request(exports_pylon_plugin_guest_borrow_request_t request,
                                           exports_pylon_plugin_guest_request_action_t *ret) {
  plugin_string_t name;
  plugin_string_set(&name, "x-tenant");  // an argument: not freed by the bindings
  plugin_list_u8_t tenant;
  bool has_tenant = pylon_plugin_types_method_request_header(request, &name, &tenant);
  if (has_tenant) plugin_list_u8_free(&tenant);
  pylon_plugin_types_request_drop_borrow(request);

  memset(ret, 0, sizeof *ret);
  if (!has_tenant) {
    ret->tag = PYLON_PLUGIN_TYPES_REQUEST_ACTION_RESPOND;
    pylon_plugin_types_response_t *resp = &ret->val.respond;
    resp->status = 401;
    resp->headers.len = 1;
    resp->headers.ptr = malloc(sizeof(pylon_plugin_types_header_t));
    dup_string(&resp->headers.ptr[0].name, "content-type");
    dup_bytes(&resp->headers.ptr[0].value, "text/plain");
    resp->body.is_some = true;
    dup_bytes(&resp->body.val, "missing x-tenant header\n");
    return;
  }
  ret->tag = PYLON_PLUGIN_TYPES_REQUEST_ACTION_CONTINUE;
  pylon_plugin_types_request_edits_t *edits = &ret->val.continue_;
  edits->headers.len = 1;
  edits->headers.ptr = malloc(sizeof(pylon_plugin_types_header_op_t));
  edits->headers.ptr[0].tag = PYLON_PLUGIN_TYPES_HEADER_OP_SET;
  dup_string(&edits->headers.ptr[0].val.set.name, "x-tier");
  dup_bytes(&edits->headers.ptr[0].val.set.value, tier ? tier : "free");
}

void exports_pylon_plugin_guest_on_response(exports_pylon_plugin_guest_borrow_request_t request,
                                            exports_pylon_plugin_guest_borrow_response_view_t response,
                                            exports_pylon_plugin_guest_response_edits_t *ret) {
  pylon_plugin_types_request_drop_borrow(request);
  pylon_plugin_types_response_view_drop_borrow(response);
  memset(ret, 0, sizeof *ret);
}
