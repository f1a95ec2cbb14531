//! [`REFERENCE`]: the operator's documentation of `proxy.toml`.

/// Human reference of every key of `proxy.toml` (section, key, type, default,
/// meaning), printed by `--help` and copied into the README. A test checks that
/// every key the parser accepts appears here.
pub const REFERENCE: &str = r#"proxy.toml reference

Types: addr = "IP:port" ("127.0.0.1:9000", "[::1]:9000"). unix = "unix:" and
an absolute path of at most 107 bytes ("unix:/run/api/app.sock"), a Unix
stream socket file. target = an addr or
"host:port" ("db.internal:5432"): the agent thread resolves host names (at
start and every 30 s for [[services]], at each connect for [control]; a failed
lookup keeps the last good addresses and logs a warning). duration = a whole number and a unit: ms, s, m or h ("250ms", "10s",
"2m"). name = lowercase letters, digits, '-' and '.', starting and ending with a
letter or digit, at most 63 characters. Unknown keys are errors.
"reload" says whether a change is applied on SIGHUP or needs a restart.

[proxy]  (required)
  service        name             required      Service this proxy fronts.  restart
  cores          integer          1             Shards (executor threads), 1..=256;
                                                defaults to the length of cpus when
                                                cpus is given.  restart
  cpus           [integer]        unpinned      CPUs to pin the shards to, one per
                                                shard, distinct, within the process's
                                                allowed CPU set (taskset, cpuset).
                                                restart
  admin          addr             127.0.0.1:9901  Admin HTTP endpoint (/metrics,
                                                /config).  restart
  labels         {string=string}  {}            Labels attached to this proxy's
                                                stats; keys and values non-empty.
                                                reload
  drain_timeout  duration         10s           On shutdown or a handover to a
                                                new binary, how long the proxy waits
                                                for its connections to end: requests
                                                in flight, tunnels, TCP-service
                                                streams (0s..=24h).  reload
  access_log     path             none          File to append access log lines to,
                                                relative to the working directory
                                                (the same as [access_log] path; set
                                                one of the two).  restart
  upgrade_socket path             none          Unix socket on which the running
                                                proxy hands its listening sockets to
                                                a new binary started with
                                                --upgrade-from PATH (upgrades that
                                                drop no connection).  restart

[inbound]  (optional; at least one of [inbound] and [outbound])
  listen         addr             127.0.0.1:4143  Where peer proxies connect.
                                                Adding or removing the section, or
                                                changing listen: restart
  app            addr | unix      required      The local app that inbound requests
                                                (HTTP/1.1, h2c, a TCP service's
                                                stream) and [control.health]
                                                checks go to: TCP, or its Unix
                                                socket file. With [intercept], a
                                                unix app needs inbound_ports.
                                                reload
  protocol       "http" | "tcp"   "http"        What peers send: HTTP requests, or the
                                                byte stream of a TCP service (ALPN
                                                coremesh-tcp), relayed to app as is;
                                                the other kind is refused.  restart
  identity_header  string         none          Header in which the app receives the
                                                caller's SPIFFE ID (mutual TLS); the
                                                proxy removes it from incoming
                                                requests first. A header name
                                                (RFC 9110 token), case-insensitive;
                                                not host, content-length,
                                                transfer-encoding, expect or a
                                                hop-by-hop header.  reload
  app_protocol   "auto" | "http1" | "h2c"
                                 "auto"        What the app speaks: auto keeps the
                                                client's protocol (h2 as h2c with
                                                prior knowledge); http1 translates
                                                h2 requests to HTTP/1.1; h2c
                                                translates HTTP/1.1 requests to
                                                h2c (not upgrades).  reload

[outbound]  (optional; at least one of [inbound] and [outbound])
  listen         addr | unix      127.0.0.1:4140  Where the local app sends its
                                                HTTP requests (bound even when the
                                                file has only [[outbound.tcp]]).
                                                A unix socket file is accepted by
                                                the agent thread and handed to the
                                                least loaded shard; a stale file
                                                (nobody listening) is replaced, a
                                                live socket or a file that is no
                                                socket is an error. Not with
                                                [intercept] outbound. Adding or
                                                removing the section, or changing
                                                listen: restart
  listen_mode    string           as created    Permission bits of a unix listen
                                                socket file, octal ("0660"; at
                                                most "0777"), set right after
                                                binding.  restart
  listen_owner   string | integer this user     Owner of a unix listen socket
                                                file: a user name (looked up when
                                                the file is read) or a uid.
                                                restart
  listen_group   string | integer this group    Group of a unix listen socket
                                                file: a group name or a gid.
                                                restart
  passthrough    bool             false         Forward requests for hosts not
                                                listed in [[services]] to the
                                                host they name (and tunnel
                                                CONNECT), instead of answering
                                                404 "unknown service".  reload
  tcp            table list       none          TCP services' local listeners:
                                                [[outbound.tcp]].  restart

[[outbound.tcp]]  (zero or more; adding, removing or changing one: restart)
  An entry creates [outbound] if the file has no [outbound] header.
  service        name             required      A TCP service (protocol: tcp); unique.
  listen         addr             required      Local address the app connects to;
                                                each connection is carried over
                                                mutual TLS to one of the service's
                                                endpoints.

The listen addresses and admin must not collide (same port on the same or a
wildcard IP), except port 0, which lets the OS pick a free port.

[[services]]  (zero or more, in order; reload)
  name           name             required      Service name, matched against the
                                                request's authority; unique.
  endpoints      [target]         []            Instances of the service, distinct;
                                                with none, requests get 503. A
                                                name adds every address it
                                                resolves to.
  protocol       "auto" | "http1" | "h2c"
                                 "auto"        What the endpoints speak, as
                                                [inbound] app_protocol (endpoints
                                                outside the mesh; plaintext).

[timeouts]  (optional; each > 0 and <= 24h; reload)
  connect        duration         1s            Upstream TCP connect.
  head_read      duration         10s           From the first byte of a request until
                                                its head is complete (slowloris).
  keepalive_idle duration         60s           Idle client connection between
                                                requests.
  request        duration         15s           From the request head being sent
                                                upstream until the response head
                                                arrives.
  idle           duration         60s           No byte moving in either direction
                                                during a body transfer or tunnel.
  total          duration         300s          A whole HTTP exchange: request head
                                                received until the response is
                                                complete (504 if nothing was sent
                                                yet, else the connection closes).

[limits]  (optional; reload)
  max_head_bytes   integer        65536         Largest request or response head, in
                                                bytes, 1024..=1048576.
  max_request_line integer        8192          Longest request line, in bytes,
                                                256..=max_head_bytes.
  max_headers      integer        100           Most header fields in one head,
                                                1..=512.
  buffer_budget    integer        268435456     Bytes of buffers all in-flight
                                                requests may hold (256 MiB); new
                                                requests and HTTP/2 streams beyond
                                                it get 503 "buffer budget
                                                exhausted". 65536..=2^40.
  connection_buffer_budget integer 33554432     Bytes of buffers one connection may
                                                hold (an HTTP/1.1 request, an
                                                HTTP/2 connection's streams
                                                together); default 32 MiB, or
                                                buffer_budget if smaller.
                                                max_head_bytes+16384..=buffer_budget.

[limits.h2]  (optional; reload: new connections)
  Each key bounds one HTTP/2 attack; the header list (and with it
  CONTINUATION floods and HPACK bombs) is bounded by max_head_bytes.
  max_concurrent_streams      integer  256      Streams a client may have open
                                                on one connection; more get
                                                REFUSED_STREAM. 1..=65535.
  stream_window               integer  262144   Flow-control window per stream,
                                                in bytes: what a slow reader
                                                makes the proxy hold per
                                                stream. 16384..=16777216.
  connection_window           integer  1048576  Window per client connection.
                                                stream_window..=2147483647.
  upstream_connection_window  integer  16777216 Window per upstream connection
                                                (shared by many clients'
                                                streams). stream_window..=
                                                2147483647.
  max_pending_resets          integer  32       Streams a client may reset
                                                before the proxy accepted them
                                                (rapid reset); beyond it GOAWAY
                                                ENHANCE_YOUR_CALM. 1..=10000.
  max_local_resets            integer  256      Streams the proxy may reset for
                                                a client's protocol errors
                                                before GOAWAY ENHANCE_YOUR_CALM.
                                                1..=100000.
  max_settings_per_second     integer  100      SETTINGS frames (not ACKs) a
                                                peer may send in a second;
                                                beyond it the connection is
                                                closed. 1..=100000.
  max_pings_per_second        integer  100      PING frames (not ACKs) a peer
                                                may send in a second. 1..=100000.
  max_empty_frames_per_second integer  100      Empty DATA frames without
                                                END_STREAM a peer may send in a
                                                second. 1..=100000.

[upstream]  (optional; reload)
  pool_idle_timeout     duration  30s           How long an idle pooled upstream
                                                connection is kept (> 0, <= 24h).
  max_idle_per_endpoint integer   64            Most idle pooled connections per
                                                endpoint on each shard; 0 disables
                                                pooling.
  multiplex             bool      false         HTTP/1.1 requests to peer proxies
                                                ride a few shared h2 connections
                                                over mutual TLS (the peer gives its
                                                app HTTP/1.1 again); upgrades keep
                                                a connection of their own; a peer
                                                that does not offer h2 gets
                                                HTTP/1.1. false: one HTTP/1.1
                                                connection per request in flight
                                                (less CPU per request below
                                                saturation; see the README).

[tls]  (optional; not with [control], which issues the certificate)
  Paths are relative to the directory of proxy.toml. The files are read and
  checked at start and again on every reload (a bad file is logged and the
  previous certificate stays in force).
  cert           path             required      PEM chain, leaf first, then
                                                intermediates; the leaf's URI SAN
                                                is spiffe://<trust-domain>/service/
                                                <[proxy] service>.  reload
  key            path             required      PEM private key of the leaf.  reload
  ca             path             required      PEM roots peers must chain to, one
                                                or more.  reload
  With [tls], the inbound listener accepts mutual TLS 1.3 only, and the
  [[services]] are called over mutual TLS (their peer must present the
  service's SPIFFE ID). Adding or removing the section: restart.

[access_log]  (optional; needs a file: path here or [proxy] access_log)
  path           path             none          File to append access log lines to,
                                                relative to the working directory.
                                                SIGUSR1 reopens it (logrotate).
                                                restart
  enabled        bool             true          false: no line is written (the
                                                file stays open).  reload
  format         "json" | "text"  "json"        One JSON object per line, or text
                                                close to the combined log format
                                                (the caller's SPIFFE ID as the
                                                user) followed by key=value pairs.
                                                reload
  sample         number           1.0           Share of requests logged,
                                                0.0..=1.0, drawn per request; 5xx
                                                answers and requests that got no
                                                answer are always logged.  reload

[[resilience]]  (zero or more; reload)
  The control plane's Resilience block, for static use: the same keys
  (service, loadBalancer, circuitBreaker, outlierDetection, healthCheck,
  retryBudget, rateLimit, faults, mirror), written in TOML, e.g.
  [[resilience]]
  service = "api"
  loadBalancer = "round-robin"
  circuitBreaker = { maxRequests = 100 }
  rateLimit = { requestsPerSecond = 100, burst = 20 }
  service is [proxy] service (its inbound rateLimit) or one of the
  [[services]]; mirror.service is one of the [[services]].

[intercept]  (optional; every key needs a restart)
  Transparent interception: `coremesh-proxy --config FILE --intercept apply`
  installs an nftables table (inet coremesh) that sends the app's outgoing
  TCP connections to [outbound] listen and other hosts' connections to the
  inbound_ports to [inbound] listen; `--intercept remove` deletes it,
  `--intercept print` shows it. Redirect targets need fixed ports. An
  original destination belongs to a service from control whose `port` it
  is, at one of its endpoints' host addresses or virtual IPs (static
  [[services]] are not matched); others pass through (MeshConfig
  outboundPolicy: deny refuses them).
  mark           integer          17229 (0x434d)  SO_MARK on every upstream
                                                socket the proxy opens; marked
                                                traffic is never redirected.
                                                1..=4294967295.
  outbound       bool             [outbound] present  Redirect the app's
                                                outgoing TCP (IPv4 when [outbound]
                                                listen is IPv4, else IPv6; not to
                                                local addresses).
  inbound_ports  [integer]        [inbound] app's port  Ports whose connections
                                                from other hosts are redirected to
                                                [inbound] listen (which must
                                                accept on the host's address).
  exclude_outbound_ports [integer] []           Destination ports the app
                                                reaches directly.
  exclude_uids   [integer]        []            Users whose outgoing connections
                                                are never redirected.

[control]  (optional; every key needs a restart)
  Without this section the proxy runs from [[services]] alone. With it, the
  proxy joins control once with token_file, then connects with its own
  certificate, subscribes to its routes and endpoints, registers [inbound],
  reports its app's health, and keeps serving the last good snapshot (kept in
  state_dir) while control is unreachable.
  address        target or        required      Control's QUIC address(es); the
                 [target]                       first reachable one is used.
  token_file     path             none          Join token file; read (and trimmed)
                                                only while state_dir holds no
                                                certificate.
  state_dir      path             required      Certificate, key, control's CA and
                                                the last good snapshot (directory
                                                created 0700, files 0600).
  node           string           host name     Node name reported to control.
  advertise      addr             bound [inbound] listen  Address registered as this
                                                proxy's endpoint (a wildcard listen
                                                IP is replaced by the local IP of
                                                the connection to control);
                                                needs [inbound].
  calls          [name]           all           Services the local app calls;
                                                control sends only their routes
                                                and endpoints.
  allow_store_change bool         false         Accept snapshots from a control
                                                store other than the one whose
                                                policy runs (a store migration);
                                                otherwise they are refused
                                                (NACK).
  health         table            tcp check     The app check: [control.health].

[control.health]  (optional; needs [inbound]; restart)
  kind           "tcp" | "http" | "grpc"
                                 "tcp"         tcp: connect to [inbound] app;
                                                http: GET path on it, 2xx or 3xx
                                                is healthy; grpc: grpc.health.v1
                                                Check over h2c answers SERVING.
  path           string           "/healthz"    Path of the http check (kind =
                                                "http" only).
  service        string           ""            The gRPC service the grpc check
                                                asks about (kind = "grpc" only);
                                                empty: the server as a whole.
  interval       duration         5s            Time between checks (> 0).
  timeout        duration         1s            Time one check may take (> 0).
"#;
