# The gateway configuration benches/run and benches/instructions measure: one
# route per scenario (see benches/run's header), all to the upstream `up`.
# Sourced; needs ROOT, PY (pylon's port), UP, D50, D100, D150 (upstream
# ports). Sets POLICIES=1 and FOUR=1 when those scenarios' plugins are built,
# and ORIGIN and KEY, the headers their requests carry.
# bench_config prints the TOML.

POLICIES=0
[ -f build/plugins/auth-key.wasm ] && [ -f build/plugins/rate-limit.wasm ] && [ -f build/plugins/transform.wasm ] && POLICIES=1
FOUR=0
[ "$POLICIES" = 1 ] && [ -f build/plugins/cors.wasm ] && FOUR=1
ORIGIN=https://app.example.test
KEY=bench-key-0123456789
KEY_SHA=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

bench_config() {
cat <<TOML
[runtime]
cache-dir = "${PYLON_CACHE_DIR:-$ROOT/.pylon-cache}"

[[listeners]]
address = "127.0.0.1:$PY"

[upstreams.up]
targets = ["127.0.0.1:$UP"]

[plugins.headers]
component = "$ROOT/build/plugins/headers.wasm"
isolation = "pooled"

[plugins.transform]
component = "$ROOT/build/plugins/transform.wasm"
isolation = "pooled"

[plugins.transform-fresh]
component = "$ROOT/build/plugins/transform.wasm"
isolation = "fresh"

[[routes]]
id = "none"
path = "/none/ping"
rewrite = "/ping"
upstream = "up"

[[routes]]
id = "headers"
path = "/headers/ping"
rewrite = "/ping"
upstream = "up"
[[routes.plugins]]
plugin = "headers"
config = { request = { set = { "x-bench" = "1" } }, response = { set = { "x-served-by" = "pylon" } } }

[[routes]]
id = "pooled"
path = "/pooled/ping"
rewrite = "/ping"
upstream = "up"
[[routes.plugins]]
plugin = "transform"
config = { request = { headers = { rename = { "user-agent" = "x-client-agent" } } } }

[[routes]]
id = "fresh"
path = "/fresh/ping"
rewrite = "/ping"
upstream = "up"
[[routes.plugins]]
plugin = "transform-fresh"
config = { request = { headers = { rename = { "user-agent" = "x-client-agent" } } } }
TOML
if [ -f build/plugins/aggregate.wasm ]; then
cat <<TOML

[upstreams.d50]
targets = ["127.0.0.1:$D50"]
[upstreams.d100]
targets = ["127.0.0.1:$D100"]
[upstreams.d150]
targets = ["127.0.0.1:$D150"]
[plugins.aggregate]
component = "$ROOT/build/plugins/aggregate.wasm"
capabilities = ["http"]
http-upstreams = ["d50", "d100", "d150"]
deadline = "3s"

[[routes]]
id = "aggregate"
path = "/aggregate"
[[routes.plugins]]
plugin = "aggregate"
config = { calls = [{ key = "a", upstream = "d50", path = "/x" }, { key = "b", upstream = "d100", path = "/y" }, { key = "c", upstream = "d150", path = "/z" }] }
TOML
fi
if [ "$POLICIES" = 1 ]; then
cat <<TOML

[plugins.auth-key]
component = "$ROOT/build/plugins/auth-key.wasm"
[plugins.rate-limit]
component = "$ROOT/build/plugins/rate-limit.wasm"
capabilities = ["kv", "clock"]

[[routes]]
id = "policies"
path = "/policies/ping"
rewrite = "/ping"
upstream = "up"
[[routes.plugins]]
plugin = "auth-key"
config = { keys = [{ consumer = "bench", sha256 = "$KEY_SHA" }] }
[[routes.plugins]]
plugin = "rate-limit"
config = { key = "consumer", limits = [{ requests = 1000000000, per = "1h" }] }
[[routes.plugins]]
plugin = "transform"
config = { request = { headers = { set = { "x-transformed" = "1" } } } }
[[routes.plugins]]
plugin = "headers"
config = { response = { set = { "x-served-by" = "pylon" } } }
TOML
fi
if [ "$FOUR" = 1 ]; then
cat <<TOML

[plugins.cors]
component = "$ROOT/build/plugins/cors.wasm"

[[routes]]
id = "four"
path = "/four/ping"
rewrite = "/ping"
upstream = "up"
[[routes.plugins]]
plugin = "auth-key"
config = { keys = [{ consumer = "bench", sha256 = "$KEY_SHA" }] }
[[routes.plugins]]
plugin = "rate-limit"
config = { key = "consumer", limits = [{ requests = 1000000000, per = "1h" }] }
[[routes.plugins]]
plugin = "transform"
config = { request = { headers = { rename = { "user-agent" = "x-client-agent" } } } }
[[routes.plugins]]
plugin = "cors"
config = { allow-origins = ["$ORIGIN"] }
TOML
fi
}
