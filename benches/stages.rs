//! The per-request stages of the gateway that need no network, each timed by criterion and
//! with its heap allocations counted (a counting global allocator), so that removing an
//! allocation shows up as a number even where timings on a shared machine are noisy.
//!
//!     cargo bench --bench stages
//!
//! Allocation counts are printed first (`allocs/op`), then criterion's timings. The figures
//! land in docs/benchmarks.md with the machine they came from.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::observability::{Activity, RequestLog};
use portcullis::policy::{Caller, Factor};

/// Counts every allocation, then defers to the system allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Average allocations of one call of `f`, over many calls (after a warm-up call).
fn allocs_per_op(mut f: impl FnMut()) -> f64 {
    f();
    const N: u64 = 1000;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..N {
        f();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

fn config() -> portcullis::config::Config {
    let yaml = r#"
tls: { cert: s.crt, key: s.key, client_ca: ca.crt }
upstreams: { app: { url: "http://127.0.0.1:1" } }
principals:
  - { name: bench, cert: { cn: "bench-*", o: bench }, roles: [bench] }
routes:
  - { name: denied-admin, match: { prefix: /admin/ }, upstream: app, allow: { roles: [admin] } }
  - name: all
    match: { prefix: / }
    upstream: app
    allow: { roles: [bench] }
    rate_limit: { key: identity, rate: 1000000/s, burst: 1000000 }
logging: { format: json, access_log: true }
"#;
    portcullis::config::from_str(yaml, std::path::Path::new("gw.yaml")).unwrap()
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "localhost:8443"),
        ("user-agent", "oha/1.16.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, br"),
        ("x-request-id", "abc-123"),
        ("content-type", "application/json"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

/// Polls a future that completes without waiting (the in-process limiter).
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the local limiter never waits"),
    }
}

fn stages(c: &mut Criterion) {
    let config = config();
    let forward = config.forward.clone();
    let api_key = config.api_keys.header.clone();
    let limits = portcullis::ratelimit::RateLimits::new(&config).expect("limits");
    let spec = config.routes[1].rate_limit.unwrap();
    let caller = Caller {
        identity: Some("O=bench,CN=bench-client".into()),
        identity_factor: Some(Factor::Certificate),
        principals: vec!["bench".into()],
        roles: vec!["bench".into()],
        factors: vec![Factor::Certificate],
    };
    let ip: std::net::IpAddr = [127, 0, 0, 1].into();
    let metrics = Arc::new(portcullis::metrics::Metrics::new());
    let activity = Arc::new(Activity::default());
    let route: Arc<str> = Arc::from("all");
    // The access line goes through the same JSON formatter as `run`, into a sink.
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::sink)
            .finish(),
    );
    // One request's log record, as the gateway fills it in.
    let record = |access_log: bool, identity: Option<Arc<str>>, roles: Arc<str>| RequestLog {
        start: std::time::Instant::now(),
        request_id: "0123456789abcdef0123456789abcdef".to_owned(),
        client: "127.0.0.1:40000".parse().unwrap(),
        identity,
        roles,
        method: Method::GET,
        path: "/hello".to_owned(),
        route: Some(route.clone()),
        upstream: None,
        status: 200,
        upstream_status: Some(200),
        decision: "allow",
        upstream_aborted: false,
        access_log,
        metrics: metrics.clone(),
        activity: activity.clone(),
        finished: false,
    };
    let log_with = |access_log: bool| {
        activity.begin();
        record(access_log, None, Arc::from("")).finish(100);
    };
    let log = || log_with(true);
    let mut sample = record(
        false,
        Some(Arc::from("O=bench,CN=bench-client")),
        Arc::from("bench"),
    );
    // Rendered only, never finished: nothing to log when it is dropped.
    sample.finished = true;
    let mut line = String::with_capacity(512);
    let mut rendered = || {
        line.clear();
        sample.render_json(
            &mut line,
            "all",
            std::time::Duration::from_micros(1234),
            100,
        );
        black_box(&line);
    };
    let metrics_only = || log_with(false);

    let mut table: Vec<(&str, f64)> = Vec::new();
    table.push((
        "normalize_path",
        allocs_per_op(|| {
            black_box(portcullis::policy::normalize_path(black_box("/api/v1/items/42")).unwrap());
        }),
    ));
    // Only the sanitizer's own allocations: the maps are built before counting starts.
    let mut maps: Vec<HeaderMap> = (0..1001).map(|_| client_headers()).collect();
    let mut done: Vec<HeaderMap> = Vec::with_capacity(maps.len());
    table.push((
        "headers::sanitize",
        allocs_per_op(|| {
            if let Some(mut h) = maps.pop() {
                portcullis::proxy::headers::sanitize(&mut h, &forward, &api_key).unwrap();
                done.push(h);
            }
        }),
    ));
    drop(done);
    table.push((
        "parse_host",
        allocs_per_op(|| {
            black_box(portcullis::gateway::parse_host(black_box("localhost:8443")));
        }),
    ));
    let keys = portcullis::ratelimit::CallerKeys::new(&caller, ip);
    table.push((
        "rate limit: a connection's cached key + local check",
        allocs_per_op(|| {
            black_box(now(limits.check("all", &spec, &keys.get(spec.key))).unwrap());
        }),
    ));
    table.push((
        "rate limit: key made per request + local check",
        allocs_per_op(|| {
            let key = portcullis::ratelimit::key_for(spec.key, &caller, ip);
            black_box(now(limits.check("all", &spec, &key)).unwrap());
        }),
    ));
    table.push((
        "access line through tracing's JSON formatter + request metrics",
        allocs_per_op(log),
    ));
    table.push(("request metrics alone", allocs_per_op(metrics_only)));
    table.push((
        "access line, hand-rendered JSON (as run writes it)",
        allocs_per_op(&mut rendered),
    ));
    for (name, n) in &table {
        eprintln!("allocs/op {n:>6.2}  {name}");
    }

    c.bench_function("stage: normalize_path", |b| {
        b.iter(|| portcullis::policy::normalize_path(black_box("/api/v1/items/42")))
    });
    c.bench_function("stage: headers::sanitize (6 headers)", |b| {
        b.iter_batched(
            client_headers,
            |mut h| portcullis::proxy::headers::sanitize(&mut h, &forward, &api_key),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("stage: parse_host", |b| {
        b.iter(|| portcullis::gateway::parse_host(black_box("localhost:8443")))
    });
    c.bench_function("stage: rate limit, cached key + local check", |b| {
        b.iter(|| now(limits.check("all", &spec, &keys.get(spec.key))))
    });
    c.bench_function(
        "stage: rate limit, key made per request + local check",
        |b| {
            b.iter(|| {
                let key = portcullis::ratelimit::key_for(spec.key, &caller, ip);
                now(limits.check("all", &spec, &key))
            })
        },
    );
    c.bench_function(
        "stage: access line through tracing's JSON formatter + request metrics",
        |b| b.iter(log),
    );
    c.bench_function("stage: request metrics alone", |b| b.iter(metrics_only));
    c.bench_function("stage: access line, hand-rendered JSON", |b| {
        b.iter(&mut rendered)
    });
}

criterion_group!(benches, stages);
criterion_main!(benches);
