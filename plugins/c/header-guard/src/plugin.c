// header-guard: a request header normaliser and blocklist for pylon.
//
// Per request, in one pass over the headers:
// - a header matching a `block` pattern answers 400 ("blocked header: <name>");
// - a header value longer than `max-header-bytes` answers 431;
// - headers matching a `drop` pattern (and, with `drop-hop-by-hop`, the
//   hop-by-hop names below) are removed;
// - the values of the `normalize` headers are trimmed (spaces, tabs) and
//   ASCII-lowercased.
//
// Config (JSON; every key optional, unknown keys rejected):
//   {"normalize": ["x-tenant"], "drop": ["x-internal-*"],
//    "block": ["x-debug-*", "x-original-url"], "drop-hop-by-hop": true,
//    "max-header-bytes": 8192}
// A pattern is a header name, or a name prefix ending in `*`; names are
// compared lowercase (the host hands names lowercase).
//
// Rules of the generated bindings (gen/): a hook drops the borrowed
// handles it gets before it returns, and everything it returns must be
// malloc'd (the bindings free it). No stdio: it would pull in WASI imports.

#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#define MAX_PATTERNS 256
#define MAX_PATTERN_LEN 256
#define DEFAULT_MAX_HEADER_BYTES 8192
#define LIMIT_MAX_HEADER_BYTES 65536

// Hop-by-hop headers a client has no business sending through a gateway.
// `connection` and `upgrade` are left to the gateway itself, which strips
// them (and the names `connection` lists) on the way upstream and needs
// `upgrade` for WebSockets.
static const char *const HOP_BY_HOP[] = {"keep-alive", "proxy-connection", "te", "trailer"};

typedef struct {
  char *text;    // lowercase, NUL-terminated, without the `*`
  size_t len;
  bool prefix;   // ended in `*`
} pattern_t;

typedef struct {
  pattern_t *items;
  size_t len;
} patterns_t;

typedef struct {
  patterns_t normalize, drop, block;
  bool drop_hop_by_hop;
  size_t max_header_bytes;
} config_t;

// One instance serves one request at a time; configure runs first.
static config_t cfg;

// ------------------------------------------------------------ messages

// Messages are built by hand (no snprintf, see above), cut to fit.
static char message[512];
static size_t message_len;

static void msg_reset(void) { message_len = 0; message[0] = '\0'; }

static void msg_add(const char *s, size_t n) {
  if (n > sizeof message - 1 - message_len) n = sizeof message - 1 - message_len;
  memcpy(message + message_len, s, n);
  message_len += n;
  message[message_len] = '\0';
}

static void msg_str(const char *s) { msg_add(s, strlen(s)); }

// At most 64 bytes of untrusted text, control characters replaced.
static void msg_quoted(const char *s, size_t n) {
  msg_add("`", 1);
  for (size_t i = 0; i < n && i < 64; i++) {
    char c = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    msg_add(&c, 1);
  }
  if (n > 64) msg_str("...");
  msg_add("`", 1);
}

static const char *problem(const char *key, const char *what) {
  msg_reset();
  msg_str("invalid header-guard config: ");
  msg_str(key);
  msg_str(": ");
  msg_str(what);
  return message;
}

// ------------------------------------------------------------ config JSON

typedef struct {
  const char *p, *end;
} cursor_t;

static void skip_ws(cursor_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static bool eat(cursor_t *c, char ch) {
  skip_ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return true;
  }
  return false;
}

// A JSON string into buf (at most cap-1 bytes, NUL-terminated). Escapes of
// ASCII characters are decoded; anything past `cap` is an error, as is a
// non-ASCII \u escape (header names are ASCII).
static bool read_string(cursor_t *c, char *buf, size_t cap, size_t *len_out) {
  skip_ws(c);
  if (c->p >= c->end || *c->p != '"') return false;
  c->p++;
  size_t len = 0;
  while (c->p < c->end && *c->p != '"') {
    char ch = *c->p++;
    if ((unsigned char)ch < 0x20) return false;
    if (ch == '\\') {
      if (c->p >= c->end) return false;
      char e = *c->p++;
      switch (e) {
        case '"': case '\\': case '/': ch = e; break;
        case 'n': ch = '\n'; break;
        case 't': ch = '\t'; break;
        case 'r': ch = '\r'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'u': {
          if (c->end - c->p < 4) return false;
          unsigned v = 0;
          for (int i = 0; i < 4; i++) {
            char h = *c->p++;
            v <<= 4;
            if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
            else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
            else return false;
          }
          if (v == 0 || v > 0x7f) return false;
          ch = (char)v;
          break;
        }
        default: return false;
      }
    }
    if (len + 1 >= cap) return false;
    buf[len++] = ch;
  }
  if (c->p >= c->end) return false;
  c->p++;
  buf[len] = '\0';
  *len_out = len;
  return true;
}

static bool is_tchar(char ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) return true;
  return ch != '\0' && strchr("!#$%&'+-.^_`|~", ch) != NULL;
}

static void free_patterns(patterns_t *ps) {
  for (size_t i = 0; i < ps->len; i++) free(ps->items[i].text);
  free(ps->items);
  ps->items = NULL;
  ps->len = 0;
}

// `["name", "prefix-*", ...]`; `allow_prefix` is false for `normalize`.
static const char *read_patterns(cursor_t *c, const char *key, bool allow_prefix, patterns_t *out) {
  if (!eat(c, '[')) return problem(key, "expected a list of header names");
  free_patterns(out);
  out->items = malloc(sizeof(pattern_t) * MAX_PATTERNS);
  if (eat(c, ']')) return NULL;
  char buf[MAX_PATTERN_LEN];
  for (;;) {
    size_t len;
    if (!read_string(c, buf, sizeof buf, &len))
      return problem(key, "expected header names as strings of at most 255 ASCII characters");
    if (out->len == MAX_PATTERNS) return problem(key, "at most 256 names");
    bool prefix = allow_prefix && len > 0 && buf[len - 1] == '*';
    if (prefix) buf[--len] = '\0';
    bool ok = len > 0;
    for (size_t i = 0; i < len; i++) {
      if (!is_tchar(buf[i]) || buf[i] == '*') ok = false;
      if (buf[i] >= 'A' && buf[i] <= 'Z') buf[i] = (char)(buf[i] - 'A' + 'a');
    }
    if (!ok) {
      msg_reset();
      msg_str("invalid header-guard config: ");
      msg_str(key);
      msg_str(": ");
      msg_quoted(buf, len);
      msg_str(allow_prefix ? " is not a header name, or a name prefix ending in `*`"
                           : " is not a header name");
      return message;
    }
    pattern_t *p = &out->items[out->len++];
    p->text = malloc(len + 1);
    memcpy(p->text, buf, len + 1);
    p->len = len;
    p->prefix = prefix;
    if (eat(c, ',')) continue;
    if (eat(c, ']')) return NULL;
    return problem(key, "expected `,` or `]`");
  }
}

static const char *read_bool(cursor_t *c, const char *key, bool *out) {
  skip_ws(c);
  if (c->end - c->p >= 4 && memcmp(c->p, "true", 4) == 0) {
    c->p += 4;
    *out = true;
    return NULL;
  }
  if (c->end - c->p >= 5 && memcmp(c->p, "false", 5) == 0) {
    c->p += 5;
    *out = false;
    return NULL;
  }
  return problem(key, "expected true or false");
}

static const char *read_size(cursor_t *c, const char *key, size_t *out) {
  skip_ws(c);
  size_t v = 0, digits = 0;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    if (v > LIMIT_MAX_HEADER_BYTES) return problem(key, "must be between 1 and 65536");
    v = v * 10 + (size_t)(*c->p++ - '0');
    digits++;
  }
  if (digits == 0 || (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')))
    return problem(key, "expected a whole number of bytes");
  if (v == 0 || v > LIMIT_MAX_HEADER_BYTES) return problem(key, "must be between 1 and 65536");
  *out = v;
  return NULL;
}

static const char *parse_config(const char *text, size_t len, config_t *out) {
  cursor_t c = {text, text + len};
  skip_ws(&c);
  if (c.p == c.end) return NULL;  // no config: defaults
  if (!eat(&c, '{')) return "invalid header-guard config: expected a JSON object";
  if (!eat(&c, '}')) {
    for (;;) {
      char key[64];
      size_t key_len;
      if (!read_string(&c, key, sizeof key, &key_len))
        return "invalid header-guard config: expected a field name";
      if (!eat(&c, ':')) return "invalid header-guard config: expected `:` after a field name";
      const char *err;
      if (strcmp(key, "normalize") == 0) err = read_patterns(&c, "normalize", false, &out->normalize);
      else if (strcmp(key, "drop") == 0) err = read_patterns(&c, "drop", true, &out->drop);
      else if (strcmp(key, "block") == 0) err = read_patterns(&c, "block", true, &out->block);
      else if (strcmp(key, "drop-hop-by-hop") == 0) err = read_bool(&c, "drop-hop-by-hop", &out->drop_hop_by_hop);
      else if (strcmp(key, "max-header-bytes") == 0) err = read_size(&c, "max-header-bytes", &out->max_header_bytes);
      else {
        msg_reset();
        msg_str("invalid header-guard config: unknown field ");
        msg_quoted(key, key_len);
        msg_str(", expected one of `normalize`, `drop`, `block`, `drop-hop-by-hop`, `max-header-bytes`");
        return message;
      }
      if (err) return err;
      if (eat(&c, ',')) continue;
      if (eat(&c, '}')) break;
      return "invalid header-guard config: expected `,` or `}`";
    }
  }
  skip_ws(&c);
  return c.p == c.end ? NULL : "invalid header-guard config: trailing data after the object";
}

static void free_config(config_t *c) {
  free_patterns(&c->normalize);
  free_patterns(&c->drop);
  free_patterns(&c->block);
}

// ------------------------------------------------------------ hooks

static bool matches(const patterns_t *ps, const char *name, size_t len) {
  for (size_t i = 0; i < ps->len; i++) {
    const pattern_t *p = &ps->items[i];
    if (p->prefix ? (len >= p->len && memcmp(name, p->text, p->len) == 0)
                  : (len == p->len && memcmp(name, p->text, len) == 0))
      return true;
  }
  return false;
}

static bool is_hop_by_hop(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof HOP_BY_HOP / sizeof HOP_BY_HOP[0]; i++)
    if (strlen(HOP_BY_HOP[i]) == len && memcmp(HOP_BY_HOP[i], name, len) == 0) return true;
  return false;
}

static void dup_string(plugin_string_t *out, const char *s, size_t len) {
  out->ptr = malloc(len ? len : 1);
  memcpy(out->ptr, s, len);
  out->len = len;
}

static void dup_bytes(plugin_list_u8_t *out, const void *s, size_t len) {
  out->ptr = malloc(len ? len : 1);
  memcpy(out->ptr, s, len);
  out->len = len;
}

bool exports_pylon_plugin_guest_configure(plugin_string_t *config,
                                          exports_pylon_plugin_guest_needs_t *ret,
                                          plugin_string_t *err) {
  config_t parsed = {.drop_hop_by_hop = true, .max_header_bytes = DEFAULT_MAX_HEADER_BYTES};
  const char *problem_text = parse_config((const char *)config->ptr, config->len, &parsed);
  plugin_string_free(config);
  if (problem_text) {
    free_config(&parsed);
    plugin_string_dup(err, problem_text);
    return false;
  }
  free_config(&cfg);
  cfg = parsed;
  memset(ret, 0, sizeof *ret);
  ret->request_phase = true;
  return true;
}

static void respond(exports_pylon_plugin_guest_request_action_t *ret, uint16_t status,
                    const char *what, const char *name, size_t name_len) {
  msg_reset();
  msg_str(what);
  msg_add(name, name_len > 64 ? 64 : name_len);
  msg_str("\n");
  ret->tag = PYLON_PLUGIN_TYPES_REQUEST_ACTION_RESPOND;
  pylon_plugin_types_response_t *resp = &ret->val.respond;
  resp->status = status;
  resp->headers.len = 1;
  resp->headers.ptr = malloc(sizeof(pylon_plugin_types_header_t));
  dup_string(&resp->headers.ptr[0].name, "content-type", 12);
  dup_bytes(&resp->headers.ptr[0].value, "text/plain", 10);
  resp->body.is_some = true;
  dup_bytes(&resp->body.val, message, message_len);
}

static bool is_space(uint8_t b) { return b == ' ' || b == '\t'; }

// Whether `v` changes when trimmed and lowercased.
static bool needs_normalizing(const plugin_list_u8_t *v) {
  if (v->len > 0 && (is_space(v->ptr[0]) || is_space(v->ptr[v->len - 1]))) return true;
  for (size_t i = 0; i < v->len; i++)
    if (v->ptr[i] >= 'A' && v->ptr[i] <= 'Z') return true;
  return false;
}

static void normalized(plugin_list_u8_t *out, const plugin_list_u8_t *v) {
  size_t start = 0, end = v->len;
  while (start < end && is_space(v->ptr[start])) start++;
  while (end > start && is_space(v->ptr[end - 1])) end--;
  dup_bytes(out, v->ptr + start, end - start);
  for (size_t i = 0; i < out->len; i++)
    if (out->ptr[i] >= 'A' && out->ptr[i] <= 'Z') out->ptr[i] = (uint8_t)(out->ptr[i] - 'A' + 'a');
}

void exports_pylon_plugin_guest_on_request(exports_pylon_plugin_guest_borrow_request_t request,
                                           exports_pylon_plugin_guest_request_action_t *ret) {
  memset(ret, 0, sizeof *ret);
  pylon_plugin_types_headers_t headers;
  pylon_plugin_types_method_request_headers(request, &headers);

  // Removals: at most one per header, plus two per normalised value.
  size_t cap = headers.len + 1;
  pylon_plugin_types_header_op_t *ops = malloc(sizeof *ops * cap);
  size_t n_ops = 0;
  const char *prev = NULL;
  size_t prev_len = 0;
  bool answered = false;
  for (size_t i = 0; i < headers.len && !answered; i++) {
    const char *name = (const char *)headers.ptr[i].name.ptr;
    size_t len = headers.ptr[i].name.len;
    if (matches(&cfg.block, name, len)) {
      respond(ret, 400, "blocked header: ", name, len);
      answered = true;
    } else if (headers.ptr[i].value.len > cfg.max_header_bytes) {
      respond(ret, 431, "header too large: ", name, len);
      answered = true;
    } else if (matches(&cfg.drop, name, len) || (cfg.drop_hop_by_hop && is_hop_by_hop(name, len))) {
      // One removal per name (a repeated name is one removal).
      bool same = prev && prev_len == len && memcmp(prev, name, len) == 0;
      if (!same) {
        ops[n_ops].tag = PYLON_PLUGIN_TYPES_HEADER_OP_REMOVE;
        dup_string(&ops[n_ops].val.remove, name, len);
        n_ops++;
        prev = name;
        prev_len = len;
      }
    }
  }

  if (!answered) {
    // Normalised headers: every value of the name, if one changes.
    for (size_t k = 0; k < cfg.normalize.len; k++) {
      const pattern_t *p = &cfg.normalize.items[k];
      if (matches(&cfg.drop, p->text, p->len)) continue;
      plugin_string_t name;
      plugin_string_set(&name, p->text);  // an argument: not freed by the bindings
      plugin_list_list_u8_t values;
      pylon_plugin_types_method_request_header_all(request, &name, &values);
      bool change = false;
      for (size_t i = 0; i < values.len; i++) change = change || needs_normalizing(&values.ptr[i]);
      if (change) {
        cap += 1 + values.len;
        ops = realloc(ops, sizeof *ops * cap);
        ops[n_ops].tag = PYLON_PLUGIN_TYPES_HEADER_OP_REMOVE;
        dup_string(&ops[n_ops].val.remove, p->text, p->len);
        n_ops++;
        for (size_t i = 0; i < values.len; i++) {
          ops[n_ops].tag = PYLON_PLUGIN_TYPES_HEADER_OP_APPEND;
          dup_string(&ops[n_ops].val.append.name, p->text, p->len);
          normalized(&ops[n_ops].val.append.value, &values.ptr[i]);
          n_ops++;
        }
      }
      plugin_list_list_u8_free(&values);
    }
  }
  pylon_plugin_types_headers_free(&headers);
  pylon_plugin_types_request_drop_borrow(request);

  if (answered) {
    for (size_t i = 0; i < n_ops; i++) pylon_plugin_types_header_op_free(&ops[i]);
    free(ops);
    return;
  }
  ret->tag = PYLON_PLUGIN_TYPES_REQUEST_ACTION_CONTINUE;
  if (n_ops == 0) {
    free(ops);
    return;
  }
  ret->val.continue_.headers.ptr = ops;
  ret->val.continue_.headers.len = n_ops;
}

void exports_pylon_plugin_guest_on_response(exports_pylon_plugin_guest_borrow_request_t request,
                                            exports_pylon_plugin_guest_borrow_response_view_t response,
                                            exports_pylon_plugin_guest_response_edits_t *ret) {
  pylon_plugin_types_request_drop_borrow(request);
  pylon_plugin_types_response_view_drop_borrow(response);
  memset(ret, 0, sizeof *ret);
}
