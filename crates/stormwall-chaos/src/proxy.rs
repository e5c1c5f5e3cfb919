//! Proxies: a listener per proxy, its connections, its toxics; and the collection of them.

use crate::link::{self, Installed, ToxicList};
use crate::toxic::{as_object, Toxic};
use crate::ChaosError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a proxy is asked to be: the body of `POST /proxies` and one entry of a populate
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// Unique name.
    pub name: String,
    /// Where it listens. Default: `127.0.0.1:0` (loopback, a free port).
    pub listen: String,
    /// Where it connects: `host:port`.
    pub upstream: String,
    /// Whether it listens now. Default: true.
    pub enabled: bool,
}

impl ProxySpec {
    /// A spec with the defaults: loopback on a free port, enabled.
    pub fn new(name: impl Into<String>, upstream: impl Into<String>) -> Self {
        ProxySpec {
            name: name.into(),
            listen: "127.0.0.1:0".into(),
            upstream: upstream.into(),
            enabled: true,
        }
    }

    /// Parses the API's JSON; errors name the field.
    pub fn from_json(body: &Value) -> Result<Self, ChaosError> {
        let object = as_object(body)?;
        let name = string_field(object, "name")?.unwrap_or_default();
        if name.is_empty() {
            return Err(ChaosError::MissingField("name"));
        }
        let upstream = string_field(object, "upstream")?.unwrap_or_default();
        if upstream.is_empty() {
            return Err(ChaosError::MissingField("upstream"));
        }
        let listen = string_field(object, "listen")?
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let enabled = bool_field(object, "enabled")?.unwrap_or(true);
        Ok(ProxySpec {
            name,
            listen,
            upstream,
            enabled,
        })
    }
}

fn string_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, ChaosError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ChaosError::BadRequest(format!(
            "{field} must be a string (got {other})"
        ))),
    }
}

fn bool_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<bool>, ChaosError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ChaosError::BadRequest(format!(
            "{field} must be true or false (got {other})"
        ))),
    }
}

/// A proxy as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyInfo {
    /// Its name.
    pub name: String,
    /// The address it listens on (the real port once it has listened on port 0).
    pub listen: String,
    /// Where it connects.
    pub upstream: String,
    /// Whether it listens.
    pub enabled: bool,
    /// Its toxics, in the order they apply.
    pub toxics: Vec<Toxic>,
}

impl ProxyInfo {
    /// The API's JSON for this proxy.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": self.toxics.iter().map(Toxic::to_json).collect::<Vec<_>>(),
        })
    }
}

struct Proxy {
    name: String,
    state: Mutex<State>,
    /// Every connection reads the list from here at each chunk.
    toxics: watch::Sender<ToxicList>,
}

struct State {
    listen: String,
    upstream: String,
    /// `Some` while listening; taken by `stop`.
    running: Option<Running>,
}

/// A listening proxy: its socket, and the tasks serving it.
struct Running {
    /// The listening socket, shared with the accept task, which only borrows it while it
    /// polls: `stop` takes it out and closes it before it returns.
    listener: Arc<Mutex<Option<TcpListener>>>,
    /// Cancelled by `stop`: ends the accept task and every connection.
    cancel: CancellationToken,
    /// The accept task and every connection task, so `stop`'s caller can wait for them.
    tasks: TaskTracker,
}

/// What `stop` hands back: wait on it to know every connection of the proxy is closed.
#[must_use = "await `closed` so the caller answers only once the connections are gone"]
struct Stopped(TaskTracker);

impl Stopped {
    async fn closed(self) {
        self.0.close();
        self.0.wait().await;
    }
}

async fn closed(stopped: Option<Stopped>) {
    if let Some(stopped) = stopped {
        stopped.closed().await;
    }
}

impl Proxy {
    fn new(spec: &ProxySpec) -> Self {
        Proxy {
            name: spec.name.clone(),
            state: Mutex::new(State {
                listen: spec.listen.clone(),
                upstream: spec.upstream.clone(),
                running: None,
            }),
            toxics: watch::Sender::new(Arc::new(Vec::new())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change to `State` is a plain assignment: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self) -> ProxyInfo {
        let state = self.state();
        ProxyInfo {
            name: self.name.clone(),
            listen: state.listen.clone(),
            upstream: state.upstream.clone(),
            enabled: state.running.is_some(),
            toxics: self
                .toxics
                .borrow()
                .iter()
                .map(|t| t.toxic.clone())
                .collect(),
        }
    }

    /// Starts listening (a no-op when already listening). The socket is bound before this
    /// returns, so a connect right after is accepted.
    fn start(&self, state: &mut State) -> Result<(), ChaosError> {
        if state.running.is_some() {
            return Ok(());
        }
        let listener = bind(&state.listen)?;
        if let Ok(addr) = listener.local_addr() {
            // Port 0 picked a free port: report (and reuse on restart) the real one.
            state.listen = addr.to_string();
        }
        let running = Running {
            listener: Arc::new(Mutex::new(Some(listener))),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        running.tasks.spawn(accept(
            Arc::clone(&running.listener),
            state.upstream.clone(),
            self.toxics.subscribe(),
            running.cancel.clone(),
            running.tasks.clone(),
        ));
        state.running = Some(running);
        Ok(())
    }

    /// After a move failed with `failed`: listens again where `state` says if it was
    /// listening before; the error to report (both failures if that failed too).
    fn go_back(&self, failed: ChaosError, state: &mut State, was_running: bool) -> ChaosError {
        match was_running.then(|| self.start(state)) {
            Some(Err(rollback)) => ChaosError::rollback_failed(failed, rollback),
            _ => failed,
        }
    }

    /// Stops listening: the socket is closed when this returns (a connect from then on is
    /// refused, and the address can be bound again at once); every connection is told to
    /// close, and the returned handle waits until they have.
    fn stop(&self, state: &mut State) -> Option<Stopped> {
        let running = state.running.take()?;
        drop(lock(&running.listener).take());
        running.cancel.cancel();
        Some(Stopped(running.tasks))
    }
}

/// Makes the proxy of `spec`, starts it if enabled, and files it under its name
/// (replacing any there); nothing is filed if it cannot listen.
fn insert(
    proxies: &mut BTreeMap<String, Arc<Proxy>>,
    spec: ProxySpec,
) -> Result<Arc<Proxy>, ChaosError> {
    let proxy = Arc::new(Proxy::new(&spec));
    if spec.enabled {
        proxy.start(&mut proxy.state())?;
    }
    proxies.insert(spec.name, Arc::clone(&proxy));
    Ok(proxy)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only `Option::take` and polls run under these locks: a poisoned one is consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind(address: &str) -> Result<TcpListener, ChaosError> {
    let listen_error = |source| ChaosError::Listen {
        address: address.to_owned(),
        source,
    };
    let listener = std::net::TcpListener::bind(address).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    TcpListener::from_std(listener).map_err(listen_error)
}

async fn accept(
    listener: Arc<Mutex<Option<TcpListener>>>,
    upstream: String,
    toxics: watch::Receiver<ToxicList>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    // Borrows the socket only inside each poll, so `stop` can close it at any moment.
    let next = || {
        std::future::poll_fn(|cx| match lock(&listener).as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => std::task::Poll::Ready(None),
        })
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = next() => match accepted {
                None => return,
                Some(Ok((client, _))) => {
                    tasks.spawn(link::run(client, upstream.clone(), toxics.clone(), cancel.child_token()));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "chaos: accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                    }
                }
            },
        }
    }
}

/// The chaos proxy: a set of named TCP proxies with toxics, and the Toxiproxy-compatible
/// HTTP API over them ([`router`](Self::router), [`serve`](Self::serve)).
///
/// Clones share the same proxies.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use stormwall_chaos::{ChaosServer, ProxySpec, Toxic, ToxicKind};
/// let chaos = ChaosServer::new();
/// let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let proxy = chaos
///     .create(ProxySpec::new("db", upstream.local_addr().unwrap().to_string()))
///     .await
///     .unwrap();
/// chaos.add_toxic("db", Toxic::new(ToxicKind::Latency { latency: 100, jitter: 0 })).unwrap();
/// assert_eq!(chaos.toxics("db").unwrap().len(), 1);
/// assert!(proxy.listen.starts_with("127.0.0.1:"));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ChaosServer {
    proxies: Arc<Mutex<BTreeMap<String, Arc<Proxy>>>>,
    /// Numbers toxic versions (see `link::Installed`).
    next_toxic_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for ChaosServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosServer")
            .field("proxies", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ChaosServer {
    /// A server with no proxies.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Proxy>>> {
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Result<Arc<Proxy>, ChaosError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or(ChaosError::ProxyNotFound)
    }

    /// Creates a proxy and (if enabled) starts listening. Fails if the name exists, the
    /// upstream does not resolve or the address cannot be listened on.
    pub async fn create(&self, spec: ProxySpec) -> Result<ProxyInfo, ChaosError> {
        resolve("upstream", &spec.upstream).await?;
        let mut proxies = self.lock();
        if proxies.contains_key(&spec.name) {
            return Err(ChaosError::ProxyExists);
        }
        let proxy = insert(&mut proxies, spec)?;
        drop(proxies);
        Ok(proxy.info())
    }

    /// Every proxy, by name.
    pub fn proxies(&self) -> Vec<ProxyInfo> {
        self.lock().values().map(|p| p.info()).collect()
    }

    /// One proxy.
    pub fn proxy(&self, name: &str) -> Result<ProxyInfo, ChaosError> {
        Ok(self.get(name)?.info())
    }

    /// Changes `listen`, `upstream` and `enabled` where `body` has them, as Toxiproxy does:
    /// a proxy whose address changed stops (closing its listener and connections) and, if
    /// it stays enabled, listens again on the new address.
    ///
    /// Synchronous: when this returns, a stopped listener is closed and its connections
    /// are gone. If the new address cannot be listened on, the proxy goes back to its old
    /// addresses and state and the error says so; if even that fails, the error names both
    /// failures and the proxy is left disabled.
    pub async fn update(&self, name: &str, body: &Value) -> Result<ProxyInfo, ChaosError> {
        let proxy = self.get(name)?;
        let object = as_object(body)?;
        let listen = string_field(object, "listen")?.filter(|l| !l.is_empty());
        let upstream = string_field(object, "upstream")?.filter(|u| !u.is_empty());
        let enabled = bool_field(object, "enabled")?;
        if let Some(upstream) = &upstream {
            resolve("upstream", upstream).await?;
        }
        let (stopped, result) = {
            let mut state = proxy.state();
            let was_running = state.running.is_some();
            let moved = listen.as_ref().is_some_and(|l| *l != state.listen)
                || upstream.as_ref().is_some_and(|u| *u != state.upstream);
            let run = enabled.unwrap_or(was_running);
            let stopped = if moved || !run {
                proxy.stop(&mut state)
            } else {
                None
            };
            let previous = (state.listen.clone(), state.upstream.clone());
            if let Some(listen) = listen {
                state.listen = listen;
            }
            if let Some(upstream) = upstream {
                state.upstream = upstream;
            }
            let mut result = Ok(());
            if run {
                if let Err(e) = proxy.start(&mut state) {
                    // Back where it was: a failed move loses nothing, or says why it did.
                    (state.listen, state.upstream) = previous;
                    result = Err(proxy.go_back(e, &mut state, was_running));
                }
            }
            (stopped, result)
        };
        closed(stopped).await;
        result.map(|()| proxy.info())
    }

    /// Stops a proxy and forgets it. When this returns its listener is closed and its
    /// connections are gone.
    pub async fn delete(&self, name: &str) -> Result<(), ChaosError> {
        let proxy = self.lock().remove(name).ok_or(ChaosError::ProxyNotFound)?;
        let stopped = proxy.stop(&mut proxy.state());
        closed(stopped).await;
        Ok(())
    }

    /// Creates or replaces each proxy of `specs`, as Toxiproxy's populate does: a proxy
    /// whose listen or upstream differ is replaced by a new one (without toxics), the old
    /// one stopped first so the new one can take its port; an identical one is left as it
    /// is, enabled as asked. If a replacement cannot listen, the old proxy is restarted
    /// and kept. Stops at the first error, returning it with the proxies done so far.
    pub async fn populate(
        &self,
        specs: Vec<ProxySpec>,
    ) -> Result<Vec<ProxyInfo>, (ChaosError, Vec<ProxyInfo>)> {
        let mut done = Vec::with_capacity(specs.len());
        for spec in specs {
            let result = match self.proxy(&spec.name) {
                Ok(existing)
                    if existing.upstream == spec.upstream
                        && (existing.listen == spec.listen || spec.listen.ends_with(":0")) =>
                {
                    self.update(&spec.name, &json!({ "enabled": spec.enabled }))
                        .await
                }
                Ok(_) => self.replace(spec).await,
                Err(_) => self.create(spec).await,
            };
            match result {
                Ok(info) => done.push(info),
                Err(e) => return Err((e, done)),
            }
        }
        Ok(done)
    }

    /// Replaces the proxy named `spec.name` by a new one made from `spec`.
    async fn replace(&self, spec: ProxySpec) -> Result<ProxyInfo, ChaosError> {
        resolve("upstream", &spec.upstream).await?;
        let (stopped, result) = {
            let mut proxies = self.lock();
            let old = match proxies.get(&spec.name) {
                Some(old) => Arc::clone(old),
                // Deleted meanwhile: nothing to replace.
                None => return insert(&mut proxies, spec).map(|proxy| proxy.info()),
            };
            let mut old_state = old.state();
            let was_running = old_state.running.is_some();
            let stopped = old.stop(&mut old_state);
            let result =
                insert(&mut proxies, spec).map_err(|e| old.go_back(e, &mut old_state, was_running));
            (stopped, result)
        };
        closed(stopped).await;
        result.map(|proxy| proxy.info())
    }

    /// Enables every proxy and removes every toxic.
    pub fn reset(&self) -> Result<(), ChaosError> {
        let proxies: Vec<_> = self.lock().values().cloned().collect();
        for proxy in proxies {
            proxy.toxics.send_replace(Arc::new(Vec::new()));
            proxy.start(&mut proxy.state())?;
        }
        Ok(())
    }

    /// The toxics of a proxy, in order.
    pub fn toxics(&self, proxy: &str) -> Result<Vec<Toxic>, ChaosError> {
        Ok(self.get(proxy)?.info().toxics)
    }

    /// One toxic of a proxy.
    pub fn toxic(&self, proxy: &str, name: &str) -> Result<Toxic, ChaosError> {
        self.toxics(proxy)?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or(ChaosError::ToxicNotFound)
    }

    /// Adds a toxic after the proxy's others; live connections apply it from their next
    /// chunk.
    pub fn add_toxic(&self, proxy: &str, toxic: Toxic) -> Result<Toxic, ChaosError> {
        let proxy = self.get(proxy)?;
        let id = self.next_toxic_id.fetch_add(1, Ordering::Relaxed);
        let mut result = Ok(());
        proxy.toxics.send_if_modified(|list| {
            if list.iter().any(|t| t.toxic.name == toxic.name) {
                result = Err(ChaosError::ToxicExists);
                return false;
            }
            let mut next = Vec::clone(list);
            next.push(Arc::new(Installed {
                slot: id,
                version: id,
                toxic: toxic.clone(),
            }));
            *list = Arc::new(next);
            true
        });
        result.map(|()| toxic)
    }

    /// Changes a toxic where `body` has fields (attributes one by one).
    pub fn update_toxic(&self, proxy: &str, name: &str, body: &Value) -> Result<Toxic, ChaosError> {
        let proxy = self.get(proxy)?;
        let id = self.next_toxic_id.fetch_add(1, Ordering::Relaxed);
        let mut result = Err(ChaosError::ToxicNotFound);
        proxy.toxics.send_if_modified(|list| {
            let Some(index) = list.iter().position(|t| t.toxic.name == name) else {
                return false;
            };
            match list[index].toxic.patched(body) {
                Ok(toxic) => {
                    let mut next = Vec::clone(list);
                    next[index] = Arc::new(Installed {
                        slot: list[index].slot,
                        version: id,
                        toxic: toxic.clone(),
                    });
                    *list = Arc::new(next);
                    result = Ok(toxic);
                    true
                }
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        });
        result
    }

    /// Removes a toxic; live connections stop applying it from their next chunk.
    pub fn remove_toxic(&self, proxy: &str, name: &str) -> Result<(), ChaosError> {
        let proxy = self.get(proxy)?;
        let mut found = false;
        proxy.toxics.send_if_modified(|list| {
            found = list.iter().any(|t| t.toxic.name == name);
            if found {
                *list = Arc::new(
                    list.iter()
                        .filter(|t| t.toxic.name != name)
                        .cloned()
                        .collect(),
                );
            }
            found
        });
        if found {
            Ok(())
        } else {
            Err(ChaosError::ToxicNotFound)
        }
    }

    /// Reads a populate file (Toxiproxy's format: a JSON array of proxies) and applies it.
    pub async fn populate_file(
        &self,
        path: &std::path::Path,
    ) -> Result<Vec<ProxyInfo>, ChaosError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChaosError::Config {
            path: path.display().to_string(),
            source,
        })?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| ChaosError::BadRequest(format!("{}: {e}", path.display())))?;
        self.populate(populate_specs(&body)?)
            .await
            .map_err(|(e, _)| e)
    }
}

/// The proxies of a populate body: a JSON array, or `{"proxies": [...]}`.
pub(crate) fn populate_specs(body: &Value) -> Result<Vec<ProxySpec>, ChaosError> {
    let list = match body {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("proxies") {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(ChaosError::BadRequest(
                    "expected an array of proxies, or {\"proxies\": [...]}".into(),
                ))
            }
        },
        other => {
            return Err(ChaosError::BadRequest(format!(
                "expected an array of proxies (got {other})"
            )))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            ProxySpec::from_json(p)
                .map_err(|e| ChaosError::BadRequest(format!("proxies[{i}]: {e}")))
        })
        .collect()
}

async fn resolve(field: &'static str, address: &str) -> Result<(), ChaosError> {
    let unresolvable = |reason: String| ChaosError::Unresolvable {
        field,
        address: address.to_owned(),
        reason,
    };
    match tokio::net::lookup_host(address).await {
        Ok(mut addrs) => match addrs.next() {
            Some(_) => Ok(()),
            None => Err(unresolvable("no addresses".into())),
        },
        Err(e) => Err(unresolvable(e.to_string())),
    }
}
